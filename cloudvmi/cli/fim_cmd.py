"""`cloudvmi fim baseline|check|restore`: file integrity from outside, with restore."""

import sys
from pathlib import Path

import click

from cloudvmi.cli.complete import VM_NAME
from cloudvmi.cli.output import emit_json, say, table, wide_option
from cloudvmi.cli.progress import Progress
from cloudvmi.cli.views import run_or_exit
from cloudvmi.write.operations import CHANNEL_MODES

_channel = click.option("--channel", type=click.Choice(CHANNEL_MODES), default="stop",
                        show_default=True, help="How tar's guest calls travel (see exec).")


@click.group()
def fim() -> None:
    """Record files of a VM, report what changed, and put them back."""


@fim.command()
@click.argument("vm", **VM_NAME)
@click.argument("paths", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The baseline (JSON); its content store goes beside it in OUTPUT.d/.")
@_channel
def baseline(vm: str, paths: tuple[str, ...], output: Path, channel: str) -> None:
    """Record hash, size, mode, owner, type and link target of every file under PATHS."""
    from cloudvmi.apps import fim as app
    from cloudvmi.apps.targets import resolve

    def go():
        (target,) = resolve([vm])
        with target.open() as v, Progress(f"baseline of {vm}") as progress:
            return app.baseline(v, vm, list(paths), output, channel, progress.report)

    b = run_or_exit(go)
    say(f"{len(b.files)} files of {vm} recorded in {output}")


def _report(changes, as_json: bool, vm: str, events) -> None:
    from cloudvmi.apps.events import Event

    for c in changes:
        events.emit(Event("fim", vm, "finding", c.kind, {"path": c.path, "fields": c.fields}))
    if as_json:
        emit_json({"vm": vm, "changes": changes})
    elif events.out is not sys.stdout:
        table(f"Changes in {vm}", ["KIND", "PATH", "WHAT"],
              ((c.kind, c.path, ", ".join(c.fields)) for c in changes))


@fim.command()
@click.argument("baseline_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("vms", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Every VM of every inventory node.")
@click.option("--events", "events_to", metavar="FILE|-", help="One JSON line per change.")
@click.option("--json", "as_json", is_flag=True)
@_channel
@wide_option
def check(baseline_file: Path, vms: tuple[str, ...], every: bool, events_to: str | None,
          as_json: bool, channel: str) -> None:
    """Report added, removed and changed files against the baseline: of the VM it was taken
    from, or of the VMs named (a golden baseline for many)."""
    from cloudvmi.apps import fim as app
    from cloudvmi.apps.events import stdout_or
    from cloudvmi.apps.targets import each, resolve

    def go():
        base = app.Baseline.load(baseline_file)
        names = list(vms) or ([] if every else [base.vm])
        events = stdout_or(events_to)
        found = 0
        targets = resolve(names, every)
        try:
            with Progress("fim check", hide=as_json) as progress:
                for target, v in progress.over(each(targets), len(targets)):
                    changes = app.compare(base.files, app.scan(v, base.paths, channel=channel))
                    _report(changes, as_json, target.name, events)
                    found += len(changes)
        finally:
            events.close()
        return found

    sys.exit(1 if run_or_exit(go) else 0)


@fim.command()
@click.argument("baseline_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("vm", required=False, **VM_NAME)
@click.option("--path", "only", multiple=True, help="Restore only under this path (repeat).")
@_channel
@wide_option
def restore(baseline_file: Path, vm: str | None, only: tuple[str, ...], channel: str) -> None:
    """Write back content and metadata of changed and removed files, remove added ones."""
    from cloudvmi.apps import fim as app
    from cloudvmi.apps.targets import resolve

    def go():
        (target,) = resolve([vm or app.Baseline.load(baseline_file).vm])
        with target.open() as v, Progress(f"scan of {target.name}") as progress:
            return app.restore(v, baseline_file, list(only), channel, progress.report)

    undone = run_or_exit(go)
    table("Restored", ["KIND", "PATH"], ((c.kind, c.path) for c in undone))

"""`cloudvmi hunt [VM...] [--all]`: hidden processes, modules and sockets, and kernel
tampering, by comparing views."""

import sys

import click

from cloudvmi.cli.complete import VM_NAME
from cloudvmi.cli.output import emit_json, table, wide_option
from cloudvmi.cli.progress import Progress
from cloudvmi.cli.views import run_or_exit


@click.command()
@click.argument("vms", nargs=-1, **VM_NAME)
@click.option("--all", "every", is_flag=True, help="Every VM of every inventory node.")
@click.option("--events", "events_to", metavar="FILE|-", help="One JSON line per finding.")
@click.option("--json", "as_json", is_flag=True)
@wide_option
def hunt(vms: tuple[str, ...], every: bool, events_to: str | None, as_json: bool) -> None:
    """Look for hidden processes, modules and sockets and for kernel tampering: each object
    is looked up in several views (task list, pid table, run queues, the guest's own /proc;
    module list, kobjects, memory, /proc/modules; socket tables, /proc/net) and the kernel's
    integrity checks run. Exit status 1 when anything is found."""
    from cloudvmi.apps.events import stdout_or
    from cloudvmi.apps.hunt import Hunt
    from cloudvmi.apps.targets import each, resolve

    def go():
        targets = resolve(list(vms), every)
        events = stdout_or(events_to)
        try:
            app = Hunt(events)
            with Progress("hunt", hide=as_json or events_to == "-") as progress:
                return {t.name: app.check(t, vm)
                        for t, vm in progress.over(each(targets), len(targets))}
        finally:
            events.close()

    found = run_or_exit(go)
    if as_json:
        emit_json(found)
    elif events_to != "-":
        for vm, findings in found.items():
            table(f"Hunt in {vm}", ["KIND", "OBJECT", "SEEN IN", "MISSING FROM"],
                  ((f.kind, f.object, ", ".join(f.present), ", ".join(f.absent))
                   for f in findings),
                  caption="nothing hidden, no tampering found" if not findings else None)
    sys.exit(1 if any(found.values()) else 0)

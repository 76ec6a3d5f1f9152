"""`cloudvmi enforce STATE [VM...] [--all] [--dry-run]`: a desired state, applied from
outside."""


import click

from cloudvmi.cli.complete import VM_NAME
from cloudvmi.cli.output import emit_json, table, wide_option
from cloudvmi.cli.progress import Progress
from cloudvmi.cli.views import run_or_exit


@click.command()
@click.argument("state_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("vms", nargs=-1, **VM_NAME)
@click.option("--all", "every", is_flag=True, help="Every VM of every inventory node.")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--events", "events_to", metavar="FILE|-", help="One JSON line per change.")
@click.option("--json", "as_json", is_flag=True)
@wide_option
def enforce(state_file: str, vms: tuple[str, ...], every: bool, dry_run: bool,
            events_to: str | None, as_json: bool) -> None:
    """Bring each VM to the state in STATE_FILE (accounts, sysctl, interfaces, files,
    forbidden processes); a second run changes nothing."""
    from cloudvmi.apps import enforce as app
    from cloudvmi.apps.events import Event, stdout_or
    from cloudvmi.apps.targets import each, resolve

    def go():
        state = app.load(state_file)
        targets = resolve(list(vms), every)
        events = stdout_or(events_to)
        done = {}
        try:
            with Progress("enforce", hide=as_json or events_to == "-") as progress:
                for target, vm in progress.over(each(targets), len(targets)):
                    changes = app.plan(vm, state)

                    def record(c, target=target):
                        events.emit(Event("enforce", target.name, "change", c.item,
                                          {"what": c.what, "before": c.before,
                                           "after": c.after}, target.node))

                    if not dry_run:
                        app.apply(changes, record)
                    done[target.name] = changes
        finally:
            events.close()
        return done

    done = run_or_exit(go)
    if as_json:
        emit_json({vm: [{"item": c.item, "what": c.what, "before": c.before,
                         "after": c.after} for c in changes] for vm, changes in done.items()})
    else:
        for vm, changes in done.items():
            table(f"{'Would change' if dry_run else 'Changed'} in {vm}",
                  ["ITEM", "CHANGE", "BEFORE", "AFTER"],
                  ((c.item, c.what, c.before, c.after) for c in changes))

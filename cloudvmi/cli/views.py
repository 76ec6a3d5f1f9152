"""A CLI command for every view in the registry: `cloudvmi NAME VM [ARGS] [--json]`, or
`--all` for every VM of every node in the inventory. Tables come from the view's declared
columns; nothing here knows a particular view."""

import dataclasses
import sys
import types
import typing
from typing import Any

import click

from cloudvmi.capability import Capability, Column
from cloudvmi.cli import failures, output
from cloudvmi.cli.complete import complete_vm
from cloudvmi.cli.output import emit_json, error, literal, set_wide, table

_CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


def open_vm(target: str, writable: bool = False):
    from cloudvmi.remote.inventory import open_target

    return open_target(target, writable=writable)


def run_or_exit(fn):
    """FN(), or exit 1 after one `error:` line when it fails as expected (cli.failures)."""
    try:
        return fn()
    except failures.EXPECTED as exc:
        failures.report(exc)
        sys.exit(1)


def render(cap: Capability, vm_name: str, result: Any) -> None:
    """A view's result as a table: its declared columns, or FIELD/VALUE rows."""
    title = (cap.title or f"{cap.name} of {{vm}}").format(vm=vm_name)
    items = getattr(result, "items", None)
    if isinstance(result, list):
        items = result
    if isinstance(items, list):
        columns = cap.columns or _field_columns(items)
        partial = getattr(result, "partial", None)
        table(title, [c.header for c in columns], ([c.of(item) for c in columns] for item in items),
              caption=f"partial result: {partial}" if partial else None,
              numeric=[c.header for c in columns if c.numeric])
    elif hasattr(result, "rows"):
        table(title, ["FIELD", "VALUE"], result.rows())
    elif dataclasses.is_dataclass(result):
        table(title, ["FIELD", "VALUE"], ((f.name, getattr(result, f.name))
                                          for f in dataclasses.fields(result)))
    else:
        output.console.print(literal(result), soft_wrap=True)


def _field_columns(items: list):
    if not items or not dataclasses.is_dataclass(items[0]):
        return (Column("VALUE", lambda v: v),)
    return tuple(Column(f.name.upper(), f.name) for f in dataclasses.fields(items[0]))


def _params(cap: Capability) -> list[click.Parameter]:
    out: list[click.Parameter] = []
    for p in cap.params:
        hint = p.type
        origin = typing.get_origin(hint)
        if hint is bool:
            out.append(click.Option([f"--{p.name.replace('_', '-')}/--no-"
                                     f"{p.name.replace('_', '-')}"], default=bool(p.default)
                                    if not p.required else False, help=p.help))
            continue
        optional = origin in (typing.Union, types.UnionType)
        base = next((a for a in typing.get_args(hint) if a is not type(None)), str) \
            if optional else hint
        ctype = _CLICK_TYPES.get(base, click.STRING)
        if p.required:
            out.append(click.Argument([p.name], type=ctype))
        else:
            out.append(click.Option([f"--{p.name.replace('_', '-')}", p.name], type=ctype,
                                    default=p.default, show_default=p.default is not None,
                                    help=p.help))
    return out


FLEET_OPTIONS = (
    click.Option(["--nodes"], metavar="HOST:PORT,...",
                 help="Nodes besides the inventory's (NAME=HOST:PORT to name one)."),
    click.Option(["--srv"], metavar="NAME", help="Nodes from NAME's DNS SRV records."),
    click.Option(["--dns"], metavar="HOST:PORT", help="The DNS server to ask for --srv."),
    click.Option(["--timeout"], type=click.FloatRange(0.1, 3600), metavar="SECONDS",
                 help="How long one node may take (default 30 s, or the inventory's)."),
)


def fleet_inventory(nodes: str | None, srv: str | None, dns: str | None,
                    timeout: float | None):
    """The inventory with the nodes the command line adds."""
    from cloudvmi.remote.inventory import load

    return load(nodes=nodes, srv=srv, dns=dns, timeout=timeout)


def with_fleet_options(command: click.Command) -> click.Command:
    command.params.extend(FLEET_OPTIONS)
    return command


def view_command(cap: Capability) -> click.Command:
    def callback(vm: str | None, fleet: bool, as_json: bool, nodes: str | None,
                 srv: str | None, dns: str | None, timeout: float | None, **args: Any) -> None:
        if fleet:
            return run_or_exit(lambda: _fleet(cap, args, as_json, fleet_inventory(
                nodes, srv, dns, timeout)))
        if not vm:
            raise click.UsageError("name a VM, or use --all")

        def go() -> None:
            with open_vm(vm) as v:
                if not as_json:
                    from cloudvmi.cli.progress import status

                    with status("Finding the kernel in guest memory…"):
                        v.linux.ready()
                result = getattr(v.linux, cap.name)(**args)
            if as_json:
                emit_json(result)
            else:
                render(cap, vm, result)

        run_or_exit(go)

    params = [click.Argument(["vm"], required=False, shell_complete=complete_vm),
              *_params(cap),
              click.Option(["--all", "fleet"], is_flag=True,
                           help="Every VM of every node in the inventory."),
              click.Option(["--json", "as_json"], is_flag=True,
                           help="Print JSON instead of a table."),
              click.Option(["--wide", "-w"], is_flag=True, expose_value=False, is_eager=True,
                           callback=set_wide, help="Print every field whole (tables are "
                           "cut to the terminal).")]
    return with_fleet_options(
        click.Command(cap.command, callback=callback, params=params, help=cap.doc))


def _fleet(cap: Capability, args: dict, as_json: bool, inventory) -> None:
    """The view on every VM of every node, fetched concurrently; a node or VM that fails
    gets its own error line and the others still answer (exit status 1 if any failed).
    Nodes, and each node's VMs, come in name order."""
    from cloudvmi.cli.progress import Progress
    from cloudvmi.remote.fleet import view_on_all

    with Progress(f"{cap.command} on every VM", hide=as_json) as progress:
        answers = view_on_all(inventory, cap.name, args, progress=progress.report)
    failed = False
    out: dict[str, Any] = {}
    for node, answer in answers.items():
        if isinstance(answer, Exception):
            failed = True
            out[node] = {"error": str(answer)}
            if not as_json:
                error(f"{node}: {answer}")
            continue
        out[node] = {}
        for name, result in answer.items():
            if isinstance(result, Exception):
                failed = True
                out[node][name] = {"error": str(result)}
                if not as_json:
                    error(f"{name}@{node}: {result}")
                continue
            out[node][name] = result
            if not as_json:
                render(cap, f"{name}@{node}", result)
    if as_json:
        emit_json(out)
    if failed:
        sys.exit(1)

"""The `cloudvmi` command: every view of the registry as a command (`cloudvmi ps VM`), the
guest operations, the fleet, the agent and the lab."""

import importlib
import os
import sys

import click

from cloudvmi.cli import failures, output
from cloudvmi.cli.output import emit_json, table, wide_option
from cloudvmi.cli.views import fleet_inventory, run_or_exit, view_command, with_fleet_options

ANYWHERE = ("--connect",)  # options of the group also taken after the command's name


def _options_first(args: list[str]) -> list[str]:
    """ARGS with the group's options of ANYWHERE moved in front of the command, so that
    `cloudvmi ps libvirt:web-1 --connect URI` reads as `cloudvmi --connect URI ps ...`. What
    follows `--` (a guest program's arguments) is left alone."""
    front, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg in ANYWHERE and i + 1 < len(args):
            front += args[i:i + 2]
            i += 2
            continue
        if arg.split("=", 1)[0] in ANYWHERE and "=" in arg:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


# The fixed commands, by name: each module is imported only when its command is named (or
# when every command is listed), so `cloudvmi ps DUMP` does not import the write layer, the
# agent or the lab. tests/test_cli.py checks that each entry names a command of that name.
FIXED = {
    "lab": "cloudvmi.cli.lab:lab",
    "agent": "cloudvmi.cli.agent:agent",
    "exec": "cloudvmi.cli.exec_cmd:exec_command",
    "guard": "cloudvmi.cli.guard_cmd:guard",
    "fim": "cloudvmi.cli.fim_cmd:fim",
    "enforce": "cloudvmi.cli.enforce_cmd:enforce",
    "hunt": "cloudvmi.cli.hunt_cmd:hunt",
    "isf": "cloudvmi.cli.vol_cmd:isf",
    "vol": "cloudvmi.cli.vol_cmd:vol",
    "certs": "cloudvmi.cli.remote_admin:certs",
    "audit": "cloudvmi.cli.remote_admin:audit",
    **{name: f"cloudvmi.cli.ops:{attr}" for name, attr in (
        ("kill", "kill"), ("cat", "cat"), ("put", "put"), ("ls", "ls_"), ("rm", "rm"),
        ("stat", "stat"), ("mkdir", "mkdir"), ("chmod", "chmod"), ("chown", "chown"),
        ("sysctl", "sysctl"), ("ip", "ip"), ("run", "run"))},
}


def fixed_command(name: str) -> click.Command | None:
    """The fixed command NAME, its module imported now."""
    where = FIXED.get(name)
    if where is None:
        return None
    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr)


class Commands(click.Group):
    """Fixed commands (imported when named), plus one per view of the registry, made when
    first named."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _options_first(args))

    def list_commands(self, ctx: click.Context) -> list[str]:
        from cloudvmi import capability

        views = (c.command for c in capability.all_capabilities("linux") if c.cli)
        return sorted({*super().list_commands(ctx), *FIXED, *views})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name) or fixed_command(name)
        if command is None:
            from cloudvmi import capability

            cap = capability.command("linux", name)
            command = view_command(cap) if cap else None
        return command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        """Every failure as one `error: ...` line and a nonzero exit (see cli.failures)."""
        output.settings.wide = False  # each run starts afresh (tests run many in one process)
        failures.set_debug(False, reset=True)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        sys.exit(failures.guarded(lambda: super(Commands, self).main(
            args, prog_name or "cloudvmi", complete_var, False, **extra)))


def _symbols(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--symbols must name something that can hold types: checked now, not when a kernel
    without BTF first needs it."""
    if value:
        from cloudvmi.os.linux.typesource import check_path

        try:
            check_path(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return value


@click.group(cls=Commands, name="cloudvmi")
@click.version_option(package_name="cloudvmi")
@click.option("--symbols", metavar="PATH", callback=_symbols,
              help="Types for guest kernels built without BTF: a BTF file, a Volatility 3 "
              "ISF, a vmlinux, or a directory of them (also $CLOUDVMI_SYMBOLS).")
@click.option("--connect", "libvirt_uri", metavar="URI",
              help="The libvirt connection for libvirt:NAME domains (default qemu:///system; "
              "also $CLOUDVMI_LIBVIRT_URI or libvirt_uri in the settings).")
@wide_option
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, param, value: failures.set_debug(value),
              help="On an error, print its traceback too (also CLOUDVMI_DEBUG=1).")
def main(symbols: str | None, libvirt_uri: str | None) -> None:
    """CloudVMI: introspect and change QEMU/KVM guests from outside, with no agent inside.

    VM is a lab guest's name, a libvirt domain's (libvirt:NAME), a QMP socket path, a memory
    dump file, or VM@NODE.
    Shell completion: eval "$(_CLOUDVMI_COMPLETE=bash_source cloudvmi)" (or zsh_source,
    fish_source).
    """
    if libvirt_uri:
        from cloudvmi.control.libvirt import URI_ENV

        os.environ[URI_ENV] = libvirt_uri
    if symbols:  # every command of this process, the agent's included, looks there first
        from cloudvmi.os.linux.typesource import ENV

        os.environ[ENV] = os.pathsep.join(filter(None, (symbols, os.environ.get(ENV))))


@with_fleet_options
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--local", is_flag=True,
              help="This host's running VMs (lab guests, libvirt domains) instead.")
@wide_option
def vms(as_json: bool, local: bool, nodes: str | None, srv: str | None, dns: str | None,
        timeout: float | None) -> None:
    """List the VMs of every node (the inventory's, --nodes, --srv), asked at once; a node
    that does not answer gets a row of its own (and exit status 1). --local: this host's."""
    failed = False

    def go() -> None:
        nonlocal failed
        if local:
            from cloudvmi.control import discovery

            found = discovery.running()
            if as_json:
                return emit_json([{"name": f.name, "kind": f.kind, "arch": f.arch or None,
                                   "detail": f.detail} for f in found])
            return table("VMs", ["VM", "KIND", "ARCH", "STATE", "DETAIL"],
                         [(f.target, f.kind, f.arch or "?", "running", f.detail)
                          for f in found])

        answers = fleet_inventory(nodes, srv, dns, timeout).fan_out(lambda node: node.vms())
        rows, out = [], {}
        for node, answer in answers.items():
            if isinstance(answer, Exception):
                failed = True
                out[node] = {"error": str(answer)}
                rows.append((f"?@{node}", "", "unreachable", str(answer)))
                continue
            listed = sorted(answer, key=lambda v: v.name)
            out[node] = [{"name": v.name, "kind": v.kind, "running": v.running,
                          "detail": v.detail} for v in listed]
            rows += [(f"{v.name}@{node}", v.kind, "running" if v.running else "read-only",
                      v.detail) for v in listed]
        if as_json:
            return emit_json(out)
        table("VMs", ["VM", "KIND", "STATE", "DETAIL"], rows)

    run_or_exit(go)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main(prog_name="cloudvmi")

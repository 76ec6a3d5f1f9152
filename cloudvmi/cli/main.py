"""The `cloudvmi` command: every view of the registry as a command (`cloudvmi ps VM`), the
guest operations, the fleet, the agent and the lab."""

import os

import click

from cloudvmi.cli.output import emit_json, table
from cloudvmi.cli.views import run_or_exit, view_command


class Commands(click.Group):
    """Fixed commands, plus one per view of the registry, made when first named."""

    def _views(self) -> dict:
        from cloudvmi import capability

        return {c.command: c for c in capability.all_capabilities("linux") if c.cli}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._views()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            cap = self._views().get(name)
            command = view_command(cap) if cap else None
        return command


@click.group(cls=Commands)
@click.version_option(package_name="cloudvmi")
@click.option("--symbols", metavar="PATH", help="Types for guest kernels built without BTF: "
              "a BTF file, a Volatility 3 ISF, a vmlinux, or a directory of them "
              "(also $CLOUDVMI_SYMBOLS).")
def main(symbols: str | None) -> None:
    """CloudVMI: introspect and change QEMU/KVM guests from outside, with no agent inside.

    VM is a lab guest's name, a QMP socket path, a memory dump file, or VM@NODE.
    """
    if symbols:  # every command of this process, the agent's included, looks there first
        from cloudvmi.os.linux.typesource import ENV

        os.environ[ENV] = os.pathsep.join(filter(None, (symbols, os.environ.get(ENV))))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def vms(as_json: bool) -> None:
    """List the VMs of every node in the inventory."""

    def go() -> None:
        from cloudvmi.remote.inventory import load

        answers = load().fan_out(lambda node: node.vms())
        rows, out = [], {}
        for node, answer in answers.items():
            if isinstance(answer, Exception):
                out[node] = {"error": str(answer)}
                rows.append((f"?@{node}", "", "unreachable", str(answer)))
                continue
            out[node] = [{"name": v.name, "kind": v.kind, "detail": v.detail} for v in answer]
            rows += [(f"{v.name}@{node}", v.kind, "running", v.detail) for v in answer]
        if as_json:
            return emit_json(out)
        table("VMs", ["VM", "KIND", "STATE", "DETAIL"], rows)

    run_or_exit(go)


from cloudvmi.cli import agent as _agent  # noqa: E402
from cloudvmi.cli import enforce_cmd as _enforce  # noqa: E402
from cloudvmi.cli import exec_cmd as _exec  # noqa: E402
from cloudvmi.cli import fim_cmd as _fim  # noqa: E402
from cloudvmi.cli import guard_cmd as _guard  # noqa: E402
from cloudvmi.cli import hunt_cmd as _hunt  # noqa: E402
from cloudvmi.cli import lab as _lab  # noqa: E402
from cloudvmi.cli import ops as _ops  # noqa: E402
from cloudvmi.cli import remote_admin as _remote_admin  # noqa: E402
from cloudvmi.cli import vol_cmd as _vol  # noqa: E402

main.add_command(_lab.lab)
main.add_command(_agent.agent)
main.add_command(_exec.exec_command)
main.add_command(_guard.guard)
main.add_command(_fim.fim)
main.add_command(_enforce.enforce)
main.add_command(_hunt.hunt)
main.add_command(_vol.isf)
main.add_command(_vol.vol)
for _command in _remote_admin.COMMANDS:
    main.add_command(_command)
for _command in _ops.COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()

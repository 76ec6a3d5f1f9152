"""The `cloudvmi` command: views of a VM from outside, and the lab that boots real guests."""

import sys
from collections.abc import Callable

import click

from cloudvmi.cli.output import console, emit_json, errors, table
from cloudvmi.errors import CloudVMIError


def _open(target: str):
    from cloudvmi.vm import attach

    return attach(target)


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except CloudVMIError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


def _with_kernel(vm, as_json: bool):
    """Locate the kernel with a progress display (cold attach scans RAM)."""
    if as_json or not console.is_terminal:
        return vm.linux.kernel
    with console.status("Finding the kernel in guest memory…"):
        return vm.linux.kernel


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group()
@click.version_option(package_name="cloudvmi")
def main() -> None:
    """CloudVMI: introspect QEMU/KVM guests from outside, with no agent inside.

    VM is a lab guest's name, a QMP socket path, or a memory dump file.
    """


@main.command()
@click.argument("vm")
@json_option
def ps(vm: str, as_json: bool) -> None:
    """List the guest's processes."""

    def go() -> None:
        with _open(vm) as v:
            _with_kernel(v, as_json)
            result = v.linux.processes()
        if as_json:
            return emit_json(result)
        table(f"Processes of {vm}", ["PID", "PPID", "UID", "S", "THR", "COMM", "COMMAND"],
              ((p.pid, p.ppid, p.uid, p.state, p.threads, p.comm,
                " ".join(p.cmdline) if p.cmdline else f"[{p.comm}]") for p in result.items),
              caption=_caption(result))

    _run(go)


@main.command()
@click.argument("vm")
@json_option
def threads(vm: str, as_json: bool) -> None:
    """List every thread of every process."""

    def go() -> None:
        with _open(vm) as v:
            _with_kernel(v, as_json)
            result = v.linux.threads()
        if as_json:
            return emit_json(result)
        table(f"Threads of {vm}", ["TGID", "TID", "S", "COMM"],
              ((t.tgid, t.tid, t.state, t.comm) for t in result.items), caption=_caption(result))

    _run(go)


@main.command()
@click.argument("vm")
@json_option
def modules(vm: str, as_json: bool) -> None:
    """List loaded kernel modules."""

    def go() -> None:
        with _open(vm) as v:
            _with_kernel(v, as_json)
            result = v.linux.modules()
        if as_json:
            return emit_json(result)
        table(f"Modules of {vm}", ["NAME", "SIZE", "REFS", "STATE", "ADDRESS"],
              ((m.name, m.size, m.refcount, m.state, f"{m.address:#x}") for m in result.items),
              caption=_caption(result))

    _run(go)


@main.command()
@click.argument("vm")
@json_option
def info(vm: str, as_json: bool) -> None:
    """The guest kernel's identity: version, command line, uptime, how it was found."""

    def go() -> None:
        with _open(vm) as v:
            _with_kernel(v, as_json)
            result = v.linux.info()
        if as_json:
            return emit_json(result)
        table(f"Kernel of {vm}", ["FIELD", "VALUE"], result.rows())

    _run(go)


def _caption(result) -> str | None:
    if result.partial:
        return f"[yellow]partial result: {result.partial}[/yellow]"
    return None


from cloudvmi.cli import lab as _lab  # noqa: E402
from cloudvmi.cli import ops as _ops  # noqa: E402

main.add_command(_lab.lab)
for _command in _ops.COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()

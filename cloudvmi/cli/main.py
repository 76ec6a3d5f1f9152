"""The `cloudvmi` command: views of a VM from outside, and the lab that boots real guests."""

import sys
from collections.abc import Callable

import click

from cloudvmi.cli.output import console, emit_json, errors, table
from cloudvmi.errors import CloudVMIError


def _open(target: str):
    from cloudvmi.remote.inventory import open_target

    return open_target(target)


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except CloudVMIError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


def _with_kernel(vm, as_json: bool):
    """Locate the kernel with a progress display (cold attach scans RAM)."""
    if not hasattr(vm.linux, "kernel"):  # a remote VM: its agent does this
        return None
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
@click.argument("vm", required=False)
@click.option("--all", "fleet", is_flag=True, help="Every VM of every node in the inventory.")
@json_option
def ps(vm: str | None, fleet: bool, as_json: bool) -> None:
    """List the guest's processes (of VM, or of all VMs with --all)."""
    if fleet:
        return _run(lambda: _fleet_ps(as_json))
    if not vm:
        raise click.UsageError("name a VM, or use --all")

    def go() -> None:
        with _open(vm) as v:
            _with_kernel(v, as_json)
            result = v.linux.processes()
        if as_json:
            return emit_json(result)
        _process_table(f"Processes of {vm}", result)

    _run(go)


def _process_table(title: str, result) -> None:
    table(title, ["PID", "PPID", "UID", "S", "THR", "COMM", "COMMAND"],
          ((p.pid, p.ppid, p.uid, p.state, p.threads, p.comm,
            " ".join(p.cmdline) if p.cmdline else f"[{p.comm}]") for p in result.items),
          caption=_caption(result))


def _fleet_ps(as_json: bool) -> None:
    """Process lists of every VM on every node, fetched concurrently; a node that fails gets
    its own error and the others still answer."""
    from cloudvmi.remote.inventory import load

    def node_ps(node):
        return {vm.name: node.vm(vm.name).linux.processes() for vm in node.vms()}

    answers = load().fan_out(node_ps)
    failed = False
    out = {}
    for node, answer in answers.items():
        if isinstance(answer, Exception):
            failed = True
            out[node] = {"error": str(answer)}
            if not as_json:
                errors.print(f"[red]{node}:[/red] {answer}")
            continue
        out[node] = answer
        if not as_json:
            for name, result in answer.items():
                _process_table(f"Processes of {name}@{node}", result)
    if as_json:
        emit_json(out)
    if failed:
        sys.exit(1)


@main.command()
@json_option
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


from cloudvmi.cli import agent as _agent  # noqa: E402
from cloudvmi.cli import lab as _lab  # noqa: E402
from cloudvmi.cli import ops as _ops  # noqa: E402
from cloudvmi.cli import remote_admin as _remote_admin  # noqa: E402

main.add_command(_lab.lab)
main.add_command(_agent.agent)
for _command in _remote_admin.COMMANDS:
    main.add_command(_command)
for _command in _ops.COMMANDS:
    main.add_command(_command)

if __name__ == "__main__":
    main()

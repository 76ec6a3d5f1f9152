"""`cloudvmi kill|cat|put|ls|rm|stat|mkdir|chmod|chown|sysctl|ip|run`: change a guest from
outside, by system calls run inside it. Every command takes --json."""

import sys
from pathlib import Path

import click

from cloudvmi.cli.complete import VM_NAME
from cloudvmi.cli.output import emit_json, say, table, wide_option
from cloudvmi.cli.progress import Progress
from cloudvmi.cli.views import open_vm, run_or_exit
from cloudvmi.stream import ByteStream
from cloudvmi.write.recipes.common import MAX_FILE
from cloudvmi.write.recipes.run import TIMEOUT

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
as_pid = click.option("--as-pid", type=int, default=None,
                      help="Run inside this process (its identity), not any root process.")

def _octal(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal mode (e.g. 644)") from None
    if not 0 <= mode <= 0o7777:
        raise click.BadParameter(f"{value!r} is not a mode (0 to 7777)")
    return mode


def _ops(vm, pid: int | None):
    return vm.guest.as_process(pid) if pid else vm.guest


def _do(target: str, pid: int | None, fn):
    def go():
        with open_vm(target, writable=True) as vm:
            return fn(_ops(vm, pid))

    return run_or_exit(go)


def _done(as_json: bool, message: str, **fields) -> None:
    if as_json:
        emit_json({"ok": True, **fields})
    else:
        say(message)


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("pid", type=int)
@click.option("-s", "--signal", "sig", default="TERM", show_default=True,
              help="Signal name or number.")
@as_pid
@json_option
def kill(vm: str, pid: int, sig: str, as_pid: int | None, as_json: bool) -> None:
    """Send a signal to a guest process."""
    import signal as signals

    number = int(sig) if sig.isdigit() else int(getattr(signals, "SIG" + sig.upper().removeprefix(
        "SIG"), 0))
    if number <= 0 and sig != "0":
        raise click.BadParameter(f"unknown signal {sig}")
    _do(vm, as_pid, lambda ops: ops.kill(pid, number))
    _done(as_json, f"signal {number} sent to {pid}", pid=pid, signal=number)


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("path")
@as_pid
@json_option
def cat(vm: str, path: str, as_pid: int | None, as_json: bool) -> None:
    """Print a guest file."""
    data = _do(vm, as_pid, lambda ops: ops.read_file(path))
    if as_json:
        return emit_json({"path": path, "size": len(data),
                          "content": data.decode("utf-8", "replace")})
    sys.stdout.buffer.write(data)


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("local", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("path")
@click.option("--append", is_flag=True, help="Append instead of replacing.")
@click.option("--mode", default="644", show_default=True, callback=_octal,
              help="Octal mode of a new file.")
@click.option("--no-follow", "nofollow", is_flag=True,
              help="Fail (ELOOP) if PATH is a symbolic link instead of writing through it.")
@as_pid
@json_option
def put(vm: str, local: Path, path: str, append: bool, mode: int, nofollow: bool,
        as_pid: int | None, as_json: bool) -> None:
    """Copy a local file into the guest (PATH absolute), streamed: never read whole."""
    size = local.stat().st_size
    if size > MAX_FILE:
        raise click.BadParameter(f"{local} is {size} bytes, over the {MAX_FILE}-byte limit",
                                 param_hint="LOCAL")
    with local.open("rb") as source, Progress(f"put {path}", hide=as_json,
                                              unit="bytes") as progress:
        progress.add(size)
        data = ByteStream.of_file(source, size).on_progress(progress.report)
        _do(vm, as_pid, lambda ops: ops.write_file(path, data, append=append, mode=mode,
                                                   nofollow=nofollow))
    _done(as_json, f"{data.size} bytes written to {path}", path=path, size=data.size)


@click.command(name="ls")
@click.argument("vm", **VM_NAME)
@click.argument("path")
@as_pid
@json_option
@wide_option
def ls_(vm: str, path: str, as_pid: int | None, as_json: bool) -> None:
    """List a guest directory."""
    entries = _do(vm, as_pid, lambda ops: ops.listdir(path))
    if as_json:
        return emit_json(entries)
    table(f"{path}", ["NAME", "TYPE", "INODE"], ((e.name, e.type, e.inode) for e in entries))


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("path")
@as_pid
@json_option
def rm(vm: str, path: str, as_pid: int | None, as_json: bool) -> None:
    """Delete a guest file or empty directory."""
    _do(vm, as_pid, lambda ops: ops.remove(path))
    _done(as_json, f"{path} removed", path=path)


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("path")
@as_pid
@json_option
@wide_option
def stat(vm: str, path: str, as_pid: int | None, as_json: bool) -> None:
    """Show a guest file's metadata."""
    st = _do(vm, as_pid, lambda ops: ops.stat(path))
    if as_json:
        return emit_json({**st.__dict__, "permissions": st.permissions})
    table(path, ["FIELD", "VALUE"], [("type", st.type), ("mode", st.permissions),
                                     ("size", st.size), ("uid", st.uid), ("gid", st.gid),
                                     ("links", st.nlink), ("inode", st.inode),
                                     ("mtime", st.mtime)])


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("path")
@click.option("--mode", default="755", show_default=True, callback=_octal)
@as_pid
@json_option
def mkdir(vm: str, path: str, mode: int, as_pid: int | None, as_json: bool) -> None:
    """Create a guest directory."""
    _do(vm, as_pid, lambda ops: ops.mkdir(path, mode))
    _done(as_json, f"{path} created", path=path)


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("mode", callback=_octal)
@click.argument("path")
@as_pid
@json_option
def chmod(vm: str, mode: int, path: str, as_pid: int | None, as_json: bool) -> None:
    """Change a guest file's mode (octal)."""
    _do(vm, as_pid, lambda ops: ops.chmod(path, mode))
    _done(as_json, f"{path} mode {mode:o}", path=path, mode=f"{mode:o}")


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("owner")
@click.argument("path")
@as_pid
@json_option
def chown(vm: str, owner: str, path: str, as_pid: int | None, as_json: bool) -> None:
    """Change a guest file's owner: UID[:GID] (numbers)."""
    uid, _, gid = owner.partition(":")
    if not uid.isdigit() or not (gid.isdigit() or not gid):
        raise click.BadParameter(f"{owner!r} is not UID[:GID] (numbers)", param_hint="OWNER")
    _do(vm, as_pid, lambda ops: ops.chown(path, int(uid), int(gid) if gid else -1))
    _done(as_json, f"{path} owner {owner}", path=path, owner=owner)


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("setting")
@as_pid
@json_option
def sysctl(vm: str, setting: str, as_pid: int | None, as_json: bool) -> None:
    """Read KEY or set KEY=VALUE (kernel.hostname, net.ipv4.ip_forward, ...)."""
    key, eq, value = setting.partition("=")

    def go(ops) -> str:
        if eq:
            ops.sysctl_set(key, value)
        return ops.sysctl_get(key)

    current = _do(vm, as_pid, go)
    if as_json:
        return emit_json({"key": key, "value": current})
    say(f"{key} = {current}")


@click.command()
@click.argument("vm", **VM_NAME)
@click.argument("iface")
@click.argument("action", type=click.Choice(["up", "down", "addr"]))
@click.argument("cidr", required=False)
@as_pid
@json_option
def ip(vm: str, iface: str, action: str, cidr: str | None, as_pid: int | None,
       as_json: bool) -> None:
    """Bring a guest interface up or down, or set its IPv4 address: ip VM IFACE addr CIDR."""
    if action == "addr":
        if not cidr:
            raise click.UsageError("addr needs a CIDR, e.g. 10.0.0.2/24")
        _do(vm, as_pid, lambda ops: ops.set_address(iface, cidr))
    else:
        _do(vm, as_pid, lambda ops: ops.link_set(iface, action == "up"))
    _done(as_json, f"{iface} {action} {cidr or ''}".strip(), iface=iface, action=action,
          cidr=cidr)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("vm", **VM_NAME)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=click.FloatRange(TIMEOUT.low, TIMEOUT.high), default=30.0,
              show_default=True, help="Seconds before SIGALRM.")
@as_pid
@json_option
def run(vm: str, argv: tuple[str, ...], timeout: float, as_pid: int | None,
        as_json: bool) -> None:
    """Run a program in the guest: run VM -- /bin/sh -c 'CMD'. Exits with its status."""
    status, output = _do(vm, as_pid, lambda ops: ops.run(list(argv), timeout))
    if as_json:
        emit_json({"argv": list(argv), "status": status,
                   "output": output.decode("utf-8", "replace")})
    else:
        sys.stdout.buffer.write(output)
    sys.exit(status)


COMMANDS = [kill, cat, put, ls_, rm, stat, mkdir, chmod, chown, sysctl, ip, run]

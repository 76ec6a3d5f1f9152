"""Find or start a QEMU gdbstub through QMP, for a VM we only know by its QMP socket.

QMP has no gdbstub command, so this reads the stub's chardev (label "gdb") from
query-chardev and starts one with HMP `gdbserver`. Facts (QEMU 7.2): `gdbserver tcp:...`
fails ("duplicate yank instance") while a stub exists, so replacing one takes `gdbserver none`
first, which also drops any client connected to it; the chardev's filename reads
`disconnected:tcp:HOST:PORT,server=on` (or `disconnected:unix:PATH,...`) while free and loses
the `disconnected:` prefix while a client is connected.
Probing a stub by connecting to it is not an option: a connection stops the VM, and one queued
behind a connected client stops it later, when QEMU accepts it.

A stub gives whoever reaches it the guest's memory and registers, with no authorization or
audit. So the stubs started here listen on a unix socket in a directory only its owner may
enter (0700), never on TCP, where every local user could connect; and whoever started one
removes it when done (`stop_gdbstub`).
"""

import hashlib
import os
import re
import socket
from pathlib import Path

from cloudvmi.config import setting
from cloudvmi.control.gdbstub import GDBStubBusy, GDBStubError
from cloudvmi.paths import state_dir

__all__ = ["GDBStubBusy", "ensure_gdbstub", "find_gdbstub", "gdbstub_chardev", "start_gdbstub",
           "stop_gdbstub"]

Address = tuple[str, int] | str  # (host, port) of a TCP stub, or a unix socket's path
_TCP = re.compile(r"^(?:disconnected:)?tcp:(\[[^\]]*\]|[^:,]*):(\d+)")
_UNIX = re.compile(r"^(?:disconnected:)?unix:([^,]+)")


def gdbstub_chardev(qmp) -> str | None:
    """The filename of the VM's gdbstub chardev, or None if it has no gdbstub."""
    for dev in qmp.execute("query-chardev"):
        if dev.get("label") == "gdb":
            return dev.get("filename", "")
    return None


def find_gdbstub(qmp) -> Address | None:
    """The address of the VM's gdbstub if it has one that is free ((host, port) on TCP, a
    path on a unix socket), else None. Raises GDBStubBusy if a client is connected to it."""
    filename = gdbstub_chardev(qmp)
    if filename is None:
        return None
    tcp, unix = _TCP.match(filename), _UNIX.match(filename)
    if tcp is None and unix is None:
        return None  # a pty, stdio...: not something to connect to
    if not filename.startswith("disconnected:"):  # TCP shows "<->" too; unix only this
        raise GDBStubBusy(f"the VM's gdbstub ({filename}) already has a client; QEMU serves "
                          "one at a time")
    if unix is not None:
        return unix.group(1)
    host = tcp.group(1).strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return host, int(tcp.group(2))


def private_socket(vm_key: str) -> str:
    """Where a stub for the VM a monitor's key names listens: in a 0700 directory, one name
    per VM (unix socket paths are short: the name is a digest). The directory is the state
    directory's gdb/, or `gdb_socket_dir` of the settings: QEMU must be able to create the
    socket there (a QEMU run by libvirt as libvirt-qemu: a directory that user owns)."""
    directory = Path(setting("gdb_socket_dir") or state_dir() / "gdb")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    name = hashlib.sha256(vm_key.encode()).hexdigest()[:16]
    return str(directory / f"{name}.sock")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_gdbstub(qmp, host: str = "127.0.0.1", port: int | None = None,
                  replace: bool = False, path: str | None = None) -> Address:
    """Start a gdbstub with HMP `gdbserver`: on the unix socket PATH when given (what
    ensure_gdbstub does), else on HOST:PORT (a free port if None).

    REPLACE stops an existing stub first (disconnecting its client); without it an existing
    stub is an error.
    """
    existing = gdbstub_chardev(qmp)
    if existing is not None:
        if not replace:
            raise GDBStubError(f"the VM already has a gdbstub ({existing}); pass replace=True "
                               "to move it")
        qmp.hmp("gdbserver none")
    if path is not None:
        Path(path).unlink(missing_ok=True)
        last = qmp.hmp(f"gdbserver unix:{path},server=on,wait=off")
        if find_gdbstub(qmp) == path:
            return path
        raise GDBStubError(f"QEMU could not start a gdbstub on {path}: {last.strip()}")
    last = ""
    for _ in range(3 if port is None else 1):
        chosen = _free_port(host) if port is None else port
        last = qmp.hmp(f"gdbserver tcp:{host}:{chosen}")
        filename = gdbstub_chardev(qmp)
        match = _TCP.match(filename or "")
        if match and int(match.group(2)) == chosen:
            return host, chosen
        # Someone took the free port between our check and QEMU's bind: try another.
    raise GDBStubError(f"QEMU could not start a gdbstub on {host}: {last.strip()}")


def stop_gdbstub(qmp, path: str | None = None) -> None:
    """Remove the VM's gdbstub (and its socket file): nothing stays open once we are done."""
    qmp.hmp("gdbserver none")
    if path is not None:
        Path(path).unlink(missing_ok=True)


def ensure_gdbstub(qmp, vm_key: str) -> tuple[Address, bool]:
    """(address, started) of a free gdbstub for the VM behind QMP (VM_KEY: its monitor's
    key, a QMP socket's real path or a libvirt domain): its own if it has one
    (started False: leave it), else a new one on a private unix socket (started True: the
    caller removes it with stop_gdbstub when done)."""
    found = find_gdbstub(qmp)
    if found is not None:
        return found, False
    filename = gdbstub_chardev(qmp)
    if filename is not None:
        raise GDBStubError(f"the VM's gdbstub is on {filename}, which cannot be connected to; "
                           "use start_gdbstub(qmp, replace=True) to move it")
    return start_gdbstub(qmp, path=private_socket(vm_key)), True

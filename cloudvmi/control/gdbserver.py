"""Find or start a QEMU gdbstub through QMP, for a VM we only know by its QMP socket.

QMP has no gdbstub command, so this reads the stub's chardev (label "gdb") from
query-chardev and starts one with HMP `gdbserver`. Facts (QEMU 7.2): `gdbserver tcp:...`
fails ("duplicate yank instance") while a stub exists, so replacing one takes `gdbserver none`
first, which also drops any client connected to it; the chardev's filename reads
`disconnected:tcp:HOST:PORT,server=on` while free and has `<->` while a client is connected.
Probing a stub by connecting to it is not an option: a connection stops the VM, and one queued
behind a connected client stops it later, when QEMU accepts it.
"""

import re
import socket

from cloudvmi.control.gdbstub import GDBStubBusy, GDBStubError

__all__ = ["GDBStubBusy", "ensure_gdbstub", "find_gdbstub", "gdbstub_chardev", "start_gdbstub"]

_TCP = re.compile(r"^(?:disconnected:)?tcp:(\[[^\]]*\]|[^:,]*):(\d+)")


def gdbstub_chardev(qmp) -> str | None:
    """The filename of the VM's gdbstub chardev, or None if it has no gdbstub."""
    for dev in qmp.execute("query-chardev"):
        if dev.get("label") == "gdb":
            return dev.get("filename", "")
    return None


def find_gdbstub(qmp) -> tuple[str, int] | None:
    """(host, port) of the VM's TCP gdbstub if it has one that is free, else None.

    Raises GDBStubBusy if a client is connected to it.
    """
    filename = gdbstub_chardev(qmp)
    if filename is None:
        return None
    match = _TCP.match(filename)
    if match is None:
        return None  # a stub on a unix socket, a pty...: not reachable as (host, port)
    if "<->" in filename:
        raise GDBStubBusy(f"the VM's gdbstub ({filename}) already has a client; QEMU serves "
                          "one at a time")
    host = match.group(1).strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return host, int(match.group(2))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_gdbstub(qmp, host: str = "127.0.0.1", port: int | None = None,
                  replace: bool = False) -> tuple[str, int]:
    """Start a gdbstub on HOST:PORT (a free port if None) with HMP `gdbserver`.

    REPLACE stops an existing stub first (disconnecting its client); without it an existing
    stub is an error.
    """
    existing = gdbstub_chardev(qmp)
    if existing is not None:
        if not replace:
            raise GDBStubError(f"the VM already has a gdbstub ({existing}); pass replace=True "
                               "to move it")
        qmp.hmp("gdbserver none")
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


def ensure_gdbstub(qmp, host: str = "127.0.0.1") -> tuple[str, int]:
    """(host, port) of a free gdbstub for the VM behind QMP, starting one if it has none.

    A stub we cannot reach over TCP (unix socket, pty) is left alone: this raises instead of
    taking it away from whoever set it up.
    """
    found = find_gdbstub(qmp)
    if found is not None:
        return found
    filename = gdbstub_chardev(qmp)
    if filename is not None:
        raise GDBStubError(f"the VM's gdbstub is on {filename}, not TCP; use "
                           "start_gdbstub(qmp, replace=True) to move it")
    return start_gdbstub(qmp, host)

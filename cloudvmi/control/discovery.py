"""Finding VMs by name, and facts about a running QEMU that QMP does not hand out directly.

VMs are found by finders: plug-ins listed under the `cloudvmi.finders` entry point, each a
module with `find(name, strict=False) -> Found | None` and `running() -> list[Found]` (the
lab and libvirt are two). A name may say which finder knows it: `libvirt:web-1`, `lab:web-1`;
that finder is then asked strictly: it says why it cannot find the VM (libvirtd unreachable)
instead of leaving the name to the others.
"""

import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.errors import CloudVMIError

FINDERS_GROUP = "cloudvmi.finders"


@dataclass(frozen=True)
class Found:
    """A running VM a finder knows: how to reach its monitor and debugger."""

    name: str
    kind: str  # the finder's name: "lab", "libvirt", ...
    qmp: str  # QMP socket path ("" when the monitor is reached otherwise: `connect`)
    gdb: tuple[str, int] | str | None = None  # a gdbstub the VM has: (host, port) or a path
    detail: str = ""
    connect: Callable[[], object] | None = None  # opens a monitor like control.qmp.QMP
    key: str = ""  # names the VM on this host, when it has no QMP socket
    symbols: str | None = None  # where its kernel's outside symbols are (--symbols), if known
    arch: str = ""  # the guest's architecture, where the finder knows it without asking QEMU

    @property
    def vm_key(self) -> str:
        """The same VM under any name has the same key: its socket's real path, else `key`."""
        return self.key or os.path.realpath(self.qmp)

    @property
    def target(self) -> str:
        """The name find() resolves to this VM through its own finder only."""
        return f"{self.kind}:{self.name}"

    def open_monitor(self):
        """A connection to the VM's monitor (QMP's interface, control/qmp.py)."""
        if self.connect is not None:
            return self.connect()
        from cloudvmi.control.qmp import QMP

        return QMP(self.qmp)


def finder_names() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.name for ep in entry_points(group=FINDERS_GROUP)]


def _finders(only: list[str] | None = None) -> Iterator:
    """The finders' modules, each imported only when asked: a lab guest's name is found
    without importing libvirt's binding (tens of milliseconds of a command's start)."""
    import importlib
    from importlib.metadata import entry_points

    for ep in entry_points(group=FINDERS_GROUP):
        if only is None or ep.name in only:
            yield importlib.import_module(ep.value)


def find(name: str, only: list[str] | None = None) -> Found | None:
    """The VM NAME as the first finder that knows it reports it; `KIND:NAME` asks only the
    finder KIND (when KIND is one of ONLY)."""
    kind, sep, rest = name.partition(":")
    strict = bool(sep) and kind in finder_names()
    if strict:
        if only is not None and kind not in only:
            return None
        only, name = [kind], rest
    for finder in _finders(only):
        found = finder.find(name, strict=strict)
        if found is not None:
            return found
    if strict:
        raise CloudVMIError(f"{kind} knows no running VM {name!r}")
    return None


def running(only: list[str] | None = None) -> list[Found]:
    """Every running VM the finders know."""
    return [f for finder in _finders(only) for f in finder.running()]


def process_alive(pid: int) -> bool:
    """Whether a host process runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def qemu_pid(qmp_socket: str) -> int:
    """The PID of the QEMU listening on a QMP socket, from the socket's peer credentials.

    connect() records the listener's credentials, so this works even while another client
    holds the monitor.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        sock.connect(qmp_socket)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        raise CloudVMIError(f"cannot reach QMP socket {qmp_socket}: {exc}") from exc
    finally:
        sock.close()
    pid = struct.unpack("3i", creds)[0]
    if pid <= 0:
        raise CloudVMIError(f"no process behind QMP socket {qmp_socket}")
    return pid


def shared_ram_file(qmp) -> str | None:
    """The file backing guest RAM, when it is a shared memory-backend-file (fast mmap path)."""
    try:
        objects = qmp.execute("qom-list", path="/objects")
    except CloudVMIError:
        return None
    for obj in objects:
        if not obj.get("type", "").startswith("child<memory-backend-file"):
            continue
        path = f"/objects/{obj['name']}"
        try:
            if qmp.execute("qom-get", path=path, property="share"):
                return qmp.execute("qom-get", path=path, property="mem-path")
        except CloudVMIError:
            continue
    return None

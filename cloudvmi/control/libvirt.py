"""QEMU guests run by libvirt (OpenStack Nova, oVirt, virt-manager hosts), by domain name.

libvirt holds the QEMU's QMP socket itself, so the monitor is reached through libvirt's
passthrough (`virDomainQemuMonitorCommand`, libvirt-python's `libvirt_qemu`): the same JSON
commands, HMP through `human-monitor-command`. libvirt marks a domain so used as tainted
("custom-monitor") in its log: it cannot vouch for a state it did not make. CloudVMI only
stops and resumes the vCPUs and starts and removes a gdbstub, which libvirt tracks or ignores.

The QEMU process (whose memory is read at /proc/<pid>/mem) is found from the monitor: the
host thread id of a vCPU (`query-cpus-fast`) belongs to it, and its command line must carry
the domain's UUID, so a thread id from another pid namespace (a containerized libvirtd) is
refused, not followed to an unrelated process.

The connection URI: `--connect` (the CLI sets $CLOUDVMI_LIBVIRT_URI), else `libvirt_uri` in
the settings file, else qemu:///system. This module is also the finder `libvirt` (entry point
`cloudvmi.finders`): `libvirt:NAME`, or NAME when no finder before it knows it.
"""

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any

from cloudvmi.config import setting
from cloudvmi.control.discovery import Found
from cloudvmi.control.qmp import QMPError
from cloudvmi.errors import CloudVMIError, MissingDependency

DEFAULT_URI = "qemu:///system"
URI_ENV = "CLOUDVMI_LIBVIRT_URI"
MAX_NAME = 256  # domain names are short; a longer one is refused before libvirt sees it


def uri() -> str:
    """The libvirt connection CloudVMI uses: $CLOUDVMI_LIBVIRT_URI, `libvirt_uri` in the
    settings file, or qemu:///system."""
    chosen = os.environ.get(URI_ENV) or setting("libvirt_uri") or DEFAULT_URI
    if not isinstance(chosen, str):
        raise CloudVMIError(f"libvirt_uri in the settings must be a string, not {chosen!r}")
    return chosen


@functools.cache
def _libvirt():
    """The libvirt modules, with libvirt's own printing of every error to stderr silenced
    (its errors reach us as exceptions)."""
    try:
        import libvirt
        import libvirt_qemu
    except ImportError as exc:
        raise MissingDependency("libvirt-python is needed for libvirt domains: "
                                "pip install 'cloudvmi[libvirt]'") from exc
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt, libvirt_qemu


def _connect(connect_uri: str):
    libvirt, _ = _libvirt()
    try:
        return libvirt.open(connect_uri)
    except libvirt.libvirtError as exc:
        raise CloudVMIError(f"cannot connect to libvirt at {connect_uri}: "
                            f"{exc.get_error_message()}") from exc


def domain_key(uuid: str) -> str:
    """The domain on this host, whichever URI reached it (qemu:///system and
    qemu+unix:///system are one libvirtd): its UUID."""
    return f"libvirt:{uuid}"


class LibvirtMonitor:
    """A running domain's QMP through libvirt, with control/qmp.py's interface."""

    def __init__(self, name: str, connect_uri: str | None = None) -> None:
        libvirt, self._qemu = _libvirt()
        self.uri = connect_uri or uri()
        self.name = name
        self._conn = _connect(self.uri)
        try:
            self._dom = self._conn.lookupByName(name)
            if not self._dom.isActive():
                raise CloudVMIError(f"libvirt domain {name!r} is not running")
            self.uuid = self._dom.UUIDString()
        except libvirt.libvirtError as exc:
            self._conn.close()
            raise CloudVMIError(f"libvirt domain {name!r}: {exc.get_error_message()}") from exc
        except BaseException:
            self._conn.close()
            raise

    @property
    def key(self) -> str:
        return domain_key(self.uuid)

    def execute(self, command: str, **arguments: Any) -> Any:
        libvirt, _ = _libvirt()
        request = {"execute": command, **({"arguments": arguments} if arguments else {})}
        try:
            reply = json.loads(self._qemu.qemuMonitorCommand(self._dom, json.dumps(request), 0))
        except libvirt.libvirtError as exc:
            raise QMPError(f"QMP {command} {json.dumps(arguments)} through libvirt: "
                           f"{exc.get_error_message()}") from exc
        except ValueError as exc:
            raise QMPError(f"QMP {command}: libvirt passed back no JSON: {exc}") from exc
        if not isinstance(reply, dict) or ("return" not in reply and "error" not in reply):
            raise QMPError(f"QMP {command}: unexpected reply {str(reply)[:200]}")
        if "error" in reply:
            error = reply["error"]
            text = error.get("desc", error) if isinstance(error, dict) else error
            raise QMPError(f"QMP {command} {json.dumps(arguments)}: {text}")
        return reply["return"]

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command (for the few facts QMP has no command for)."""
        return self.execute("human-monitor-command", **{"command-line": command_line})

    def pid(self) -> int:
        """The domain's QEMU process: the process of a vCPU thread, if its command line
        carries the domain's UUID."""
        for cpu in self.execute("query-cpus-fast"):
            tid = cpu.get("thread-id") if isinstance(cpu, dict) else None
            if not isinstance(tid, int) or tid <= 0:
                continue
            try:
                status = Path(f"/proc/{tid}/status").read_text()
                pid = int(next(line.split()[1] for line in status.splitlines()
                               if line.startswith("Tgid:")))
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except (OSError, StopIteration, ValueError, IndexError):
                continue
            if self.uuid.encode() in argv:
                return pid
        raise CloudVMIError(f"libvirt domain {self.name!r}: its QEMU process is not in this "
                            "host's pid namespace (or has gone)")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a broken one has nothing left to close
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "LibvirtMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the finder `libvirt` --------------------------------------------------------------------
def _found(name: str, connect_uri: str, uuid: str) -> Found:
    return Found(name, "libvirt", "", None, f"libvirt domain {uuid}",
                 connect=functools.partial(LibvirtMonitor, name, connect_uri),
                 key=domain_key(uuid))


def find(name: str, strict: bool = False) -> Found | None:
    """The running domain NAME of the configured connection. Without libvirt-python or a
    reachable libvirtd there is none (another finder may know the name), unless STRICT (the
    name was `libvirt:NAME`): then the reason is the error."""
    if not name or len(name) > MAX_NAME:
        return None
    try:
        libvirt, _ = _libvirt()
        conn = _connect(connect_uri := uri())
    except CloudVMIError:
        if strict:
            raise
        return None
    try:
        dom = conn.lookupByName(name)
        if not dom.isActive():
            raise CloudVMIError(f"libvirt domain {name!r} is not running")
        return _found(dom.name(), connect_uri, dom.UUIDString())
    except libvirt.libvirtError as exc:
        if strict:
            raise CloudVMIError(f"libvirt domain {name!r} at {connect_uri}: "
                                f"{exc.get_error_message()}") from exc
        return None
    finally:
        conn.close()


def running() -> list[Found]:
    """The running domains of the configured connection (none without libvirt)."""
    try:
        libvirt, _ = _libvirt()
        conn = _connect(connect_uri := uri())
    except CloudVMIError:
        return []
    try:
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return sorted((_found(d.name(), connect_uri, d.UUIDString()) for d in domains),
                      key=lambda f: f.name)
    except libvirt.libvirtError:
        return []
    finally:
        conn.close()

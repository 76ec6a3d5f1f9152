"""The VMs a node's agent serves: those its finders know (the lab's guests) and QEMUs whose
QMP sockets sit in the configured directories. Each is attached once, on first use, and used
under its own lock (QMP and the gdbstub serve one client at a time)."""

import contextlib
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.control import discovery
from cloudvmi.errors import CloudVMIError
from cloudvmi.vm import VM, attach


class UnknownVM(CloudVMIError):
    """No VM of that name on this node."""


@dataclass
class Entry:
    name: str
    kind: str  # the finder's name ("lab") or "qmp"
    target: str  # what attach() takes
    detail: str


class Registry:
    def __init__(self, finders: list[str], qmp_dirs: list[Path]) -> None:
        self.finders = finders
        self.qmp_dirs = qmp_dirs
        self._vms: dict[str, VM] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def discover(self) -> list[Entry]:
        found: dict[str, Entry] = {}
        for directory in self.qmp_dirs:
            for path in sorted(directory.glob("*")):
                try:
                    if stat.S_ISSOCK(path.stat().st_mode):
                        found[path.stem] = Entry(path.stem, "qmp", str(path), str(path))
                except OSError:
                    continue
        if self.finders:
            for f in discovery.running(self.finders):
                found[f.name] = Entry(f.name, f.kind, f.name, f.detail)
        return sorted(found.values(), key=lambda e: e.name)

    def lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def vm(self, name: str) -> VM:
        """The attached VM (call with its lock held)."""
        vm = self._vms.get(name)
        if vm is not None:
            return vm
        entry = next((e for e in self.discover() if e.name == name), None)
        if entry is None:
            raise UnknownVM(f"no VM {name!r} on this node")
        vm = attach(entry.target, writable=True, finders=self.finders)
        vm.name = name
        try:
            vm.recover_pending()
        except BaseException:
            vm.close()
            raise
        self._vms[name] = vm
        return vm

    def attached(self) -> int:
        return len(self._vms)

    def drop(self, name: str) -> None:
        """Forget a VM whose connection broke (it is attached again on next use)."""
        vm = self._vms.pop(name, None)
        if vm is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                vm.close()

    def close(self) -> None:
        for name in list(self._vms):
            with self.lock(name):
                self.drop(name)

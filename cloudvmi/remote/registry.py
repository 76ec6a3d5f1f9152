"""The VMs a node's agent serves: those its finders know (the lab's guests, libvirt's running
domains), QEMUs whose QMP sockets sit in the configured directories, and memory dump files the
configured globs match (read-only). Each is attached once, on first use, and used under its
own lock (QMP and the gdbstub serve one client at a time). Attached dumps are bounded: past
the bound, the one used least recently is detached (it is attached again when next asked for).

Locks and attached VMs are keyed by the real path of the VM's QMP socket (a libvirt domain:
its UUID), not by the name a client asked for: a VM reachable under two names
(a symlinked socket) is still one VM with one lock. A name that resolves to no VM gets no
lock, and a lock is kept only while it is held or its VM attached, so the table stays as
small as the set of VMs in use.
"""

import contextlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.control import discovery
from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import dumps
from cloudvmi.vm import VM, attach, attach_dump

NAMES_KEPT = 1024  # resolved names remembered; the memory is cleared when it is full


class UnknownVM(CloudVMIError):
    """No VM of that name on this node."""


@dataclass
class Entry:
    name: str
    kind: str  # the finder's name ("lab", "libvirt"), "qmp" or "dump"
    target: str  # what attach() takes
    detail: str
    socket: str = ""  # the real path of its QMP socket, or a finder's key: the VM's key

    @property
    def key(self) -> str:
        return self.socket or self.target


def socket_key(path: str | Path) -> str:
    """The key of the VM behind a QMP socket path: the socket's real path."""
    return os.path.realpath(path)


def _still_there(entry: Entry) -> bool:
    """Whether a resolved entry still holds: its socket is there and, for a socket found in
    a directory, its path still leads to the same real socket; a dump: its file is there; a
    VM with no socket (a libvirt domain) is asked of its finder again."""
    if entry.kind == dumps.KIND:
        return dumps.still_there(entry.target)
    if entry.kind != "qmp" and not entry.socket.startswith("/"):
        try:
            found = discovery.find(entry.target, [entry.kind])
        except CloudVMIError:
            return False
        return found is not None and found.vm_key == entry.socket
    path = entry.target if entry.kind == "qmp" else entry.socket
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    return entry.kind != "qmp" or socket_key(path) == entry.key


@dataclass
class _Slot:
    lock: threading.Lock
    users: int = 0  # threads holding or waiting for the lock


class _Held(contextlib.AbstractContextManager):
    """A VM's lock, taken for the name it was asked by; the entry that name resolved to is
    what vm() and drop() use while it is held (no second lookup that could differ)."""

    def __init__(self, registry: "Registry", entry: Entry, slot: _Slot) -> None:
        self.registry, self.entry, self.slot = registry, entry, slot

    def __enter__(self) -> "_Held":
        try:
            self.slot.lock.acquire()
        except BaseException:
            self.registry._release(self.entry.key, self.slot, locked=False)
            raise
        self.registry._held_entries()[self.entry.name] = self.entry
        return self

    def __exit__(self, *exc: object) -> None:
        self.registry._held_entries().pop(self.entry.name, None)
        self.registry._release(self.entry.key, self.slot, locked=True)


class Registry:
    def __init__(self, finders: list[str], qmp_dirs: list[Path], dump_globs: list[str] = (),
                 max_dumps: int = 1024, dumps_attached: int = 16) -> None:
        self.finders = finders
        self.qmp_dirs = qmp_dirs
        self.dump_globs = list(dump_globs)
        self.max_dumps = max_dumps  # files listed at most (a glob may match many more)
        self.dumps_attached = dumps_attached  # dumps kept attached at once
        self.dumps_over = False  # the globs matched more files than max_dumps
        self._vms: dict[str, VM] = {}  # by socket key
        self._slots: dict[str, _Slot] = {}  # by socket key
        self._names: dict[str, Entry] = {}  # names resolved before (at most NAMES_KEPT)
        self._guard = threading.Lock()
        self._local = threading.local()
        self._dump_use: dict[str, int] = {}  # attached dump key -> when last used (a count)
        self._uses = 0

    def discover(self) -> list[Entry]:
        found: dict[str, Entry] = {}
        for directory in self.qmp_dirs:
            for path in sorted(directory.glob("*")):
                try:
                    if stat.S_ISSOCK(path.stat().st_mode):
                        found[path.stem] = Entry(path.stem, "qmp", str(path), str(path),
                                                 socket_key(path))
                except OSError:
                    continue
        if self.finders:
            for f in discovery.running(self.finders):
                found[f.name] = Entry(f.name, f.kind, f.target, f.detail, f.vm_key)
        if self.dump_globs:  # a dump never takes a running VM's name
            files, self.dumps_over = dumps.find(self.dump_globs, self.max_dumps,
                                                frozenset(found))
            for d in files:
                found[d.name] = Entry(d.name, dumps.KIND, d.path,
                                      f"read-only memory dump, {d.size >> 20} MiB")
        return sorted(found.values(), key=lambda e: e.name)

    def read_only(self, name: str) -> bool:
        """Whether NAME is a dump (UnknownVM if no VM has that name)."""
        return self.resolve(name).kind == dumps.KIND

    def resolve(self, name: str) -> Entry:
        """The VM NAME names now (the one this thread holds the lock of, if it does). A name
        seen before is checked with a stat and a realpath, not a whole discovery (finders
        cost a millisecond and more, on every call)."""
        held = self._held_entries().get(name)
        if held is not None:
            return held
        cached = self._names.get(name)
        if cached is not None and _still_there(cached):
            return cached
        entry = next((e for e in self.discover() if e.name == name), None)
        with self._guard:
            if entry is None:
                self._names.pop(name, None)
            else:
                if len(self._names) >= NAMES_KEPT:
                    self._names.clear()
                self._names[name] = entry
        if entry is None:
            raise UnknownVM(f"no VM {name!r} on this node")
        return entry

    def lock(self, name: str) -> contextlib.AbstractContextManager:
        """The lock of the VM NAME resolves to (UnknownVM if none: no lock is made)."""
        entry = self.resolve(name)
        with self._guard:
            slot = self._slots.setdefault(entry.key, _Slot(threading.Lock()))
            slot.users += 1
        return _Held(self, entry, slot)

    def vm(self, name: str) -> VM:
        """The attached VM (call with its lock held)."""
        entry = self.resolve(name)
        vm = self._vms.get(entry.key)
        if entry.kind == dumps.KIND:
            with self._guard:
                self._uses += 1
                self._dump_use[entry.key] = self._uses
        if vm is not None:
            return vm
        if entry.kind == dumps.KIND:
            self._evict_dumps(keep=self.dumps_attached - 1)
            try:
                vm = attach_dump(entry.target)
            except BaseException:
                self._dump_use.pop(entry.key, None)
                raise
            vm.name = name
            self._vms[entry.key] = vm
            return vm
        vm = attach(entry.target, writable=True, finders=self.finders)
        vm.name = name
        try:
            vm.recover_pending()
        except BaseException:
            vm.close()
            raise
        self._vms[entry.key] = vm
        return vm

    def attached(self) -> int:
        return len(self._vms)

    def _evict_dumps(self, keep: int) -> None:
        """Detach the dumps used least recently until at most KEEP stay attached; a dump in
        use (its lock held by another call) stays."""
        with self._guard:
            attached = sorted((used, key) for key, used in self._dump_use.items()
                              if key in self._vms)
        held = {e.key for e in self._held_entries().values()}
        for _, key in attached[:max(0, len(attached) - keep)]:
            if key in held:
                continue
            with self._guard:
                slot = self._slots.setdefault(key, _Slot(threading.Lock()))
                slot.users += 1
            if not slot.lock.acquire(blocking=False):
                self._release(key, slot, locked=False)
                continue
            self._forget(key)
            self._release(key, slot, locked=True)

    def locks(self) -> int:
        """How many VM locks are kept (held, waited for, or of an attached VM)."""
        return len(self._slots)

    def drop(self, name: str) -> None:
        """Forget a VM whose connection broke (it is attached again on next use). A name
        that no longer resolves (its socket is gone) drops the VMs whose sockets are gone."""
        try:
            keys = [self.resolve(name).key]
        except UnknownVM:
            keys = [k for k in list(self._vms) if k.startswith("/") and not os.path.exists(k)]
        for key in keys:
            self._forget(key)

    def close(self) -> None:
        for key in list(self._vms):
            with self._guard:
                slot = self._slots.setdefault(key, _Slot(threading.Lock()))
                slot.users += 1
            with slot.lock:
                self._forget(key)
            self._release(key, slot, locked=False)

    def _forget(self, key: str) -> None:
        vm = self._vms.pop(key, None)
        self._dump_use.pop(key, None)
        with self._guard:  # an unused lock of a VM no longer attached is not kept
            slot = self._slots.get(key)
            if slot is not None and slot.users == 0:
                del self._slots[key]
        if vm is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                vm.close()

    # -- lock bookkeeping ---------------------------------------------------------------------
    def _held_entries(self) -> dict[str, Entry]:
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = {}
        return held

    def _release(self, key: str, slot: _Slot, locked: bool) -> None:
        """One user fewer; the slot goes once nobody uses it and its VM is not attached."""
        with self._guard:
            slot.users -= 1
            if slot.users == 0 and key not in self._vms and self._slots.get(key) is slot:
                del self._slots[key]
        if locked:
            slot.lock.release()

"""One VM object over any memory source: a lab guest, a running QEMU, or a dump file.

This is the interface the CLI, the applications and (later) the remote client share.
"""

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cloudvmi.control.discovery import qemu_pid, shared_ram_file
from cloudvmi.control.qmp import QMP
from cloudvmi.errors import CloudVMIError
from cloudvmi.lab.paths import sub
from cloudvmi.memory.base import PhysicalMemory, Region
from cloudvmi.memory.elfdump import DumpInfo, is_elf_dump, open_elf_dump
from cloudvmi.memory.layout import host_regions, parse_mtree
from cloudvmi.memory.mapped import MappedFileMemory
from cloudvmi.memory.procmem import ProcessMemory


class VM:
    """A guest we introspect: physical memory, optional QMP control, and its Linux kernel."""

    def __init__(self, name: str, phys: PhysicalMemory, qmp: QMP | None = None,
                 dump: DumpInfo | None = None, profile_cache: Path | None = None) -> None:
        self.name = name
        self.phys = phys
        self.qmp = qmp
        self.dump = dump
        self.profile_cache = profile_cache
        self._linux = None

    @property
    def live(self) -> bool:
        return self.qmp is not None

    @property
    def linux(self):
        """The guest's Linux kernel views, located on first use (profile cached per build)."""
        if self._linux is None:
            from cloudvmi.os.linux.api import Linux

            self._linux = Linux(self.phys, self.profile_cache, live=self.live,
                                snapshot=self.snapshot)
        return self._linux

    # -- control ---------------------------------------------------------------------------
    def running(self) -> bool:
        return bool(self.qmp and self.qmp.execute("query-status")["running"])

    def pause(self) -> None:
        if self.qmp:
            self.qmp.execute("stop")

    def resume(self) -> None:
        if self.qmp:
            self.qmp.execute("cont")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Hold the guest still while a view reads it; leave a guest paused by others paused."""
        was_running = self.running()
        if was_running:
            self.pause()
        try:
            yield
        finally:
            if was_running:
                self.resume()

    # -- memory ----------------------------------------------------------------------------
    def read_physical(self, address: int, size: int) -> bytes:
        return self.phys.read(address, size)

    def write_physical(self, address: int, data: bytes) -> None:
        self.phys.write(address, data)

    def close(self) -> None:
        if self.qmp:
            self.qmp.close()
        self.phys.close()

    def __enter__(self) -> "VM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_profile_cache() -> Path:
    return sub("profiles")


def attach(target: str, writable: bool = False, profile_cache: Path | None | str = "default") -> VM:
    """Attach to TARGET: a lab guest name, a QMP socket path, or a memory dump file."""
    cache = default_profile_cache() if profile_cache == "default" else (
        Path(profile_cache) if profile_cache else None)
    path = Path(target)
    if path.exists():
        mode = os.stat(path).st_mode
        if stat.S_ISSOCK(mode):
            return _attach_qmp(str(path), target, writable, cache)
        return _attach_dump(path, cache)
    from cloudvmi.lab import guest as lab

    try:
        g = lab.get(target)
    except CloudVMIError:
        raise CloudVMIError(f"{target!r} is not a lab guest, a QMP socket or a dump file") from None
    if not g.running():
        raise CloudVMIError(f"lab guest {target!r} is not running")
    return _attach_qmp(str(g.qmp_path), target, writable, cache)


def _attach_qmp(socket_path: str, name: str, writable: bool, cache: Path | None) -> VM:
    qmp = QMP(socket_path)
    try:
        _, regions = parse_mtree(qmp.hmp("info mtree -f"))
        shm = shared_ram_file(qmp)
        if shm and os.path.exists(shm):
            phys: PhysicalMemory = MappedFileMemory(shm, regions, writable=writable)
        else:
            phys = ProcessMemory(qemu_pid(socket_path), host_regions(qmp, regions), writable)
    except BaseException:
        qmp.close()
        raise
    return VM(name, phys, qmp=qmp, profile_cache=cache)


def _attach_dump(path: Path, cache: Path | None) -> VM:
    if is_elf_dump(path):
        phys, info = open_elf_dump(path)
        return VM(path.name, phys, dump=info, profile_cache=cache)
    return VM(path.name, MappedFileMemory(path, [Region(0, path.stat().st_size, 0)]),
              profile_cache=cache)

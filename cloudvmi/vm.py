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
                 dump: DumpInfo | None = None, profile_cache: Path | None = None,
                 gdb_address: tuple[str, int] | None = None) -> None:
        self.name = name
        self.phys = phys
        self.qmp = qmp
        self.dump = dump
        self.profile_cache = profile_cache
        self.gdb_address = gdb_address
        self._linux = None
        self._gdb = None
        self._guest = None

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

    @property
    def guest(self):
        """Changes made inside the guest by system calls run in a hijacked guest thread:
        `vm.guest.kill(pid)`, `.read_file(path)`, `.write_file(path, data)`, `.run(argv)`..."""
        if self._guest is None:
            from cloudvmi.control.gdbserver import ensure_gdbstub
            from cloudvmi.control.gdbstub import GDBStub
            from cloudvmi.write.injector import Injector
            from cloudvmi.write.operations import GuestOps

            if self.qmp is None:
                raise CloudVMIError(f"{self.name} is not a running VM: nothing to change")
            if not self.phys.writable:
                raise CloudVMIError("attach with writable=True to change the guest")
            self._check_running()  # connecting would stop it, and closing would resume it
            host, port = self.gdb_address or ensure_gdbstub(self.qmp)
            self._gdb = GDBStub.connect(host, port)
            injector = Injector(self.linux.kernel, self._gdb, before_hijack=self._check_running,
                                journal=self._journal_path())
            injector.recover()  # a thread left hijacked by a process that died is put back
            if not self._gdb.running:
                self._gdb.cont()  # connecting stopped the VM; operations stop it when they must
            self._guest = GuestOps(injector)
        return self._guest

    def recover_pending(self) -> bool:
        """If an earlier process died while it held a thread of this VM hijacked, put the
        thread back now (the guest would otherwise stay stopped or run our code)."""
        if self.qmp is None or not self.phys.writable or not self._journal_path().exists():
            return False
        self.guest  # noqa: B018 - creating the operations runs the recovery
        return True

    def _journal_path(self) -> Path:
        """Where injections into this VM are journaled: one file per QMP socket."""
        import hashlib

        key = hashlib.sha256(os.path.realpath(self.qmp.socket_path).encode()).hexdigest()[:20]
        return sub("journal") / f"{key}.json"

    def _check_running(self) -> None:
        status = self.qmp.execute("query-status")
        if status["status"] not in ("running", "debug"):
            raise CloudVMIError(f"{self.name} is {status['status']} (paused by someone else): "
                                "resume it first; CloudVMI will not run it behind their back")

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

    def _space(self, pid: int | None):
        kernel = self.linux.kernel
        if pid is None:
            return kernel.space
        reader = self.linux.task_reader()  # layouts compiled once per kernel, not per call
        for p in self.linux.processes().items:
            if p.pid == pid:
                mm = reader.task.read(kernel, p.address)["mm"]
                if not mm:
                    raise CloudVMIError(f"process {pid} is a kernel thread: no user memory")
                return kernel.user_space(reader.mm.read(kernel, mm)["pgd"])
        raise CloudVMIError(f"no process {pid} in {self.name}")

    def read_virtual(self, address: int, size: int, pid: int | None = None) -> bytes:
        """Read guest-virtual memory: the kernel's, or process PID's."""
        return self._space(pid).read(address, size)

    def write_virtual(self, address: int, data: bytes, pid: int | None = None) -> None:
        """Write guest-virtual memory directly (no syscall): only pages already present."""
        if not self.phys.writable:
            raise CloudVMIError("attach with writable=True to write guest memory")
        with self.snapshot():
            self._space(pid).write(address, data)

    def close(self) -> None:
        if self._gdb is not None:
            self._gdb.close()
            self._gdb = None
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
    return _attach_qmp(str(g.qmp_path), target, writable, cache,
                       ("127.0.0.1", g.gdb_port))


def _attach_qmp(socket_path: str, name: str, writable: bool, cache: Path | None,
                gdb_address: tuple[str, int] | None = None) -> VM:
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
    return VM(name, phys, qmp=qmp, profile_cache=cache, gdb_address=gdb_address)


def _attach_dump(path: Path, cache: Path | None) -> VM:
    if is_elf_dump(path):
        phys, info = open_elf_dump(path)
        return VM(path.name, phys, dump=info, profile_cache=cache)
    return VM(path.name, MappedFileMemory(path, [Region(0, path.stat().st_size, 0)]),
              profile_cache=cache)

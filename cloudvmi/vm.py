"""One VM object over any memory source: a running QEMU (found by a finder, such as the lab
or libvirt, or by its QMP socket) or a dump file. It implements
`cloudvmi.interface.VMInterface`, as the remote VM does."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cloudvmi.capability import vm_call
from cloudvmi.errors import CloudVMIError, GuestMemoryError
from cloudvmi.memory.base import PhysicalMemory, Region
from cloudvmi.memory.mapped import MappedFileMemory
from cloudvmi.paths import cache_sub, state_sub

if TYPE_CHECKING:  # imported where used: reading a dump needs no QMP, write layer or exec
    from cloudvmi.control.qmp import QMP
    from cloudvmi.memory.elfdump import DumpInfo
    from cloudvmi.redirect.program import Completed

MAX_READ = 1 << 30  # one memory read


@dataclass
class KernelProfile:
    """What a remote client needs to build `vm.linux.kernel` itself: the profile (symbols,
    where BTF sits), the BTF blob, where this boot put the kernel, and the RAM layout."""

    profile: dict
    btf: bytes
    text_phys: int
    text_virt: int
    levels: int
    arch: str
    regions: list[list[int]]  # [start, size] of each RAM region


class VM:
    """A guest we introspect: physical memory, optional QMP control, and its Linux kernel.
    QMP is a monitor with control/qmp.py's interface (QMP itself, or libvirt's passthrough)."""

    def __init__(self, name: str, phys: PhysicalMemory, qmp: QMP | None = None,
                 dump: DumpInfo | None = None, profile_cache: Path | None = None,
                 gdb_address: tuple[str, int] | str | None = None,
                 symbols: str | None = None) -> None:
        self.name = name
        self.symbols = symbols  # kernel types for a guest without BTF: file or directory
        self.phys = phys
        self.qmp = qmp
        self.dump = dump
        self.profile_cache = profile_cache
        self.gdb_address = gdb_address  # a stub the VM was started with: (host, port) or path
        self._gdb_started = None  # the stub we started (removed again when we detach)
        self._linux = None
        self._gdb = None
        self._guest = None
        self._arch = None

    @property
    def arch(self):
        """The guest's CPU architecture (cloudvmi.arch.Arch), found, never assumed: from QEMU's
        query-target, a dump's ELF machine, or for a raw RAM image the kernel's own note."""
        if self._arch is None:
            self._arch = _detect_arch(self)
        return self._arch

    @property
    def live(self) -> bool:
        return self.qmp is not None

    @property
    def linux(self):
        """The guest's Linux kernel views, located on first use (profile cached per build)."""
        if self._linux is None:
            from cloudvmi.os import probe

            self._linux = probe.operating_system(self)
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
            # The architecture first: attaching writable again would not help.
            if not self.arch.writable:
                raise CloudVMIError(f"changing {self.arch.name} guests is not available yet "
                                    "(no system-call injection for this architecture)")
            if not self.phys.writable:
                raise CloudVMIError("attach with writable=True to change the guest")
            if not self._journal_path().exists():  # else we stopped it: recovery resumes it
                self._check_running()  # connecting would stop it, and closing resume it
            address = self.gdb_address
            if address is None:
                address, started = ensure_gdbstub(self.qmp, self.qmp.key)
                self._gdb_started = address if started else None
            with self._pause_recorded():  # connecting stops the VM until we let it run
                self._gdb = (GDBStub.connect(address) if isinstance(address, str)
                             else GDBStub.connect(*address))
                injector = Injector(self.linux.kernel, self._gdb,
                                    before_hijack=self._check_running,
                                    journal=self._journal_path(), run=self._run_identity())
                injector.recover()  # a thread left hijacked by a process that died
                if not self._gdb.running:
                    self._gdb.cont()  # operations stop it again when they must
            self._guest = GuestOps(injector)
        return self._guest

    def exec(self, argv: list[str], stdin: bytes | None = b"", timeout: float = 60.0,
             cwd: str = "/", capture: bool = True, channel: str = "stop") -> Completed:
        """Run an unmodified host program against this guest: its system calls on guest
        state run inside the guest. `status, out, err = vm.exec(["ls", "-l", "/etc"])`.
        CHANNEL "persistent" runs them through a guest helper kept until close()."""
        from cloudvmi.redirect.program import run_program

        check_exec_args(timeout, cwd)
        with self.guest.channel(channel) as ch:
            return run_program(ch, argv, stdin, capture, timeout, cwd)

    def recover_pending(self) -> bool:
        """If an earlier process died while it held a thread of this VM hijacked, put the
        thread back now (the guest would otherwise stay stopped or run our code)."""
        if self.qmp is None or not self.phys.writable or not self._journal_path().exists():
            return False
        self.guest  # noqa: B018 - creating the operations runs the recovery
        return True

    def _run_identity(self) -> dict:
        """What tells this run of the VM from another: the QEMU process (pid and start time),
        the host's boot, and the guest kernel's boot (its KASLR slide and build)."""
        pid = self.qmp.pid()
        try:
            started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except (OSError, IndexError):
            started = boot = "?"
        import hashlib

        kernel = self.linux.kernel
        return {"qemu_pid": pid, "qemu_started": started, "host_boot": boot,
                "guest_text": kernel.text_virt,
                "guest_build": hashlib.sha256(kernel.profile.banner).hexdigest()[:16]}

    def _journal_path(self) -> Path:
        """Where injections into this VM are journaled: one file per VM (its monitor's key)."""
        return state_sub("journal") / f"{_vm_key(self.qmp.key)}.json"

    def _check_running(self) -> None:
        status = self.qmp.execute("query-status")
        if status["status"] not in ("running", "debug"):
            raise CloudVMIError(f"{self.name} is {status['status']} (paused by someone else): "
                                "resume it first; CloudVMI will not run it behind their back")

    # -- control ---------------------------------------------------------------------------
    @vm_call()
    def running(self) -> bool:
        """Whether the VM's vCPUs are running (a dump never is)."""
        return bool(self.qmp and self.qmp.execute("query-status")["running"])

    @vm_call(permission="operate", live=True)
    def pause(self) -> None:
        """Stop the VM's vCPUs."""
        if self.qmp:
            self.qmp.execute("stop")

    @vm_call(permission="operate", live=True)
    def resume(self) -> None:
        """Let the VM's vCPUs run again."""
        if self.qmp:
            self.qmp.execute("cont")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Hold the guest still while a view reads it; leave a guest paused by others paused.
        The pause is recorded first, so that if this process dies while it holds the guest,
        the next attach resumes it."""
        if self.qmp is None or not self.running():
            yield
            return
        with self._pause_recorded():
            self.pause()
            try:
                yield
            finally:
                self.resume()

    @contextlib.contextmanager
    def _pause_recorded(self) -> Iterator[None]:
        """While this process holds the VM stopped, say so on disk (the next attach resumes
        a VM whose holder died)."""
        marker = _pause_marker(self.qmp.key)
        _write_marker(marker, str(os.getpid()))
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)

    # -- memory ----------------------------------------------------------------------------
    @vm_call()
    def read_physical(self, address: int, size: int) -> bytes:
        """Guest-physical memory."""
        _check_size(size)
        return self.phys.read(address, size)

    @vm_call(permission="write")
    def write_physical(self, address: int, data: bytes) -> None:
        """Write guest-physical memory directly."""
        if not self.phys.writable:
            raise CloudVMIError("attach with writable=True to write guest memory")
        self.phys.write(address, data)

    @vm_call()
    def memory_regions(self) -> list[list[int]]:
        """The guest's RAM as [start, size] regions of guest-physical addresses."""
        return [[r.start, r.size] for r in self.phys.regions()]

    def _space(self, pid: int | None):
        kernel = self.linux.kernel
        if pid is None:
            return kernel.space
        from cloudvmi.os.linux.views.processes import address_space_of

        try:
            return address_space_of(kernel, pid)
        except GuestMemoryError as exc:
            raise CloudVMIError(f"{self.name}: {exc}") from exc

    @vm_call()
    def read_virtual(self, address: int, size: int, pid: int | None = None) -> bytes:
        """Guest-virtual memory: the kernel's, or process PID's."""
        _check_size(size)
        return self._space(pid).read(address, size)

    @vm_call(permission="write")
    def write_virtual(self, address: int, data: bytes, pid: int | None = None) -> None:
        """Write guest-virtual memory directly (no syscall): only pages already present."""
        if not self.phys.writable:
            raise CloudVMIError("attach with writable=True to write guest memory")
        with self.snapshot():
            self._space(pid).write(address, data)

    @vm_call()
    def kernel_profile(self) -> KernelProfile:
        """The located kernel's profile and BTF, so a remote client can read typed objects."""
        k = self.linux.kernel
        return KernelProfile(profile=k.profile.to_json(), btf=k.btf.data,
                             text_phys=k.text_phys, text_virt=k.text_virt, levels=k.levels,
                             arch=k.arch.name, regions=self.memory_regions())

    def close(self) -> None:
        """Detach: persistent-channel helpers stop, the debugger and QMP let go."""
        try:
            if self._guest is not None:
                self._guest.close()
        finally:
            self._guest = None
            if self._gdb is not None:
                self._gdb.close()
                self._gdb = None
            if self._gdb_started is not None and self.qmp:
                from cloudvmi.control.gdbserver import stop_gdbstub

                with contextlib.suppress(CloudVMIError, OSError):
                    stop_gdbstub(self.qmp, self._gdb_started)  # no debugger stays open
                self._gdb_started = None
            if self.qmp:
                self.qmp.close()
            self.phys.close()
            from cloudvmi.os.linux.profile import ProfileStore

            ProfileStore(self.profile_cache).flush()  # a profile still being cached lands

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _detect_arch(vm: VM):
    from cloudvmi import arch as arches

    try:
        if vm.qmp is not None:
            return arches.from_qemu(vm.qmp.execute("query-target")["arch"])
        if vm.dump is not None and vm.dump.machine:
            return arches.from_elf_machine(vm.dump.machine)
    except ValueError as exc:
        raise CloudVMIError(f"{vm.name}: {exc}") from None
    from cloudvmi.os.linux.vmcoreinfo import find_vmcoreinfo

    for note in find_vmcoreinfo(vm.phys):  # a raw image: the kernel's note tells its layout
        if note.number("kimage_voffset") is not None:
            return arches.get("arm64")
        if note.number("phys_base") is not None:
            return arches.get("x86_64")
    return arches.get("x86_64")  # a raw image without a note: x86-64's the only guess left


def check_exec_args(timeout: float, cwd: str) -> None:
    """vm.exec's TIMEOUT within the bounds `run` declares, and its guest CWD absolute (the
    program's relative paths resolve against it): checked before a guest thread is held."""
    from cloudvmi.write.recipes.common import absolute_path
    from cloudvmi.write.recipes.run import TIMEOUT

    for name, rule, value in (("timeout", TIMEOUT, timeout), ("cwd", absolute_path, cwd)):
        try:
            rule(value)
        except ValueError as exc:
            raise ValueError(f"exec: {name}: {exc}") from None


def _vm_key(key: str) -> str:
    """A file name for the VM a monitor's key names (a QMP socket's real path, a domain)."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _pause_marker(key: str) -> Path:
    return state_sub("paused") / f"{_vm_key(key)}.pid"


def _write_marker(path: Path, text: str) -> None:
    """Not fsync'd: the marker outlives this process in the page cache, which is all it is
    for (a host crash takes the paused VM with it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _resume_if_left_paused(qmp) -> None:
    """A process that paused this VM to read it and died before resuming it left a marker:
    resume the VM (only if that process is gone and the VM is still paused)."""
    from cloudvmi.control.discovery import process_alive

    marker = _pause_marker(qmp.key)
    try:
        owner = int(marker.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return
    if owner and owner != os.getpid() and process_alive(owner):
        return
    if qmp.execute("query-status")["status"] == "paused":
        qmp.execute("cont")
    marker.unlink(missing_ok=True)


def _check_size(size: int) -> None:
    if not 0 <= size <= MAX_READ:
        raise ValueError(f"read of {size} bytes: at most {MAX_READ} at once")


def default_profile_cache() -> Path:
    return cache_sub("profiles")


def attach(target: str, writable: bool = False, profile_cache: Path | None | str = "default",
           finders: list[str] | None = None, symbols: str | None = None) -> VM:
    """Attach to TARGET: a QMP socket path, a memory dump file, or a VM name a finder knows
    (a lab guest's name, a libvirt domain's: `libvirt:web-1`). SYMBOLS: where the types of a
    kernel without BTF are (a BTF file, an ISF, a vmlinux or a directory of them), before
    $CLOUDVMI_SYMBOLS and the settings."""
    vm = _attach(target, writable, profile_cache, finders)
    vm.symbols = symbols or vm.symbols
    return vm


def _attach(target: str, writable: bool, profile_cache: Path | None | str,
            finders: list[str] | None) -> VM:
    cache = default_profile_cache() if profile_cache == "default" else (
        Path(profile_cache) if profile_cache else None)
    path = Path(target)
    if path.exists():
        mode = os.stat(path).st_mode
        if stat.S_ISSOCK(mode):
            from cloudvmi.control.qmp import QMP

            return _attach_monitor(QMP(str(path)), target, writable, cache)
        if not stat.S_ISREG(mode) and not stat.S_ISBLK(mode):
            raise CloudVMIError(f"{target} is neither a QMP socket nor a memory dump file")
        return _attach_dump(path, cache)
    from cloudvmi.control import discovery

    found = discovery.find(target, finders)
    if found is None:
        raise CloudVMIError(f"{target!r} is not a known VM, a QMP socket or a dump file")
    vm = _attach_monitor(found.open_monitor(), target, writable, cache, found.gdb)
    vm.symbols = found.symbols
    return vm


def _attach_monitor(qmp, name: str, writable: bool, cache: Path | None,
                    gdb_address: tuple[str, int] | str | None = None) -> VM:
    """A live VM over its monitor QMP (QMP's interface): RAM from its shared file if it has
    one, else from the QEMU process."""
    from cloudvmi.control.discovery import shared_ram_file
    from cloudvmi.memory.layout import host_regions, parse_mtree
    from cloudvmi.memory.procmem import ProcessMemory

    try:
        _resume_if_left_paused(qmp)
        _, regions = parse_mtree(qmp.hmp("info mtree -f"))
        shm = shared_ram_file(qmp)
        if shm and os.path.exists(shm):
            phys: PhysicalMemory = MappedFileMemory(shm, regions, writable=writable)
        else:
            phys = ProcessMemory(qmp.pid(), host_regions(qmp, regions), writable)
    except BaseException:
        qmp.close()
        raise
    return VM(name, phys, qmp=qmp, profile_cache=cache, gdb_address=gdb_address)


def attach_dump(path: str | Path, profile_cache: Path | None | str = "default") -> VM:
    """A memory dump file, read-only, and nothing else: a path that is not a regular file
    (a socket put there since it was listed) is refused, never attached as a live VM."""
    cache = default_profile_cache() if profile_cache == "default" else (
        Path(profile_cache) if profile_cache else None)
    path = Path(path)
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError as exc:
        raise CloudVMIError(f"cannot open dump {path}: {exc.strerror}") from None
    if not regular:
        raise CloudVMIError(f"{path} is not a memory dump file")
    return _attach_dump(path, cache)


def _attach_dump(path: Path, cache: Path | None) -> VM:
    from cloudvmi.memory.elfdump import is_elf_dump, open_elf_dump

    if is_elf_dump(path):
        phys, info = open_elf_dump(path)
        return VM(path.name, phys, dump=info, profile_cache=cache)
    return VM(path.name, MappedFileMemory(path, [Region(0, path.stat().st_size, 0)]),
              profile_cache=cache)

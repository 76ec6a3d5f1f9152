"""The syscall injection engine: run system calls inside the guest, in a
hijacked user thread, and put the thread back exactly as it was.

How a thread is taken (DRAKVUF's way, with hardware breakpoints that write no guest memory):
stop the VM; if a vCPU is in user mode in a suitable process, take it there; otherwise break
on the kernel's syscall entry, then on the user address the syscall returns to, and take the
thread at that clean point. Single calls execute the `syscall` instruction already in the
process's vDSO; sequences run in a private mapping of our own (batch.py). Every breakpoint hit
is checked against the thread's address space (page-table root) and task; every wait has a
deadline; the registers are restored on every path and compared with the saved ones.
"""

import time
from contextlib import suppress
from pathlib import Path

from cloudvmi.control.gdbstub import GDBStub, GDBStubError, GDBStubTimeout
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.write import batch as batch_mod
from cloudvmi.write.errors import InjectionError, InjectionTimeout, TargetExited, errno_of
from cloudvmi.write.journal import Journal
from cloudvmi.write.target import Target
from cloudvmi.write.threads import ThreadChooser
from cloudvmi.write.vdso import vdso_syscall_offset

TRY_USER_MODE = 40  # interrupts that look for a vCPU already in user mode before breaking


class Injector:
    """Run system calls in a guest. Use as a context manager: hijack(), calls, release()."""

    def __init__(self, kernel: LinuxKernel, gdb: GDBStub, timeout: float = 10.0,
                 require_root: bool = True, before_hijack=None,
                 journal: Path | None = None) -> None:
        self.kernel = kernel
        self.arch = kernel.arch
        self.abi = kernel.arch.syscall
        # What we hold, on disk: if this process dies mid-injection, the next one puts the
        # thread back (recover()).
        self.journal = Journal(journal) if journal is not None else None
        self.before_hijack = before_hijack  # e.g. refuse a VM that someone else paused
        self.gdb = gdb
        self.timeout = timeout
        self.chooser = ThreadChooser(kernel, require_root)
        self.tasks = self.chooser.tasks
        self.mm_context = Record(kernel.btf, "mm_struct", {"vdso": "context.vdso"})
        self.target: Target | None = None
        self._vdso_offset: int | None = None  # of a syscall instruction in the vDSO image
        self.stats = {"syscalls": 0, "batches": 0, "foreign_hits": 0}

    def _root(self, regs: dict[str, int]) -> int:
        return self.arch.page_table_root(regs)

    def _task_of(self, regs: dict[str, int]) -> int | None:
        return self.chooser.task_of(regs)

    def hijack(self, pid: int | None = None) -> Target:
        """Stop the VM with a thread of a suitable process (or of PID) in user mode."""
        if self.target is not None:
            return self.target
        if self.before_hijack is not None:
            self.before_hijack()
        try:
            return self._hijack(pid)
        except BaseException:
            with suppress(GDBStubError):  # nothing was changed: just let the guest run on
                if not self.gdb.running:
                    self.gdb.cont()
            raise

    def _hijack(self, pid: int | None) -> Target:
        deadline = time.monotonic() + self.timeout
        for attempt in range(TRY_USER_MODE):
            self.gdb.interrupt()
            found = self._take_user_mode(pid)
            if found:
                return found
            if time.monotonic() > deadline:
                break
            self.gdb.cont()
            time.sleep(0.001 * min(attempt + 1, 10))
        else:
            self.gdb.interrupt()
        return self._take_at_syscall_return(pid, deadline)

    def _take_user_mode(self, pid: int | None) -> Target | None:
        for thread in self.gdb.threads() or [None]:
            if thread is not None:
                self.gdb.select(thread)
            regs = self.gdb.read_registers()
            if not self.arch.user_mode(regs):
                continue
            task = self._task_of(regs)
            t = self.chooser.suitable(task, pid) if task else None
            if t is not None:
                return self._take(thread, task, t, regs)
        return None

    def _take(self, thread: str | None, task: int, t: dict, regs: dict[str, int]) -> Target:
        mm = self.tasks.mm.read(self.kernel, t["mm"])
        self.target = Target(thread=thread, task=task, pid=t["pid"], tgid=t["tgid"],
                             root=self._root(regs), pgd=mm["pgd"],
                             saved={k: regs[k] for k in self.arch.saved_registers})
        self._write_journal()
        return self.target

    def _write_journal(self) -> None:
        if self.journal is not None and self.target is not None:
            self.journal.write(self.target)

    def _clear_journal(self) -> None:
        if self.journal is not None:
            self.journal.clear()

    def recover(self) -> str | None:
        """Put back a thread that an earlier process left hijacked (it died mid-injection):
        its registers, or its user frame if it is inside a syscall; breakpoints removed."""
        target = self.journal.read() if self.journal is not None else None
        if target is None:
            return None
        self.gdb.interrupt()
        if target.stop_at:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(target.stop_at)
        how = "in-flight"
        for thread in self.gdb.threads() or [None]:
            if thread is not None:
                self.gdb.select(thread)
            regs = self.gdb.read_registers()
            if (self._task_of(regs) == target.task and self._root(regs) == target.root
                    and regs[self.arch.pc] == target.stop_at):
                target.thread, target.parked, how = thread, True, "parked"
                break
        else:
            target.parked = False
        self.target = target
        try:
            self._check_target_alive()
        except TargetExited:
            how = "gone"
        self.release()
        return f"process {target.tgid} put back ({how})"

    def _take_at_syscall_return(self, pid: int | None, deadline: float) -> Target:
        """Break at syscall entry in a suitable process, then where that syscall returns."""
        entry = self.kernel.symbols.get(self.arch.syscall_entry)
        if entry is None:
            raise InjectionError(f"no {self.arch.syscall_entry} symbol to wait for a system "
                                 "call at")
        self.gdb.add_breakpoint(entry)
        try:
            while True:
                thread, regs = self._run_until(entry, deadline, "a system call by a suitable "
                                               f"process{'' if pid is None else f' (pid {pid})'}")
                task = self._task_of(regs)
                t = self.chooser.suitable(task, pid) if task else None
                if t is not None:
                    break
                self._step_over(entry)
        finally:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(entry)
        user_pc, root = regs[self.arch.entry_return_pc], self._root(regs)
        self.gdb.add_breakpoint(user_pc)
        try:
            while True:
                thread, regs = self._run_until(user_pc, deadline, f"pid {t['tgid']} to return "
                                               "from its system call")
                if self._root(regs) == root and self._task_of(regs) == task:
                    break
                self._step_over(user_pc)
        finally:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(user_pc)
        return self._take(thread, task, t, regs)

    # -- running code in the thread --------------------------------------------------------
    def _run_until(self, address: int, deadline: float, what: str):
        """Resume the VM until a vCPU stops at ADDRESS (a breakpoint); (thread, registers)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.gdb.interrupt()
                raise InjectionTimeout(f"timed out waiting for {what}")
            self.gdb.cont()
            try:
                stop = self.gdb.wait_stop(min(remaining, 0.5))
            except GDBStubTimeout:
                self.gdb.interrupt()
                self._check_target_alive()
                continue
            if stop.thread is not None and stop.thread != self.gdb.thread:
                self.gdb.select(stop.thread)
            regs = self.gdb.read_registers()
            if regs[self.arch.pc] == address:
                return stop.thread, regs
            # Stopped for another reason (a signal to the debugger): just go on.

    def _step_over(self, address: int) -> None:
        """Let the vCPU stopped at a breakpoint that was not ours execute past it."""
        self.stats["foreign_hits"] += 1
        self.gdb.remove_breakpoint(address)
        try:
            self.gdb.step()
        finally:
            with suppress(GDBStubError):
                self.gdb.add_breakpoint(address)

    def _check_target_alive(self) -> None:
        target = self.target
        if target is None:
            return
        try:
            t = self.tasks.task.read(self.kernel, target.task)
            alive = t["pid"] == target.pid and not t["exit_state"] and t["mm"]
        except GuestMemoryError:
            alive = False
        if not alive:
            target.dead = True
            raise TargetExited(f"process {target.tgid} exited during the injection")

    def _execute(self, pc: int, stop_at: int, regs: dict[str, int]) -> dict[str, int]:
        """Run the hijacked thread from PC with REGS until it reaches STOP_AT."""
        target = self.target
        assert target is not None
        if not target.usable:
            raise InjectionError(f"process {target.tgid} is no longer held at a safe point")
        if target.thread is not None and self.gdb.thread != target.thread:
            self.gdb.select(target.thread)
        self.gdb.write_registers({**regs, self.arch.pc: pc})
        deadline = time.monotonic() + self.timeout
        target.stop_at = stop_at
        target.parked = False
        self._write_journal()
        self.gdb.add_breakpoint(stop_at)
        try:
            while True:
                _, out = self._run_until(stop_at, deadline, "the injected code to finish")
                if self._root(out) == target.root and self._task_of(out) == target.task:
                    target.parked = True
                    target.thread = self.gdb.thread
                    # The guest ran: its page tables may have changed (a fork's copy-on-write
                    # gives the parent new pages), so translations are looked up afresh.
                    self.kernel.user_space(target.pgd).cache.invalidate()
                    return out
                self._step_over(stop_at)
        finally:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(stop_at)
            if target.thread is not None and self.gdb.thread != target.thread:
                self.gdb.select(target.thread)

    def _vdso_syscall_address(self) -> int:
        """A system-call instruction in the target's vDSO: code we may run without writing."""
        target = self.target
        assert target is not None
        # Read afresh each time: the vDSO base is per process (ASLR), and a page-table root
        # can be reused by another process once this one exits.
        t = self.tasks.task.read(self.kernel, target.task)
        base = self.mm_context.read(self.kernel, t["mm"])["vdso"]
        if not base:
            raise InjectionError(f"process {target.tgid} has no vDSO")
        if self._vdso_offset is None:
            self._vdso_offset = vdso_syscall_offset(self.kernel)
        return base + self._vdso_offset

    def syscall(self, nr: int, *args: int) -> int:
        """Run one system call in the hijacked thread; returns the raw result (rax)."""
        if self.target is None:
            self.hijack()
        site = self._vdso_syscall_address()
        regs = {self.abi.nr_register: nr}
        for name, value in zip(self.abi.arg_registers, args, strict=False):
            regs[name] = value & 0xFFFF_FFFF_FFFF_FFFF
        out = self._execute(site, site + self.abi.instruction_size, regs)
        self.stats["syscalls"] += 1
        return out[self.abi.result_register]

    def run_batch(self, code_address: int, batch: batch_mod.Batch) -> None:
        """Run a batch whose table and code are already in the scratch mapping."""
        self._execute(code_address, code_address + self.arch.batch_done,
                      {"r12": batch.table, "r13": batch.end})
        self.stats["batches"] += 1
        self.stats["syscalls"] += len(batch.calls)

    # -- scratch memory ---------------------------------------------------------------------
    def map_scratch(self, size: int) -> int:
        """A private, populated, executable mapping in the target (our code and data)."""
        page = self.arch.page_size
        size = (size + page - 1) // page * page
        abi = self.abi
        result = self.syscall(abi.nr("mmap"), 0, size,
                              abi.PROT_READ | abi.PROT_WRITE | abi.PROT_EXEC,
                              abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_POPULATE, -1, 0)
        if errno_of(result) is not None:
            raise InjectionError(f"mmap of {size} bytes in pid {self.target.tgid} failed: "
                                 f"errno {errno_of(result)}")
        return result

    def unmap_scratch(self, address: int, size: int) -> None:
        page = self.arch.page_size
        self.syscall(self.abi.nr("munmap"), address, (size + page - 1) // page * page)

    def write_user(self, address: int, data: bytes) -> None:
        """Write into the target's private scratch pages through its page tables."""
        try:
            self.kernel.user_space(self.target.pgd).write_private(address, data)
        except GuestMemoryError as exc:
            raise InjectionError(f"cannot write scratch memory of {self.target.tgid}: {exc}") \
                from exc

    def read_user(self, address: int, size: int) -> bytes:
        return self.kernel.user_space(self.target.pgd).read(address, size)

    # -- giving the thread back ------------------------------------------------------------
    def release(self) -> dict[str, int] | None:
        """Restore the thread's registers exactly, check them, and resume the VM. Returns
        the registers as read back after the restore (None if the thread was not held)."""
        target, self.target = self.target, None
        if target is None:
            return None
        try:
            return self._release(target)
        finally:
            self._clear_journal()

    def _release(self, target: Target) -> dict[str, int] | None:
        if target.dead:
            self.kernel.invalidate()
            self.gdb.cont()
            return None
        if not target.parked:
            self._restore_in_flight(target)
            return None
        if target.thread is not None and self.gdb.thread != target.thread:
            self.gdb.select(target.thread)
        self.gdb.write_registers(target.saved)
        now = self.gdb.read_registers()
        changed = {k: (v, now[k]) for k, v in target.saved.items() if now[k] != v}
        self.kernel.invalidate()
        if changed:
            raise InjectionError(f"registers not restored: {changed}")
        self.gdb.cont()
        return now


    def _restore_in_flight(self, target: Target) -> None:
        """The thread is inside an injected syscall that did not finish in time: put its own
        registers into the user frame its syscall will return through (pt_regs on its kernel
        stack), so it resumes where it was. Only RAX is lost: it gets that syscall's result."""
        self.kernel.invalidate()
        try:
            t = Record(self.kernel.btf, "task_struct", {"stack": "stack"}).read(
                self.kernel, target.task)
            pt_regs = self.arch.pt_regs
            regs = Record(self.kernel.btf, "pt_regs", {n: n for n in pt_regs.values()})
            frame = t["stack"] + self.arch.thread_size - regs.size
            current = regs.read(self.kernel, frame)
            if not self.arch.user_mode({g: current[f] for g, f in pt_regs.items()}):
                raise InjectionError("no user frame on its kernel stack")
            for gdb_name, field in pt_regs.items():
                if gdb_name not in target.saved:
                    continue
                value = target.saved[gdb_name]
                self.kernel.space.write(frame + regs.offset(field),
                                        self.arch.pointer.pack(value))
        except (GuestMemoryError, InjectionError, KeyError) as exc:
            raise InjectionError(f"process {target.tgid} is still inside an injected system "
                                 f"call and its registers could not be restored: {exc}") from exc
        finally:
            with suppress(GDBStubError):
                self.gdb.cont()

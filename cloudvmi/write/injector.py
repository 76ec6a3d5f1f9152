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
from cloudvmi.write.journal import Holding, Journal, StaleJournal
from cloudvmi.write.signals import Signals
from cloudvmi.write.target import Target
from cloudvmi.write.threads import ThreadChooser
from cloudvmi.write.vdso import vdso_syscall_offset

TRY_USER_MODE = 40  # interrupts that look for a vCPU already in user mode before breaking
CANDIDATE_WAIT = 1.0  # seconds a process may stay in its system call before another is taken
RECOVER_WAIT = 1.0  # seconds recovery waits for a thread inside an injected call to finish it


class Injector:
    """Run system calls in a guest. Use as a context manager: hijack(), calls, release()."""

    def __init__(self, kernel: LinuxKernel, gdb: GDBStub, timeout: float = 10.0,
                 require_root: bool = True, before_hijack=None,
                 journal: Path | None = None, run: dict | None = None) -> None:
        self.kernel = kernel
        self.arch = kernel.arch
        self.abi = kernel.arch.syscall
        # What we hold, on disk: if this process dies mid-injection, the next one puts the
        # thread back (recover()).
        self.journal = Journal(journal, run) if journal is not None else None
        self.before_hijack = before_hijack  # e.g. refuse a VM that someone else paused
        self.gdb = gdb
        self.timeout = timeout
        self.chooser = ThreadChooser(kernel, require_root)
        self.tasks = self.chooser.tasks
        self.signals = Signals(kernel)
        self.mm_context = Record(kernel.btf, "mm_struct", {"vdso": "context.vdso"})
        self.target: Target | None = None
        self._vdso_offset: int | None = None  # of a syscall instruction in the vDSO image
        self._journaled: tuple | None = None  # what the journal on disk says
        self.stats = {"syscalls": 0, "batches": 0, "foreign_hits": 0}

    def _registers(self) -> dict[str, int]:
        """The selected vCPU's registers: the `g` packet and the architecture's system
        registers it lacks (arm64's TTBR0_EL1, TPIDR_EL1, ELR_EL1, ESR_EL1), keyed as the Arch
        names them."""
        regs = self.gdb.read_registers()
        for name in self.arch.system_registers:
            regs[name] = self.gdb.read_register(name)
        return regs

    def _root(self, regs: dict[str, int]) -> int:
        return self.arch.page_table_root(regs)

    def _task_of(self, regs: dict[str, int]) -> int | None:
        return self.chooser.task_of(regs)

    def hijack(self, pid: int | None = None, avoid: int | None = None) -> Target:
        """Stop the VM with a thread of a suitable process (or of PID) in user mode; never
        one of process AVOID."""
        if self.target is not None:
            return self.target
        self.chooser.avoid = avoid
        if self.before_hijack is not None:
            self.before_hijack()
        self._hold()
        try:
            return self._hijack(pid)
        except BaseException:
            with suppress(GDBStubError):  # nothing was changed: just let the guest run on
                if not self.gdb.running:
                    self.gdb.cont()
            self._clear_journal()
            raise

    def _hold(self, *breakpoints: int) -> None:
        self._journaled = None
        if self.journal is not None:
            self.journal.hold(list(breakpoints))

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
            regs = self._registers()
            if not self.arch.user_mode(regs):
                continue
            task = self._task_of(regs)
            t = self.chooser.suitable(task, pid) if task else None
            if t is not None and self._syscalls_keep_state(task):
                return self._take(thread, task, t, regs)
        return None

    def _syscalls_keep_state(self, task: int) -> bool:
        """Whether our system calls leave all of the thread's user state alone where it
        stands (not so for arm64 SVE state: a thread using it waits for its own call)."""
        if not self.arch.syscall_discards:
            return True
        try:
            return not self.signals.flags(task) & self.arch.syscall_discards
        except GuestMemoryError:
            return False

    def _take(self, thread: str | None, task: int, t: dict, regs: dict[str, int]) -> Target:
        """Hold the thread: journal its registers and signal mask, then block its signals
        (an injected call that waits is not interrupted, no handler runs in our context)."""
        mm = self.tasks.mm.read(self.kernel, t["mm"])
        self.target = Target(thread=thread, task=task, pid=t["pid"], tgid=t["tgid"],
                             root=self._root(regs), pgd=mm["pgd"],
                             saved={k: regs[k] for k in self.arch.saved_registers},
                             sigmask=self.signals.mask(task))
        self._write_journal()
        self.signals.block_all(task)
        return self.target

    def note_resume_stub(self, address: int) -> None:
        """Where a thread left inside an injected call is sent back to its own code."""
        self.target.resume_at = address
        self._write_journal()

    def _write_journal(self) -> None:
        """Journal the held thread when what recovery needs changes (not whether it is parked
        or on which vCPU: recovery finds that out from the vCPUs themselves)."""
        if self.journal is None or self.target is None:
            return
        key = (self.target.task, self.target.stop_at, self.target.resume_at,
               self.target.sigmask, tuple(map(tuple, self.target.scratch)))
        if key != self._journaled:
            self.journal.write(self.target)
            self._journaled = key

    def _clear_journal(self) -> None:
        self._journaled = None
        if self.journal is not None:
            self.journal.clear()

    def recover(self) -> str | None:
        """Put back a thread that an earlier process left hijacked (it died mid-injection):
        its registers, or its user frame if it is inside a syscall; breakpoints removed."""
        try:
            target = self.journal.read() if self.journal is not None else None
        except StaleJournal as exc:
            aside = self.journal.set_aside()
            return f"{exc}: not applied, kept as {aside}"
        if target is None:
            return None
        self.gdb.interrupt()
        if isinstance(target, Holding):  # it died looking for a thread: no thread is held
            entry = self.kernel.symbols.get(self.arch.syscall_entry)
            for address in {*target.breakpoints, *([entry] if entry else [])}:
                with suppress(GDBStubError):
                    self.gdb.remove_breakpoint(address)
            self.gdb.cont()
            self._clear_journal()
            return "VM resumed (stopped while looking for a thread)"
        if target.stop_at:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(target.stop_at)
        how = "in-flight"
        for thread in self.gdb.threads() or [None]:
            if thread is not None:
                self.gdb.select(thread)
            regs = self._registers()
            if self._task_of(regs) == target.task and self._root(regs) == target.root and (
                    regs[self.arch.pc] in (target.stop_at, target.saved[self.arch.pc])):
                # at STOP_AT, or still where it was taken (our registers never reached it):
                # either way held here, and its own registers go back exactly
                target.thread, target.parked, how = thread, True, "parked"
                break
        else:
            target.parked = False
        self.target = target
        try:
            self._check_target_alive()
            if not target.parked and target.stop_at and self._await_park(target):
                how = "parked after its call returned"
            if target.parked:
                for address, size in list(target.scratch):  # our mappings go too
                    self.unmap_scratch(address, size)
        except TargetExited:
            how = "gone"
        self.release()
        return f"process {target.tgid} put back ({how})"

    def _await_park(self, target: Target) -> bool:
        """Let a thread that is inside an injected call finish it and stop where it was to
        (a short call returns at once), for at most RECOVER_WAIT; then it can be put back
        exactly. A call that waits longer is left to the user-frame rewrite."""
        try:
            thread, _ = self._await_thread(target.stop_at, target.root, target.task,
                                           time.monotonic() + RECOVER_WAIT, "the injected call")
        except InjectionTimeout:
            return False
        target.thread, target.parked = thread, True
        return True

    def _take_at_syscall_return(self, pid: int | None, deadline: float) -> Target:
        """Break at syscall entry in a suitable process, then where that syscall returns.
        A process that stays in the kernel longer than CANDIDATE_WAIT (a blocking read) is
        passed over for the next one, unless the caller asked for that process."""
        entry = self.kernel.symbols.get(self.arch.syscall_entry)
        if entry is None:
            raise InjectionError(f"no {self.arch.syscall_entry} symbol to wait for a system "
                                 "call at")
        while True:
            thread, regs, task, t = self._await_entry(entry, pid, deadline)
            budget = deadline if pid is not None else min(deadline,
                                                          time.monotonic() + CANDIDATE_WAIT)
            try:
                thread, regs = self._await_return(regs, task, t, budget)
            except InjectionTimeout:
                if time.monotonic() >= deadline:
                    raise
                continue
            return self._take(thread, task, t, regs)

    def _await_entry(self, entry: int, pid: int | None, deadline: float):
        """The next system call by a suitable process that returns where it was made (not
        rt_sigreturn, execve or exit, which never come back to their call site)."""
        no_return = self.abi.no_return
        nr_register = self.abi.nr_register
        self.gdb.add_breakpoint(entry)
        try:
            while True:
                thread, regs = self._run_until(entry, deadline, "a system call by a suitable "
                                               f"process{'' if pid is None else f' (pid {pid})'}")
                task = self._task_of(regs)
                t = self.chooser.suitable(task, pid) if task else None
                if (t is not None and self.arch.entry_is_syscall(regs)
                        and regs[nr_register] not in no_return):
                    return thread, regs, task, t
                self._step_over(entry)
        finally:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(entry)

    def _await_return(self, regs: dict[str, int], task: int, t: dict, deadline: float):
        """Let the system call that REGS entered run, and stop where it returns to."""
        user_pc = regs[self.arch.entry_return_pc]
        self._hold(user_pc)
        return self._await_thread(user_pc, self._root(regs), task, deadline,
                                  f"pid {t['tgid']} to return from its system call")

    def _await_thread(self, address: int, root: int, task: int, deadline: float, what: str):
        """Run the VM until the thread of TASK (in address space ROOT) stops at ADDRESS, under
        a hardware breakpoint; other threads that hit it are stepped past. (thread, regs)."""
        self.gdb.add_breakpoint(address)
        try:
            while True:
                thread, regs = self._run_until(address, deadline, what)
                if self._root(regs) == root and self._task_of(regs) == task:
                    return thread, regs
                self._step_over(address)
        finally:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(address)

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
            regs = self._registers()
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
        target.stop_at = stop_at  # journal first: a death after it finds the thread
        target.parked = False  # either still at home or on its way to STOP_AT
        self._write_journal()
        self.gdb.write_registers({**self.arch.run_registers(target.saved), **regs,
                                  self.arch.pc: pc})
        deadline = time.monotonic() + self.timeout
        try:
            _, out = self._await_thread(stop_at, target.root, target.task, deadline,
                                        "the injected code to finish")
        except BaseException:
            if target.thread is not None and self.gdb.thread != target.thread:
                with suppress(GDBStubError):
                    self.gdb.select(target.thread)
            raise
        target.parked = True
        target.thread = self.gdb.thread
        # The guest ran: its page tables may have changed (a fork's copy-on-write gives the
        # parent new pages), so translations are looked up afresh.
        self.kernel.user_space(target.pgd).cache.invalidate()
        return out

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
        """Run one system call in the hijacked thread; returns the raw result (the ABI's
        result register)."""
        if self.target is None:
            self.hijack()
        site = self._vdso_syscall_address()
        regs = {self.abi.nr_register: nr}
        for name, value in zip(self.abi.arg_registers, args, strict=False):
            regs[name] = value & 0xFFFF_FFFF_FFFF_FFFF
        out = self._execute(site, site + self.abi.instruction_size, regs)
        self.stats["syscalls"] += 1
        return out[self.abi.result_register]

    def run_code(self, pc: int, stop_at: int, regs: dict[str, int]) -> dict[str, int]:
        """Run our code in the hijacked thread from PC with REGS until it parks at STOP_AT;
        the registers there."""
        return self._execute(pc, stop_at, regs)

    def run_batch(self, code_address: int, batch: batch_mod.Batch) -> None:
        """Run a batch whose table and code are already in the scratch mapping."""
        first, end = self.arch.table_registers
        self._execute(code_address, code_address + self.arch.batch_done,
                      {first: batch.table, end: batch.end})
        self.stats["batches"] += 1
        self.stats["syscalls"] += len(batch.calls)

    # -- scratch memory ---------------------------------------------------------------------
    def map_scratch(self, size: int, shared: bool = False, hint: int = 0) -> int:
        """A private, populated, executable mapping in the target (our code and data); with
        SHARED, a populated read-write shared one, which a child it forks keeps. HINT: where
        it is wanted (the kernel takes it if that range is free, else places it anywhere)."""
        page = self.arch.page_size
        size = (size + page - 1) // page * page
        abi = self.abi
        prot = abi.PROT_READ | abi.PROT_WRITE | (0 if shared else abi.PROT_EXEC)
        kind = abi.MAP_SHARED if shared else abi.MAP_PRIVATE
        result = self.syscall(abi.nr("mmap"), hint, size, prot,
                              kind | abi.MAP_ANONYMOUS | abi.MAP_POPULATE, -1, 0)
        if errno_of(result) is not None:
            raise InjectionError(f"mmap of {size} bytes in pid {self.target.tgid} failed: "
                                 f"errno {errno_of(result)}")
        self.target.scratch.append([result, size])
        self._write_journal()
        return result

    def unmap_scratch(self, address: int, size: int) -> None:
        page = self.arch.page_size
        self.syscall(self.abi.nr("munmap"), address, (size + page - 1) // page * page)
        self.target.scratch = [a for a in self.target.scratch if a[0] != address]
        self._write_journal()

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
            self._clear_journal()
            self.gdb.cont()
            return None
        if not target.parked:
            self._restore_in_flight(target)
            return None
        if target.thread is not None and self.gdb.thread != target.thread:
            self.gdb.select(target.thread)
        self.gdb.write_registers(target.saved)
        now = self._registers()
        changed = {k: (v, now[k]) for k, v in target.saved.items() if now[k] != v}
        self.kernel.invalidate()
        if changed:
            raise InjectionError(f"registers not restored: {changed}")
        self._restore_signals(target)
        self._clear_journal()  # the thread is back: only now may the VM run on
        self.gdb.cont()
        return now

    def _restore_signals(self, target: Target) -> None:
        if target.sigmask is not None:
            self.signals.restore(target.task, target.sigmask)


    def _restore_in_flight(self, target: Target) -> None:
        """The thread is inside an injected syscall that did not finish in time: put its own
        registers into the user frame its syscall will return through (pt_regs on its kernel
        stack), and its signal mask back, so it resumes where it was as soon as that call
        returns, with no wait here. The frame's PC is our resume stub, which puts back what
        the kernel overwrites with the call's result (RAX) and jumps to the thread's own PC;
        a single call made outside a session has no stub, and RAX gets its result."""
        self.kernel.invalidate()
        try:
            self._restore_signals(target)
            t = Record(self.kernel.btf, "task_struct", {"stack": "stack"}).read(
                self.kernel, target.task)
            pt_regs = self.arch.pt_regs
            regs = Record(self.kernel.btf, "pt_regs", {n: n for n in pt_regs.values()})
            frame = t["stack"] + self.arch.thread_size - regs.size
            current = regs.read(self.kernel, frame)
            if not self.arch.user_mode({g: current[f] for g, f in pt_regs.items()}):
                raise InjectionError("no user frame on its kernel stack")
            values = dict(target.saved)
            if target.resume_at:
                values[self.arch.pc] = target.resume_at
            for gdb_name, field in pt_regs.items():
                if gdb_name in values:
                    self.kernel.space.write(frame + regs.offset(field),
                                            self.arch.pointer.pack(values[gdb_name]))
            self._clear_journal()  # its frame is its own again
        except (GuestMemoryError, InjectionError, KeyError) as exc:
            raise InjectionError(f"process {target.tgid} is still inside an injected system "
                                 f"call and its registers could not be restored: {exc}") from exc
        finally:
            with suppress(GDBStubError):
                self.gdb.cont()

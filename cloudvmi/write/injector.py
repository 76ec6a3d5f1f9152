"""The syscall injection engine (x86-64 Linux): run system calls inside the guest, in a
hijacked user thread, and put the thread back exactly as it was.

How a thread is taken (DRAKVUF's way, with hardware breakpoints that write no guest memory):
stop the VM; if a vCPU is in user mode in a suitable process, take it there; otherwise break
on the kernel's syscall entry, then on the user address the syscall returns to, and take the
thread at that clean point. Single calls execute the `syscall` instruction already in the
process's vDSO; sequences run in a private mapping of our own (batch.py). Every breakpoint hit
is checked against the thread's address space (CR3) and task; every wait has a deadline; the
registers are restored on every path and compared with the saved ones.
"""

import dataclasses
import io
import json
import os
import struct
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.control.gdbstub import GDBStub, GDBStubError, GDBStubTimeout
from cloudvmi.errors import CloudVMIError, GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.os.linux.views.processes import PF_KTHREAD, TaskReader
from cloudvmi.write import batch as batch_mod
from cloudvmi.write.syscalls import (
    MAP_ANONYMOUS,
    MAP_POPULATE,
    MAP_PRIVATE,
    NR,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    errno_of,
)

ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
# Registers a hijack may change; all of them are put back (and checked) afterwards.
SAVED = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
         "r12", "r13", "r14", "r15", "rip", "eflags")
PAGE = 4096
KERNEL_SPACE = 0xFFFF_8000_0000_0000
TRY_USER_MODE = 40  # interrupts that look for a vCPU already in user mode before breaking


class InjectionError(CloudVMIError):
    """A system call could not be run in the guest; the guest was left as it was."""


class InjectionTimeout(InjectionError):
    """The guest did not reach the expected point in time."""


class TargetExited(InjectionError):
    """The hijacked process exited during the injection."""


@dataclass
class Target:
    """The hijacked thread: which vCPU, which task, which address space."""

    thread: str | None  # gdbstub thread id (the vCPU)
    task: int  # task_struct address
    pid: int
    tgid: int
    cr3: int  # page-table root (PCID and PTI bits masked)
    pgd: int  # mm->pgd (direct-map virtual)
    saved: dict[str, int]
    parked: bool = True  # stopped on its vCPU at our breakpoint (else: inside a syscall)
    dead: bool = False  # the process exited while we held it
    stop_at: int = 0  # the breakpoint the thread runs towards, while not parked

    @property
    def usable(self) -> bool:
        return self.parked and not self.dead


def _root(cr3: int) -> int:
    """CR3 without PCID bits and without the PTI user/kernel selector bit."""
    return cr3 & 0x000F_FFFF_FFFF_E000


class Injector:
    """Run system calls in a guest. Use as a context manager: hijack(), calls, release()."""

    def __init__(self, kernel: LinuxKernel, gdb: GDBStub, timeout: float = 10.0,
                 require_root: bool = True, before_hijack=None,
                 journal: Path | None = None) -> None:
        self.kernel = kernel
        # What we hold, on disk: if this process dies mid-injection, the next one puts the
        # thread back (recover()).
        self.journal = journal
        self.before_hijack = before_hijack  # e.g. refuse a VM that someone else paused
        self.gdb = gdb
        self.timeout = timeout
        self.require_root = require_root
        self.tasks = TaskReader(kernel)
        self.cred = Record(kernel.btf, "cred", {"uid": "uid.val"})
        self.mm_context = Record(kernel.btf, "mm_struct", {"vdso": "context.vdso"})
        self.target: Target | None = None
        self._current_off = self._current_task_offset()
        self._vdso_offset_cache: int | None = None  # of a `syscall` in the kernel's vDSO image
        self.stats = {"syscalls": 0, "batches": 0, "foreign_hits": 0}

    # -- finding a thread -----------------------------------------------------------------
    def _current_task_offset(self) -> int:
        """Per-CPU offset of the running task pointer: `current_task`, or pcpu_hot's field."""
        syms = self.kernel.symbols
        off = syms.get("current_task")
        if off is not None:
            return off
        hot = syms.get("pcpu_hot")
        if hot is None:
            raise InjectionError("the kernel has neither current_task nor pcpu_hot")
        return hot + self.kernel.btf.struct("pcpu_hot").offset("current_task")

    def _task_of(self, regs: dict[str, int]) -> int | None:
        """The task running on a vCPU. The kernel's per-CPU base is in GS_BASE or, in user
        mode and at syscall entry before swapgs, in KERNEL_GS_BASE: take the kernel one."""
        base = regs.get("gs_base", 0)
        if base < KERNEL_SPACE:
            base = regs.get("k_gs_base", 0)
        try:
            return self.kernel.read_u64(base + self._current_off)
        except GuestMemoryError:
            return None

    def _suitable(self, task: int, pid: int | None) -> dict | None:
        try:
            t = self.tasks.task.read(self.kernel, task)
        except GuestMemoryError:
            return None
        if t["flags"] & PF_KTHREAD or not t["mm"] or t["exit_state"]:
            return None
        if pid is not None:  # the caller chose it: its identity is the caller's business
            return t if t["tgid"] == pid else None
        if t["tgid"] == 1:  # never init: a mistake there would bring the guest down
            return None
        if self.require_root:
            try:
                if self.cred.read(self.kernel, t["real_cred"])["uid"] != 0:
                    return None
            except GuestMemoryError:
                return None
        return t

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
            if regs["cs"] & 3 != 3:
                continue
            task = self._task_of(regs)
            t = self._suitable(task, pid) if task else None
            if t is not None:
                return self._take(thread, task, t, regs)
        return None

    def _take(self, thread: str | None, task: int, t: dict, regs: dict[str, int]) -> Target:
        mm = self.tasks.mm.read(self.kernel, t["mm"])
        self.target = Target(thread=thread, task=task, pid=t["pid"], tgid=t["tgid"],
                             cr3=_root(regs["cr3"]), pgd=mm["pgd"],
                             saved={k: regs[k] for k in SAVED})
        self._write_journal()
        return self.target

    def _write_journal(self) -> None:
        if self.journal is None or self.target is None:
            return
        tmp = self.journal.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self.target)))
        os.replace(tmp, self.journal)

    def _clear_journal(self) -> None:
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)

    def recover(self) -> str | None:
        """Put back a thread that an earlier process left hijacked (it died mid-injection):
        its registers, or its user frame if it is inside a syscall; breakpoints removed."""
        if self.journal is None or not self.journal.exists():
            return None
        try:
            target = Target(**json.loads(self.journal.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise InjectionError(f"unreadable injection journal {self.journal}: {exc}") from exc
        self.gdb.interrupt()
        if target.stop_at:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(target.stop_at)
        how = "in-flight"
        for thread in self.gdb.threads() or [None]:
            if thread is not None:
                self.gdb.select(thread)
            regs = self.gdb.read_registers()
            if (self._task_of(regs) == target.task and _root(regs["cr3"]) == target.cr3
                    and regs["rip"] == target.stop_at):
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
        entry = self.kernel.symbols.get("entry_SYSCALL_64")
        if entry is None:
            raise InjectionError("no entry_SYSCALL_64 symbol to wait for a system call at")
        self.gdb.add_breakpoint(entry)
        try:
            while True:
                thread, regs = self._run_until(entry, deadline, "a system call by a suitable "
                                               f"process{'' if pid is None else f' (pid {pid})'}")
                task = self._task_of(regs)
                t = self._suitable(task, pid) if task else None
                if t is not None:
                    break
                self._step_over(entry)
        finally:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(entry)
        user_rip, cr3 = regs["rcx"], _root(regs["cr3"])
        self.gdb.add_breakpoint(user_rip)
        try:
            while True:
                thread, regs = self._run_until(user_rip, deadline, f"pid {t['tgid']} to return "
                                               "from its system call")
                if _root(regs["cr3"]) == cr3 and self._task_of(regs) == task:
                    break
                self._step_over(user_rip)
        finally:
            with suppress(GDBStubError):
                self.gdb.remove_breakpoint(user_rip)
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
            if regs["rip"] == address:
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

    def _execute(self, rip: int, stop_at: int, regs: dict[str, int]) -> dict[str, int]:
        """Run the hijacked thread from RIP with REGS until it reaches STOP_AT."""
        target = self.target
        assert target is not None
        if not target.usable:
            raise InjectionError(f"process {target.tgid} is no longer held at a safe point")
        if target.thread is not None and self.gdb.thread != target.thread:
            self.gdb.select(target.thread)
        self.gdb.write_registers({**regs, "rip": rip})
        deadline = time.monotonic() + self.timeout
        target.stop_at = stop_at
        target.parked = False
        self._write_journal()
        self.gdb.add_breakpoint(stop_at)
        try:
            while True:
                _, out = self._run_until(stop_at, deadline, "the injected code to finish")
                if _root(out["cr3"]) == target.cr3 and self._task_of(out) == target.task:
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
        """A `syscall` instruction in the target's vDSO: code we may execute without writing."""
        target = self.target
        assert target is not None
        # Read afresh each time: the vDSO base is per process (ASLR), and a page-table root
        # can be reused by another process once this one exits.
        t = self.tasks.task.read(self.kernel, target.task)
        base = self.mm_context.read(self.kernel, t["mm"])["vdso"]
        if not base:
            raise InjectionError(f"process {target.tgid} has no vDSO")
        return base + self._vdso_offset()

    def _vdso_offset(self) -> int:
        """Where the vDSO has a `syscall`, from the kernel's own copy of the image (the
        process may not have faulted in every vDSO page)."""
        if self._vdso_offset_cache is None:
            image = Record(self.kernel.btf, "vdso_image", {"data": "data", "size": "size"})
            v = image.read(self.kernel, self.kernel.symbols.lookup("vdso_image_64"))
            if not 64 <= v["size"] <= 16 * PAGE:
                raise InjectionError(f"implausible vDSO image size {v['size']}")
            self._vdso_offset_cache = find_syscall_instruction(
                self.kernel.read(v["data"], v["size"]))
        return self._vdso_offset_cache

    def syscall(self, nr: int, *args: int) -> int:
        """Run one system call in the hijacked thread; returns the raw result (rax)."""
        if self.target is None:
            self.hijack()
        site = self._vdso_syscall_address()
        regs = {"rax": nr}
        for name, value in zip(ARG_REGS, args, strict=False):
            regs[name] = value & 0xFFFF_FFFF_FFFF_FFFF
        out = self._execute(site, site + 2, regs)
        self.stats["syscalls"] += 1
        return out["rax"]

    def run_batch(self, code_address: int, batch: batch_mod.Batch) -> None:
        """Run a batch whose table and code are already in the scratch mapping."""
        self._execute(code_address, code_address + batch_mod.DONE,
                      {"r12": batch.table, "r13": batch.end})
        self.stats["batches"] += 1
        self.stats["syscalls"] += len(batch.calls)

    # -- scratch memory ---------------------------------------------------------------------
    def map_scratch(self, size: int) -> int:
        """A private, populated, executable mapping in the target (our code and data)."""
        size = (size + PAGE - 1) // PAGE * PAGE
        result = self.syscall(NR["mmap"], 0, size, PROT_READ | PROT_WRITE | PROT_EXEC,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0)
        if errno_of(result) is not None:
            raise InjectionError(f"mmap of {size} bytes in pid {self.target.tgid} failed: "
                                 f"errno {errno_of(result)}")
        return result

    def unmap_scratch(self, address: int, size: int) -> None:
        size = (size + PAGE - 1) // PAGE * PAGE
        self.syscall(NR["munmap"], address, size)

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
            regs = Record(self.kernel.btf, "pt_regs", {n: n for n in PT_REGS.values()})
            frame = t["stack"] + THREAD_SIZE - regs.size
            current = regs.read(self.kernel, frame)
            if current["cs"] & 3 != 3:
                raise InjectionError("no user frame on its kernel stack")
            for gdb_name, field in PT_REGS.items():
                if gdb_name in ("cs", "ss"):
                    continue
                value = target.saved[gdb_name]
                self.kernel.space.write(frame + regs.offset(field), struct.pack("<Q", value))
        except (GuestMemoryError, InjectionError, KeyError) as exc:
            raise InjectionError(f"process {target.tgid} is still inside an injected system "
                                 f"call and its registers could not be restored: {exc}") from exc
        finally:
            with suppress(GDBStubError):
                self.gdb.cont()


# gdb register name -> struct pt_regs member (x86-64)
PT_REGS = {"r15": "r15", "r14": "r14", "r13": "r13", "r12": "r12", "rbp": "bp", "rbx": "bx",
           "r11": "r11", "r10": "r10", "r9": "r9", "r8": "r8", "rax": "ax", "rcx": "cx",
           "rdx": "dx", "rsi": "si", "rdi": "di", "rip": "ip", "eflags": "flags", "rsp": "sp",
           "cs": "cs", "ss": "ss"}
THREAD_SIZE = 16 * 1024  # x86-64 kernel stacks (THREAD_SIZE_ORDER 2, no KASAN)


def find_syscall_instruction(image: bytes) -> int:
    """Offset of a `syscall` instruction in a vDSO image, found by disassembling its code
    (an instruction boundary, not just the bytes 0f 05)."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(image))
        text = elf.get_section_by_name(".text")
        if text is None:
            raise InjectionError("the vDSO has no .text section")
        start, code = text["sh_offset"], text.data()
    except (ELFError, struct.error, ValueError) as exc:
        raise InjectionError(f"the vDSO image is not a readable ELF: {exc}") from exc
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.skipdata = True
    for insn in md.disasm(code, 0):
        if insn.mnemonic == "syscall":
            return start + insn.address
    raise InjectionError("no syscall instruction in the vDSO")

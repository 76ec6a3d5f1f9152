"""Which guest thread may be hijacked: the task on a vCPU, and whether it is suitable
(a user process, alive, not init, root unless the caller chose the process)."""

from cloudvmi.arch import Arch
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.os.linux.views.processes import PF_KTHREAD, TaskReader
from cloudvmi.write.errors import InjectionError


class ThreadChooser:
    def __init__(self, kernel: LinuxKernel, require_root: bool = True) -> None:
        self.kernel = kernel
        self.arch: Arch = kernel.arch
        self.require_root = require_root
        self.tasks = kernel.helper(TaskReader)
        self.cred = Record(kernel.btf, "cred", {"uid": "uid.val"})
        self._current_off = self._current_task_offset()
        self.avoid: int | None = None  # a process not to take (the one a kill targets)

    def _current_task_offset(self) -> int:
        """Per-CPU variable holding the running task: the architecture's (x86-64's
        `current_task`, arm64's `__entry_task`), or x86-64's pcpu_hot field (6.2 to 6.14)."""
        syms = self.kernel.symbols
        for name in self.arch.current_task_symbols:
            off = syms.get(name)
            if off is not None:
                return off
        hot = syms.get("pcpu_hot")
        if hot is None:
            raise InjectionError("the kernel has none of "
                                 f"{', '.join(self.arch.current_task_symbols)} nor pcpu_hot")
        return hot + self.kernel.btf.struct("pcpu_hot").offset("current_task")

    def task_of(self, regs: dict[str, int]) -> int | None:
        """The task running on a vCPU, through the kernel's per-CPU offset of that vCPU (a
        register the architecture names: GS base on x86-64, TPIDR_EL1 on arm64)."""
        base = self.arch.per_cpu_offset(regs)
        try:
            return self.kernel.read_u64(self.kernel.per_cpu(self._current_off, base))
        except GuestMemoryError:
            return None

    def suitable(self, task: int, pid: int | None) -> dict | None:
        """The task's fields if it may be hijacked (for PID, or any root process)."""
        try:
            t = self.tasks.task.read(self.kernel, task)
        except GuestMemoryError:
            return None
        if t["flags"] & PF_KTHREAD or not t["mm"] or t["exit_state"] or t["tgid"] == self.avoid:
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

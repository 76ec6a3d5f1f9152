"""The hijacked thread's signals: all blocked while we hold it, so an injected call that
waits (wait4, a read of a pipe) is never interrupted by the process's own signals, and none
of its handlers runs in our context. A signal that arrives meanwhile stays pending; when the
thread is given back, its own mask is put back and, if such a signal is now deliverable, the
thread is flagged so the kernel delivers it at its next return to user mode, in its own
context. Written directly in the task (the VM is stopped), journaled first like registers.
"""

import contextlib

from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record

SIGKILL, SIGSTOP = 9, 19
UNBLOCKABLE = (1 << (SIGKILL - 1)) | (1 << (SIGSTOP - 1))


class Signals:
    def __init__(self, kernel: LinuxKernel) -> None:
        self.kernel = kernel
        btf = kernel.btf
        self.task = Record(btf, "task_struct", {
            "blocked": "blocked.sig[0]", "pending": "pending.signal.sig[0]",
            "signal": "signal", "flags": "thread_info.flags"})
        self.shared = Record(btf, "signal_struct", {"pending": "shared_pending.signal.sig[0]"})
        self.all = (1 << (8 * self.task.size_of("blocked"))) - 1 & ~UNBLOCKABLE
        self.sigpending = 1 << kernel.arch.tif_sigpending

    def mask(self, task: int) -> int:
        """The thread's blocked-signal mask."""
        return self.task.read(self.kernel, task)["blocked"]

    def flags(self, task: int) -> int:
        """The thread's thread_info.flags (TIF_*)."""
        return self.task.read(self.kernel, task)["flags"]

    def block_all(self, task: int) -> None:
        self.task.write(self.kernel.space, task, "blocked", self.all)

    def restore(self, task: int, mask: int) -> bool:
        """Put MASK back; flag the thread if a signal that arrived is now deliverable.
        Returns whether one was."""
        self.task.write(self.kernel.space, task, "blocked", mask)
        t = self.task.read(self.kernel, task)
        pending = t["pending"]
        with contextlib.suppress(GuestMemoryError):  # the process-wide ones too
            pending |= self.shared.read(self.kernel, t["signal"])["pending"]
        if not pending & ~mask:
            return False
        self.task.write(self.kernel.space, task, "flags", t["flags"] | self.sigpending)
        return True

"""One system call of a traced process, stopped at its entry: its arguments, its process's
state, and the three ways to go on (natively, rewritten, or answered by the tracer)."""

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudvmi.redirect import ptrace
from cloudvmi.redirect.files import FdTable
from cloudvmi.redirect.guestfs import join, lexical, normalize  # noqa: F401 (re-exported)


@dataclass
class Proc:
    """A traced thread group: the state the guest would keep for it."""

    tgid: int
    cwd: bytes = b"/"
    umask: int = 0o022
    fds: FdTable = field(default_factory=FdTable)
    started: bool = False  # it runs the program (before: the launcher)
    loader: list[tuple[int, int]] = field(default_factory=list)  # ld.so's code
    threads: set[int] = field(default_factory=set)


NATIVE, EMULATED, REWRITTEN = "native", "emulated", "rewritten"


@dataclass
class Outcome:
    how: str
    value: int = 0  # EMULATED: the call's result
    after: Callable[[int], int | None] | None = None  # REWRITTEN: told the result


def native() -> Outcome:
    return Outcome(NATIVE)


def answer(value: int) -> Outcome:
    return Outcome(EMULATED, value)


def fail(code: int) -> Outcome:
    return Outcome(EMULATED, -code)


def rewritten(after: Callable[[int], int | None] | None = None) -> Outcome:
    """Run the (changed) call natively; AFTER gets its result and may replace it."""
    return Outcome(REWRITTEN, 0, after)


class Stop:
    def __init__(self, pid: int, proc: Proc, regs: ptrace.Regs) -> None:
        self.pid = pid
        self.proc = proc
        self.regs = regs
        self.nr = regs.orig_rax

    def arg(self, i: int) -> int:
        return self.regs.arg(i)

    def sarg(self, i: int) -> int:
        return self.regs.sarg(i)

    def string(self, i: int, limit: int = 4096) -> bytes | None:
        address = self.arg(i)
        return None if address == 0 else ptrace.read_string(self.pid, address, limit)

    def read(self, address: int, size: int) -> bytes | None:
        try:
            data = ptrace.read_memory(self.pid, address, size)
        except OSError:
            return None
        return data if len(data) == size else None

    def put(self, address: int, data: bytes) -> bool:
        """Write a result into the program's memory; False where it is not writable."""
        try:
            ptrace.write_memory(self.pid, address, data)
        except OSError:
            return False
        return True

    def place(self, data: bytes) -> int | None:
        """Put DATA on the program's stack, below its red zone (an argument for the
        call it is making); its address."""
        address = (self.regs.rsp - 1024 - len(data)) & ~15
        return address if self.put(address, data) else None

    def from_loader(self) -> bool:
        """The call comes from the dynamic loader's code (it loads the program's
        libraries: those are the host's)."""
        rip = self.regs.rip
        return any(lo <= rip < hi for lo, hi in self.proc.loader)


EFAULT, ENOENT, ENOTDIR, EBADF = errno.EFAULT, errno.ENOENT, errno.ENOTDIR, errno.EBADF

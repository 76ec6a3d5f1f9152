"""The hijacked thread: which vCPU, which task, which address space, what it was doing."""

from dataclasses import dataclass, field


@dataclass
class Target:
    thread: str | None  # gdbstub thread id (the vCPU)
    task: int  # task_struct address
    pid: int
    tgid: int
    root: int  # page-table root (CR3 on x86-64), flags masked
    pgd: int  # mm->pgd (direct-map virtual)
    saved: dict[str, int]
    parked: bool = True  # stopped on its vCPU at our breakpoint (else: inside a syscall)
    dead: bool = False  # the process exited while we held it
    stop_at: int = 0  # the breakpoint the thread runs towards, while not parked
    sigmask: int | None = None  # its own blocked-signal mask (all are blocked while held)
    resume_at: int = 0  # a resume stub in our scratch mapping (for a thread left in flight)
    scratch: list = field(default_factory=list)  # [address, size] of our mappings in it

    @property
    def usable(self) -> bool:
        return self.parked and not self.dead

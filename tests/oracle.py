"""The guest's own view of itself, read over its serial console: what tests compare against."""

import time
from dataclasses import dataclass, field


@dataclass
class GuestTask:
    pid: int
    comm: str
    state: str
    ppid: int
    cmdline: list[str]
    threads: dict[int, str] = field(default_factory=dict)  # tid -> comm
    cmdline_raw: bytes = b""  # /proc/PID/cmdline as the kernel gives it
    uid: int | None = None  # real uid, from /proc/PID/status
    nr_threads: int | None = None  # Threads: of /proc/PID/status
    exe: str | None = None  # readlink /proc/PID/exe (None for kernel threads)


def _parse_stat(raw: bytes) -> tuple[int, str, str, int]:
    head, _, tail = raw.rpartition(b")")
    pid, _, comm = head.partition(b" (")
    fields = tail.split()
    return int(pid), comm.decode("utf-8", "surrogateescape"), fields[0].decode(), int(fields[1])


def split_cmdline(raw: bytes) -> list[str]:
    """The arguments in /proc/PID/cmdline: each one ends with a NUL (so an empty argument
    is an empty string between two NULs, and the last NUL ends the last argument)."""
    if not raw:
        return []
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")]


def processes(guest, threads: bool = False) -> dict[int, GuestTask]:
    """Every process the guest's /proc shows, with pid, ppid, comm and command line.

    The listing script and the processes it started are left out: they are not the workload.
    """
    return parse_processes(
        guest.console.check("cloudvmi-procview" + (" -t" if threads else ""), timeout=180))


def parse_processes(out: str) -> dict[int, GuestTask]:
    """`cloudvmi-procview`'s output (kept, or just read) as processes by pid."""
    tasks: dict[int, GuestTask] = {}
    script = -1
    for line in out.splitlines():
        parts = line.split(" ")
        if parts[0] == "S":
            script = int(parts[1])
        elif parts[0] == "P" and len(parts) >= 3:
            pid, comm, state, ppid = _parse_stat(bytes.fromhex(parts[2]))
            cmd = bytes.fromhex(parts[3]) if len(parts) > 3 else b""
            task = GuestTask(pid, comm, state, ppid, split_cmdline(cmd), cmdline_raw=cmd)
            if len(parts) >= 6:
                task.uid = int(parts[4]) if parts[4].isdigit() else None
                task.nr_threads = int(parts[5]) if parts[5].isdigit() else None
            if len(parts) >= 7 and parts[6]:
                task.exe = bytes.fromhex(parts[6]).decode("utf-8", "surrogateescape")
            tasks[pid] = task
        elif parts[0] == "T" and len(parts) == 4 and int(parts[1]) in tasks:
            tid, comm, _, _ = _parse_stat(bytes.fromhex(parts[3]))
            tasks[int(parts[1])].threads[tid] = comm
    return {pid: t for pid, t in tasks.items() if not _descends(tasks, pid, script)}


def _descends(tasks: dict[int, GuestTask], pid: int, ancestor: int) -> bool:
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid not in tasks:
            return False
        pid = tasks[pid].ppid
    return False


def modules(guest) -> dict[str, tuple[int, int, str]]:
    """/proc/modules: name -> (size, refcount, state)."""
    return parse_modules(guest.console.check("cat /proc/modules"))


def parse_modules(out: str) -> dict[str, tuple[int, int, str]]:
    mods = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5:
            mods[f[0]] = (int(f[1]), int(f[2]), f[4])
    return mods


def gone(guest, pid: int, seconds: float) -> bool:
    """Whether the guest's /proc loses PID within SECONDS."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if guest.console.run(f"test -d /proc/{pid}")[0] != 0:
            return True
        time.sleep(0.2)
    return False


def sentinel_rounds(guest, at_least: int, polls: int = 600) -> tuple[int, int]:
    """(rounds, corrupt) of the workload's sentinel program, once it has done AT_LEAST
    rounds (its /tmp/sentinel.txt, read every half second, POLLS times at most)."""
    for _ in range(polls):
        words = guest.console.check("cat /tmp/sentinel.txt 2>/dev/null || true").split()
        if len(words) == 4 and int(words[1]) >= at_least:
            return int(words[1]), int(words[3])
        time.sleep(0.5)
    raise AssertionError("the sentinel program made no progress")

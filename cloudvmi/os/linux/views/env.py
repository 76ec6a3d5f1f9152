"""The environment of a process, as /proc/PID/environ shows it: the bytes between
mm->env_start and mm->env_end in the process's own memory, read the way `ps` reads the
command line (TaskReader.user_bytes)."""

from dataclasses import dataclass

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.views.common import ViewResult
from cloudvmi.os.linux.views.processes import PF_KTHREAD, TaskReader, find_task, split_strings

# execve() caps arguments and environment together at 6 MiB (3/4 of _STK_LIM), but
# prctl(PR_SET_MM) may point env_start/env_end anywhere: a larger claimed area is cut here.
MAX_ENVIRON = 1 << 24
ENV_CHUNK = 1 << 12  # read a page at a time, so a page that is not present costs the rest only


@dataclass
class EnvVar:
    name: str  # before the first "=" (the whole entry when it has none)
    value: str | None  # after it; None for an entry with no "=" (execve allows one)


def _entry(text: str) -> EnvVar:
    name, sep, value = text.partition("=")
    return EnvVar(name, value if sep else None)


def _environ(reader: TaskReader, mm: dict) -> tuple[bytes, str | None]:
    """The environ bytes, and why they stop short if they do: a page that is not in memory
    (swapped out, never touched) ends the read, and a huge claimed area is cut."""
    start, end = mm["env_start"], mm["env_end"]
    problems = []
    if end - start > MAX_ENVIRON:
        problems.append(f"environment claims {end - start} bytes, read the first "
                        f"{MAX_ENVIRON}")
        end = start + MAX_ENVIRON
    parts: list[bytes] = []
    at = start
    while at < end:
        stop = min(end, (at // ENV_CHUNK + 1) * ENV_CHUNK)
        try:
            parts.append(reader.user_bytes(mm, at, stop, stop - at))
        except GuestMemoryError as exc:
            problems.append(f"environment at {at:#x}: {exc}")
            break
        at = stop
    return b"".join(parts), "; ".join(problems) or None


@view(title="Environment ({vm})", columns=(
    Column("NAME", "name"), Column("VALUE", lambda e: "" if e.value is None else e.value)),
    pid="The process.")
def env(kernel: LinuxKernel, pid: int) -> ViewResult[EnvVar]:
    """List the environment of a process, as /proc/PID/environ holds it."""
    reader = kernel.helper(TaskReader)
    t = find_task(kernel, pid)
    if t is None:
        raise GuestMemoryError(f"no process {pid}")
    if not t["mm"] or t["flags"] & PF_KTHREAD:
        return ViewResult()  # kernel threads and zombies: /proc/PID/environ is empty
    try:
        mm = reader.mm.read(kernel, t["mm"])
    except GuestMemoryError as exc:
        return ViewResult(partial=f"mm of process {pid}: {exc}")
    raw, problem = _environ(reader, mm)
    if raw and not raw.endswith(b"\0") and problem is None:
        problem = "environment does not end with a NUL: its last entry may be cut"
    return ViewResult(items=[_entry(e) for e in split_strings(raw)], partial=problem)

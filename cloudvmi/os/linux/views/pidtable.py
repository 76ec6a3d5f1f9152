"""The processes the kernel finds by pid: every struct pid in the initial pid namespace's
IDR (an xarray of struct pid pointers), and the task each one names.

This is a second source beside the task list. A process unlinked from the task list (a
rootkit's direct kernel object manipulation) still has its pid here, because kill(), /proc
and wait() find it through this table. `hunt` compares the two."""

from dataclasses import dataclass

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record, cstring
from cloudvmi.os.linux.views.common import MAX_TASKS, ViewResult
from cloudvmi.os.linux.views.processes import TaskReader

MAX_XA_NODES = 1 << 16  # xarray nodes visited (64 slots each: far beyond any pid count)
MAX_XA_DEPTH = 12  # levels of an xarray over 32-bit indices: 6 at most


@dataclass
class PidEntry:
    pid: int  # its number in the initial namespace
    tgid: int  # of the task it names (0 when it names none)
    comm: str
    task: int  # task_struct address, 0 when the pid names no task (a pid kept by a group)
    pid_struct: int


class PidReader:
    """xarray nodes, struct pid, and where a task links into its pid's list."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        node = btf.struct("xa_node")
        self.slots_offset = node.offset("slots")
        slots = btf.type(btf.resolve(node.field("slots").type_id))
        self.slot_count = slots.nelems
        self.node = Record(btf, "xa_node", {"shift": "shift"})
        pid_type = btf.type_named("pid_type")
        types = {e.name: e.value for e in pid_type.enumerators} if pid_type else {}
        kind = types.get("PIDTYPE_PID", 0)
        self.pid = Record(btf, "pid", {"nr": "numbers[0].nr", "first": f"tasks[{kind}].first"})
        self.link_offset = btf.struct("task_struct").offset(f"pid_links[{kind}]")
        self.head_offset = btf.struct("pid_namespace").offset("idr.idr_rt.xa_head")


def pid_structs(kernel: LinuxKernel, reader: PidReader) -> tuple[list[int], str | None]:
    """Every struct pid in init_pid_ns's xarray, and why the walk stopped early if it did."""
    head = kernel.read_u64(kernel.symbols.lookup("init_pid_ns") + reader.head_offset)
    found: list[int] = []
    seen: set[int] = set()
    stack = [(head, 0)]
    span = reader.slot_count * 8
    while stack:
        entry, depth = stack.pop()
        if not entry:
            continue
        if entry & 3 == 2:  # internal: a node above 4096, else a sibling or retry mark
            if entry <= 4096:
                continue
            node = entry - 2
            if node in seen:
                return found, f"xarray node {node:#x} reached twice"
            if len(seen) >= MAX_XA_NODES or depth > MAX_XA_DEPTH:
                return found, "pid xarray deeper or larger than the walk bound"
            seen.add(node)
            try:
                raw = kernel.read(node + reader.slots_offset, span)
            except GuestMemoryError as exc:
                return found, f"xarray node {node:#x}: {exc}"
            slots = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, span, 8)]
            stack += [(s, depth + 1) for s in reversed(slots) if s]
        elif entry & 1 == 0:  # a pointer (value entries have bit 0 set)
            if len(found) >= MAX_TASKS:
                return found, f"more than {MAX_TASKS} pids"
            found.append(entry)
    return found, None


@view(title="Pid table of {vm}", columns=(
    Column("PID", "pid", True), Column("TGID", "tgid", True), Column("COMMAND", "comm"),
    Column("TASK", lambda e: f"{e.task:#x}" if e.task else "-")))
def pid_table(kernel: LinuxKernel) -> ViewResult[PidEntry]:
    """List the pids of the initial pid namespace and the task each names (from the pid
    table, not the task list)."""
    reader = kernel.helper(PidReader)
    tasks = kernel.helper(TaskReader)
    structs, partial = pid_structs(kernel, reader)
    result: ViewResult[PidEntry] = ViewResult(partial=partial)
    for address in structs:
        try:
            p = reader.pid.read(kernel, address)
            task = p["first"] - reader.link_offset if p["first"] else 0
            t = tasks.task.read(kernel, task) if task else None
        except GuestMemoryError as exc:
            result.partial = result.partial or f"pid {address:#x}: {exc}"
            continue
        result.items.append(PidEntry(
            pid=p["nr"], tgid=t["tgid"] if t else 0,
            comm=cstring(t["comm"]).decode("utf-8", "replace") if t else "",
            task=task, pid_struct=address))
    result.items.sort(key=lambda e: e.pid)
    return result

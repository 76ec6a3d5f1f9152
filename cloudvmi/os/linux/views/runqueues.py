"""The tasks each CPU's scheduler holds: the one running, and those queued in the fair
(CFS) red-black tree, the real-time priority lists and the deadline tree.

This is a third source beside the task list and the pid table: a task the scheduler runs
cannot be hidden from its run queue, whatever lists it was unlinked from."""

from dataclasses import dataclass

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record, cstring
from cloudvmi.os.linux.views.common import ListWalkError, ViewResult, list_nodes
from cloudvmi.os.linux.views.processes import TaskReader

MAX_CPUS = 8192
MAX_QUEUED = 1 << 16  # entities in one CPU's trees and lists
MAX_GROUP_DEPTH = 32  # nested task groups (cgroups) of the fair scheduler


@dataclass
class Queued:
    cpu: int
    pid: int
    tgid: int
    comm: str
    policy: str  # fair, rt, deadline; the running task: its class as queued, or "running"
    running: bool
    task: int


class RunqueueReader:
    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        self.rq = Record(btf, "rq", {
            "curr": "curr", "cfs_root": "cfs.tasks_timeline.rb_root.rb_node",
            "rt_queues": "rt.active.queue", "dl_root": "dl.root.rb_root.rb_node"},
            optional=("rt_queues", "dl_root"))
        self.rt_queue_count = 0
        if "rt_queues" in self.rq:
            field = btf.struct("rq").field("rt.active.queue")
            self.rt_queue_count = btf.type(btf.resolve(field.type_id)).nelems
            self.rt_queue_offset = btf.struct("rq").offset("rt.active.queue")
        self.rb = Record(btf, "rb_node", {"left": "rb_left", "right": "rb_right"})
        se = btf.struct("sched_entity")
        self.se_run_node = se.offset("run_node")
        self.se_my_q = Record(btf, "sched_entity", {"my_q": "my_q"}, optional=("my_q",))
        self.cfs_root = btf.struct("cfs_rq").offset("tasks_timeline.rb_root.rb_node")
        task = btf.struct("task_struct")
        self.task_se = task.offset("se")
        self.task_rt = task.offset("rt") + btf.struct("sched_rt_entity").offset("run_list")
        self.task_dl = task.offset("dl") + btf.struct("sched_dl_entity").offset("rb_node")


def _cpus(kernel: LinuxKernel) -> list[tuple[int, int]]:
    """(cpu, per-CPU offset) of each possible CPU."""
    syms = kernel.symbols
    count = min(MAX_CPUS, int.from_bytes(kernel.read(syms.lookup("nr_cpu_ids"), 4), "little"))
    raw = kernel.read(syms.lookup("__per_cpu_offset"), 8 * count)
    offsets = [int.from_bytes(raw[i * 8:i * 8 + 8], "little") for i in range(count)]
    return [(cpu, off) for cpu, off in enumerate(offsets) if off or cpu == 0]


def _tree(kernel, reader: RunqueueReader, root: int, budget: list[int]) -> list[int]:
    """Nodes of a red-black tree, bounded (BUDGET is shared by a CPU's walks)."""
    out, stack, seen = [], [root], set()
    while stack:
        node = stack.pop()
        if not node:
            continue
        if node in seen or budget[0] <= 0:
            raise ListWalkError(f"run-queue tree at {root:#x} loops or is too large")
        seen.add(node)
        budget[0] -= 1
        out.append(node)
        n = reader.rb.read(kernel, node)
        stack += [n["left"], n["right"]]
    return out


def _fair(kernel, reader: RunqueueReader, root: int, budget: list[int], depth: int = 0):
    """Tasks of a CFS tree; group entities lead into their own queue (my_q)."""
    if depth > MAX_GROUP_DEPTH:
        raise ListWalkError("task groups nested deeper than the walk bound")
    for node in _tree(kernel, reader, root, budget):
        se = node - reader.se_run_node
        my_q = reader.se_my_q.read(kernel, se).get("my_q", 0) if "my_q" in reader.se_my_q \
            else 0
        if my_q:
            yield from _fair(kernel, reader, kernel.read_u64(my_q + reader.cfs_root), budget,
                             depth + 1)
        else:
            yield se - reader.task_se


def _rt(kernel, reader: RunqueueReader, rq: int, budget: list[int]):
    if not reader.rt_queue_count:
        return
    for i in range(reader.rt_queue_count):
        head = rq + reader.rt_queue_offset + 16 * i
        for node in list_nodes(kernel.read_u64, head, budget[0]):
            budget[0] -= 1
            yield node - reader.task_rt


@view(title="Run queues of {vm}", columns=(
    Column("CPU", "cpu", True), Column("PID", "pid", True), Column("COMMAND", "comm"),
    Column("POLICY", "policy"), Column("RUNNING", lambda q: "yes" if q.running else "")))
def runqueues(kernel: LinuxKernel) -> ViewResult[Queued]:
    """List the tasks on each CPU's run queues: running, and queued by the fair, real-time
    and deadline schedulers (user tasks and kernel threads; the idle task is left out)."""
    reader = kernel.helper(RunqueueReader)
    tasks = kernel.helper(TaskReader)
    result: ViewResult[Queued] = ViewResult()
    try:
        cpus = _cpus(kernel)
    except GuestMemoryError as exc:
        return ViewResult(partial=f"per-CPU offsets: {exc}")
    runqueues_at = kernel.symbols.lookup("runqueues")
    for cpu, offset in cpus:
        rq = kernel.per_cpu(runqueues_at, offset)
        budget = [MAX_QUEUED]
        found: list[tuple[int, str]] = []
        r = {"curr": 0}
        try:
            r = reader.rq.read(kernel, rq)
            found += [(t, "fair") for t in _fair(kernel, reader, r["cfs_root"], budget)]
            found += [(t, "rt") for t in _rt(kernel, reader, rq, budget)]
            if r.get("dl_root"):
                found += [(n - reader.task_dl, "deadline")
                          for n in _tree(kernel, reader, r["dl_root"], budget)]
        except (GuestMemoryError, ListWalkError) as exc:
            result.partial = f"cpu {cpu}: {getattr(exc, 'reason', exc)}"
        queued = {t for t, _ in found}
        if r["curr"] and r["curr"] not in queued:
            found.append((r["curr"], "running"))
        for task, policy in found:
            try:
                t = tasks.task.read(kernel, task)
            except GuestMemoryError as exc:
                result.partial = result.partial or f"cpu {cpu} task {task:#x}: {exc}"
                continue
            if t["pid"] == 0:
                continue  # the idle task
            result.items.append(Queued(cpu, t["pid"], t["tgid"],
                                       cstring(t["comm"]).decode("utf-8", "replace"),
                                       policy, task == r["curr"], task))
    return result

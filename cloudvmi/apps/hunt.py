"""`cloudvmi hunt`: hidden objects and kernel tampering, found by comparing views that a
rootkit would have to falsify all at once.

- Processes: the task list, the pid table (the IDR that kill(), wait() and /proc use), the
  CPUs' run queues, and the guest's own /proc as a program run through `exec` sees it.
- Modules: the module list, the module kobjects and a scan of module memory (the integrity
  view compares these), and the guest's /proc/modules.
- Sockets: the kernel's socket tables in memory, against the guest's /proc/net.
- Kernel: every finding of the integrity view.

Memory is read twice, before and after the guest's own view is taken, and an object counts
only if both readings agree, so processes and connections that come and go while the hunt
runs are not reported as hidden.
"""

import dataclasses
import re
import time
from dataclasses import dataclass, field

from cloudvmi.apps.events import Event, Events, Metrics
from cloudvmi.apps.procnet import endpoint, parse
from cloudvmi.apps.targets import Target
from cloudvmi.errors import CloudVMIError


@dataclass
class Finding:
    kind: str  # hidden-process, hidden-module, hidden-socket, kernel, ...
    object: str  # what it is about, in words ("pid 812 (evil)")
    present: list[str] = field(default_factory=list)  # views that show it
    absent: list[str] = field(default_factory=list)  # views that do not
    evidence: dict = field(default_factory=dict)


@dataclass
class Memory:
    """One reading of the guest's memory views."""

    task_list: dict[int, str]  # tid -> comm (every thread of every listed process)
    leaders: set[int]  # thread-group leaders in the task list
    pid_table: dict[int, str]  # tid -> comm, for pids that name a task
    runqueues: dict[int, str]
    modules: set[str]

    @classmethod
    def read(cls, vm) -> "Memory":
        linux = vm.linux
        threads = linux.threads().items  # every thread, so the leaders too (tid == tgid)
        return cls(
            task_list={t.tid: t.comm for t in threads},
            leaders={t.tid for t in threads if t.tid == t.tgid},
            pid_table={e.pid: e.comm for e in linux.pid_table().items if e.task},
            runqueues={q.pid: q.comm for q in linux.runqueues().items},
            modules={m.name for m in linux.modules().items})


@dataclass
class GuestView:
    """What the guest itself shows, read by one program run through `exec`: the pids in
    /proc, the names in /proc/modules, and the TCP and UDP sockets in /proc/net with the
    network namespace they belong to (init's, which the reading process shares)."""

    pids: set[int]
    modules: set[str]
    netns: int
    sockets: set[tuple]

    SCRIPT = ("readlink /proc/1/ns/net; echo '== pids'; ls -1 /proc; echo '== modules'; "
              "cat /proc/modules; for f in tcp tcp6 udp udp6; do echo \"== $f\"; "
              "cat /proc/net/$f; done")

    @classmethod
    def read(cls, vm) -> "GuestView":
        r = vm.exec(["sh", "-c", cls.SCRIPT], timeout=120)
        text = r.stdout.decode("utf-8", "replace")
        namespace = re.match(r"net:\[(\d+)\]", text)
        if r.status != 0 or namespace is None:
            raise CloudVMIError(f"reading the guest's /proc failed: "
                                f"{r.stderr.decode(errors='replace')[-300:]}")
        sections = dict(re.findall(r"^== (\S+)\n(.*?)(?=^== |\Z)", text, re.M | re.S))
        return cls({int(n) for n in sections.get("pids", "").split() if n.isdigit()},
                   {line.split()[0] for line in sections.get("modules", "").splitlines()
                    if line.split()},
                   int(namespace[1]), parse(text))


def processes(before: Memory, after: Memory, proc: set[int]) -> list[Finding]:
    out = []
    listed = before.task_list.keys() & after.task_list.keys()
    for tid in sorted(before.pid_table.keys() & after.pid_table.keys()):
        if tid in before.task_list or tid in after.task_list:
            continue
        present = ["pid table"] + (["run queues"] if tid in before.runqueues else []) \
            + (["guest /proc"] if tid in proc else [])
        out.append(Finding("hidden-process", f"pid {tid} ({after.pid_table[tid]})", present,
                           ["task list"], {"pid": tid, "comm": after.pid_table[tid]}))
    known = before.task_list.keys() | after.task_list.keys() | before.pid_table.keys()
    for tid in sorted((before.runqueues.keys() & after.runqueues.keys()) - known):
        out.append(Finding("hidden-process", f"pid {tid} ({after.runqueues[tid]})",
                           ["run queues"], ["task list", "pid table"],
                           {"pid": tid, "comm": after.runqueues[tid]}))
    for pid in sorted((before.leaders & after.leaders) - proc):
        if pid in listed and pid != 0:
            out.append(Finding("hidden-from-proc", f"pid {pid} ({after.task_list[pid]})",
                               ["task list", "pid table"], ["guest /proc"],
                               {"pid": pid, "comm": after.task_list[pid]}))
    return out


def modules(before: Memory, after: Memory, proc_modules: set[str]) -> list[Finding]:
    out = []
    for name in sorted((before.modules & after.modules) - proc_modules):
        out.append(Finding("hidden-module", f"module {name}", ["module list"],
                           ["guest /proc/modules"], {"module": name}))
    for name in sorted(proc_modules - before.modules - after.modules):
        out.append(Finding("hidden-module", f"module {name}", ["guest /proc/modules"],
                           ["module list"], {"module": name}))
    return out


def kernel(vm) -> list[Finding]:
    """The integrity view's findings (syscall table, IDT, hooks, module kobjects and memory)."""
    result = vm.linux.integrity()
    out = [Finding("kernel" if f.check != "modules" else "hidden-module",
                   f"{f.check}: {f.subject}", [], [], _plain(f)) for f in result.items]
    if result.partial:
        out.append(Finding("incomplete", "integrity checks", [], [],
                           {"partial": result.partial}))
    return out


def _plain(obj) -> dict:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else {"value": str(obj)}


def sockets(before: set, after: set, proc_net: set) -> list[Finding]:
    out = []
    for key in sorted((before & after) - proc_net):
        out.append(Finding("hidden-socket", _socket_words(key), ["kernel socket tables"],
                           ["guest /proc/net"], dict(zip(SOCKET_KEY, key, strict=True))))
    return out


SOCKET_KEY = ("protocol", "local", "remote", "state", "inode")


def _socket_words(key: tuple) -> str:
    protocol, local, remote, state, inode = key
    return f"{protocol} {local} -> {remote} {state} (inode {inode})"


def memory_sockets(vm) -> dict[tuple, int]:
    """TCP and UDP sockets as keys comparable with /proc/net, with their namespace."""
    out = {}
    for s in vm.linux.sockets().items:
        if s.protocol in ("tcp", "udp"):
            out[(s.protocol + ("6" if s.family == "ipv6" else ""),
                 endpoint(s.local_address, s.local_port),
                 endpoint(s.remote_address, s.remote_port), s.state, s.inode)] = s.netns
    return out


class Hunt:
    def __init__(self, events: Events | None = None, metrics: Metrics | None = None) -> None:
        self.events = events or Events()
        self.metrics = metrics

    def check(self, target: Target, vm) -> list[Finding]:
        start = time.monotonic()
        before, socks_before = Memory.read(vm), memory_sockets(vm)
        guest = GuestView.read(vm)
        after, socks_after = Memory.read(vm), memory_sockets(vm)
        in_memory = {k for k, ns in socks_before.items() if ns == guest.netns}
        found = processes(before, after, guest.pids) + modules(before, after, guest.modules) \
            + sockets(in_memory, set(socks_after), guest.sockets) + kernel(vm)
        for f in found:
            self.events.emit(Event("hunt", target.name, "finding", f.kind,
                                   {"object": f.object, "present": f.present,
                                    "absent": f.absent, "evidence": f.evidence}, target.node))
            if self.metrics:
                self.metrics.findings.labels(target.name, f.kind).inc()
        if self.metrics:
            self.metrics.checks.labels(target.name).inc()
            self.metrics.latency.labels(target.name).observe(time.monotonic() - start)
        return found

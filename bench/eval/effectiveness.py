"""The applications' detection on planted cases, and their false positives on clean guests.

Planted on a live 6.1 guest, each undone afterwards: a process unlinked from the task list,
a syscall table entry redirected, a module unlinked from the module list and from
/sys/module (all three by writes into guest memory, as a rootkit would), files changed,
added, removed and re-moded under /etc, a forbidden process started, a sysctl drifted.
Clean: a freshly booted guest of every kernel of the test matrix, where any finding is a
false positive."""

import struct
import sys
import tempfile
import time
from pathlib import Path

from cloudvmi.apps import enforce, fim
from cloudvmi.apps.guard import Guard, Policy
from cloudvmi.apps.hunt import Hunt
from cloudvmi.apps.targets import Target
from cloudvmi.os.linux.views.modules import ModuleReader
from cloudvmi.os.linux.views.processes import TaskReader
from cloudvmi.vm import attach

from .common import ROOT, Settings

sys.path.insert(0, str(ROOT / "tests"))
from matrix import KERNELS  # noqa: E402  (the kernels every capability is shown on)

POLICY = Policy.parse({"rule": [
    {"name": "no-miners", "action": "kill", "match": {"name": "xmrig*"}},
    {"name": "no-telnet", "action": "kill", "match": {"listen_port": 23}}]})


def _u64(kernel, address: int, value: int) -> None:
    kernel.space.write(address, struct.pack("<Q", value))


def _unlink(kernel, node: int) -> tuple[int, int]:
    nxt, prev = struct.unpack("<QQ", kernel.read(node, 16))
    _u64(kernel, prev, nxt)
    _u64(kernel, nxt + 8, prev)
    return nxt, prev


def _relink(kernel, node: int, nxt: int, prev: int) -> None:
    _u64(kernel, prev, node)
    _u64(kernel, nxt + 8, node)


def _hunt(vm, name: str) -> tuple[list, float]:
    start = time.perf_counter()
    found = Hunt().check(Target(name, ""), vm)
    return found, time.perf_counter() - start


def _wait_process(vm, argv: list[str]):
    for _ in range(100):
        p = next((p for p in vm.linux.processes().items if p.cmdline == argv), None)
        if p:
            return p
        time.sleep(0.2)
    raise RuntimeError(f"{argv} did not start in the guest")


def hidden_process(g, vm) -> dict:
    g.console.check("sleep 7777 &")
    victim = _wait_process(vm, ["sleep", "7777"])
    kernel = vm.linux.kernel
    node = victim.address + kernel.helper(TaskReader).tasks_offset
    with vm.snapshot():
        nxt, prev = _unlink(kernel, node)
    kernel.invalidate()
    try:
        found, took = _hunt(vm, g.name)
    finally:
        with vm.snapshot():
            _relink(kernel, node, nxt, prev)
        kernel.invalidate()
        g.console.check(f"kill {victim.pid}")
    hits = [f for f in found if f.kind == "hidden-process" and f.evidence.get("pid") == victim.pid]
    return _case("hidden process (unlinked from the task list)", "hunt", f"pid {victim.pid}",
                 hits, found, took)


def hooked_syscall(g, vm) -> dict:
    kernel = vm.linux.kernel
    nr = kernel.arch.syscall.numbers["acct"]  # a call nothing in the lab guest makes
    slot = kernel.symbols.lookup("sys_call_table") + 8 * nr
    original = kernel.read_u64(slot)
    with vm.snapshot():
        _u64(kernel, slot, kernel.symbols.lookup("__x64_sys_getpid"))
    kernel.invalidate()
    try:
        found, took = _hunt(vm, g.name)
    finally:
        with vm.snapshot():
            _u64(kernel, slot, original)
        kernel.invalidate()
    hits = [f for f in found if f.kind == "kernel"
            and f.evidence.get("check") == "syscall_table" and f"[{nr}]" in f.object]
    return _case("hooked syscall (sys_call_table[acct] -> __x64_sys_getpid)", "hunt",
                 f"sys_call_table[{nr}]", hits, found, took)


def hidden_module(g, vm) -> dict:
    kernel = vm.linux.kernel
    m = next(m for m in vm.linux.modules().items if m.name == "dummy")
    btf = kernel.btf
    nodes = [m.struct_address + kernel.helper(ModuleReader).list_offset,
             m.struct_address + btf.struct("module").offset("mkobj")
             + btf.struct("kobject").offset("entry")]
    with vm.snapshot():
        saved = [(n, *_unlink(kernel, n)) for n in nodes]
    kernel.invalidate()
    try:
        found, took = _hunt(vm, g.name)
    finally:
        with vm.snapshot():
            for n, nxt, prev in reversed(saved):
                _relink(kernel, n, nxt, prev)
        kernel.invalidate()
    hits = [f for f in found if f.kind == "hidden-module" and "dummy" in f.object]
    return _case("hidden module (dummy, unlinked from the list and /sys/module)", "hunt",
                 "dummy", hits, found, took)


def changed_files(g, vm, work: Path) -> dict:
    g.console.check("mkdir -p /etc/ev && echo a > /etc/ev/a && echo b > /etc/ev/b && "
                    "echo c > /etc/ev/c")
    base = work / "effect-etc.json"
    fim.baseline(vm, g.name, ["/etc"], base)
    g.console.check("echo A >> /etc/ev/a && rm /etc/ev/b && chmod 600 /etc/ev/c && "
                    "echo new > /etc/ev/new")
    start = time.perf_counter()
    found = fim.check(vm, base)
    took = time.perf_counter() - start
    want = {("changed", "/etc/ev/a"), ("removed", "/etc/ev/b"), ("changed", "/etc/ev/c"),
            ("added", "/etc/ev/new")}
    got = {(c.kind, c.path) for c in found}
    fim.restore(vm, base)
    g.console.check("rm -rf /etc/ev")
    return {"case": "changed files (1 modified, 1 removed, 1 re-moded, 1 added under /etc)",
            "app": "fim", "planted": len(want), "found": len(got & want),
            "other_findings": len(got - want), "detected": want <= got, "seconds": took,
            "detail": sorted(f"{k} {p}" for k, p in got)}


def forbidden_process(g, vm) -> dict:
    g.console.check("sh -c 'printf xmrig-cpu > /proc/self/comm; while :; do sleep 60; done' &")
    time.sleep(1.0)
    start = time.perf_counter()
    events = Guard(POLICY).check(Target(g.name, ""), vm)
    took = time.perf_counter() - start
    hits = [e for e in events if e.rule == "no-miners"]
    gone = False
    for _ in range(25):  # killed: gone, or a zombie until the console shell reaps it
        gone = not any(p.comm == "xmrig-cpu" and p.state not in ("Z", "X")
                       for p in vm.linux.processes().items)
        if gone:
            break
        time.sleep(0.2)
    return {"case": "forbidden process (comm xmrig-cpu), policy: kill", "app": "guard",
            "planted": 1, "found": len(hits), "other_findings": len(events) - len(hits),
            "detected": len(hits) == 1 and gone, "seconds": took,
            "detail": [f"{e.rule}: pid {e.detail.get('pid')} {e.detail.get('action')}"
                       for e in events] + [f"killed: {gone}"]}


def sysctl_drift(g, vm) -> dict:
    value = int(g.console.check("cat /proc/sys/vm/swappiness"))
    state = {"sysctl": {"vm.swappiness": value}}
    g.console.check(f"echo {value + 7} > /proc/sys/vm/swappiness")
    start = time.perf_counter()
    changes = enforce.plan(vm, state)
    took = time.perf_counter() - start
    g.console.check(f"echo {value} > /proc/sys/vm/swappiness")
    hits = [c for c in changes if c.item == "sysctl vm.swappiness"]
    return {"case": f"sysctl drift (vm.swappiness {value} -> {value + 7})", "app": "enforce",
            "planted": 1, "found": len(hits), "other_findings": len(changes) - len(hits),
            "detected": len(hits) == 1, "seconds": took,
            "detail": [f"{c.item}: {c.what}" for c in changes]}


def _case(case: str, app: str, planted: str, hits: list, found: list, took: float) -> dict:
    return {"case": case, "app": app, "planted": 1, "found": len(hits),
            "other_findings": len(found) - len(hits), "detected": len(hits) == 1,
            "seconds": took, "detail": [f"{f.kind}: {f.object} (seen in "
                                        f"{', '.join(f.present) or '-'}; missing from "
                                        f"{', '.join(f.absent) or '-'})" for f in found]}


def clean(g, work: Path) -> dict:
    """Every application on a guest nobody tampered with: each finding is a false positive."""
    with attach(g.name, writable=True) as vm:
        hunt, _ = _hunt(vm, g.name)
        base = work / f"clean-{g.name}.json"
        fim.baseline(vm, g.name, ["/etc", "/bin"], base)
        files = fim.check(vm, base)
        events = Guard(POLICY).check(Target(g.name, ""), vm)
        value = int(g.console.check("cat /proc/sys/vm/swappiness"))
        plan = enforce.plan(vm, {"sysctl": {"vm.swappiness": value}})
    return {"kernel": g.meta["release"], "hunt": len(hunt), "fim": len(files),
            "guard": len(events), "enforce": len(plan),
            "detail": [f"hunt {f.kind}: {f.object}" for f in hunt]
            + [f"fim {c.kind}: {c.path}" for c in files]
            + [f"guard {e.rule}" for e in events] + [f"enforce {c.item}" for c in plan]}


def run(s: Settings) -> dict:
    with tempfile.TemporaryDirectory(dir=s.work) as tmp:
        work = Path(tmp)
        clean_rows = []
        for kernel in s.pick(["6.1"], KERNELS):
            s.log(f"  clean guest: {kernel}")
            with s.guest(kernel=kernel, mem="512M", paging=s.pick(4, 5)) as g:
                clean_rows.append({"asked": kernel, **clean(g, work)})
        cases = []
        with s.guest(kernel="6.1", mem="512M", paging=s.pick(4, 5)) as g, \
                attach(g.name, writable=True) as vm:
            for plant in (hidden_process, hooked_syscall, hidden_module, forbidden_process,
                          sysctl_drift):
                s.log(f"  planted: {plant.__name__}")
                cases.append(plant(g, vm))
            cases.append(changed_files(g, vm, work))
    return {"cases": cases, "clean": clean_rows}

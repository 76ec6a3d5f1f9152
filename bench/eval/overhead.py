"""What watching a guest costs the guest: a CPU-bound and a system-call-bound benchmark run
inside the guest (the lab workload's `bench`, a fixed number of rounds), alone and while
CloudVMI watches it in one way at a time. Each run is timed twice: by the host (wall time of
the whole run, so pauses count) and by the guest's own clock (which stops while QEMU is
stopped, so it shows only what the guest's own work lost)."""

import contextlib
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cloudvmi.apps import fim
from cloudvmi.apps.guard import Guard, Policy
from cloudvmi.apps.targets import Target
from cloudvmi.vm import attach

from .common import Settings

KINDS = ("cpu", "sys")
SLOW = 5.0  # times the run alone: a condition this slow is run once, not repeated


def _every_second(stop: threading.Event, fn: Callable[[], object]) -> None:
    while not stop.is_set():
        began = time.monotonic()
        fn()
        stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))


def _watchers(name: str, work: Path) -> dict[str, Callable[[threading.Event], None]]:
    """Each way of watching, as a function that runs until its event is set."""

    def ps(stop):
        with attach(name) as vm:
            _every_second(stop, vm.linux.processes)

    def guard(stop):
        policy = Policy.parse({"rule": [
            {"name": "no-miners", "action": "kill", "match": {"name": "xmrig*"}},
            {"name": "no-telnet", "action": "kill", "match": {"listen_port": 23}}]})
        Guard(policy).watch([Target(name, "")], 1.0, None, stop)

    def inject(stop):
        with attach(name, writable=True) as vm:
            _every_second(stop, lambda: vm.guest.read_file("/proc/version"))

    def fim_loop(channel):
        def loop(stop):
            with attach(name, writable=True) as vm:
                base = work / f"overhead-etc-{channel}.json"
                fim.baseline(vm, name, ["/etc"], base, channel=channel)
                stop.wait(0.5)
                while not stop.is_set():
                    fim.check(vm, base, channel=channel)
        return loop

    return {"process list every 1 s": ps, "guard watch (1 s)": guard,
            "injected operation every 1 s (cat /proc/version)": inject,
            "fim check of /etc, in a loop (stop channel)": fim_loop("stop"),
            "fim check of /etc, in a loop (persistent channel)": fim_loop("persistent")}


@contextlib.contextmanager
def _watching(fn: Callable[[threading.Event], None] | None):
    if fn is None:
        yield
        return
    stop, errors = threading.Event(), []

    def body():
        try:
            fn(stop)
        except Exception as exc:  # reported with the figures, not lost in a thread
            errors.append(repr(exc))

    t = threading.Thread(target=body, daemon=True)
    t.start()
    time.sleep(3.0)  # attach, locate the kernel, first round: then the steady state
    try:
        yield errors
    finally:
        stop.set()
        t.join(300)


def _bench(g, kind: str, rounds: int) -> tuple[float, float]:
    """(host seconds, guest seconds) of ROUNDS rounds of the guest benchmark KIND."""
    start = time.perf_counter()
    out = g.console.check(f"/bin/workload bench {kind} {rounds}", timeout=1800)
    host = time.perf_counter() - start
    match = re.search(r"rounds (\d+) ns (\d+)", out)
    if not match:
        raise RuntimeError(f"workload bench gave {out!r}")
    return host, int(match.group(2)) / 1e9


def run(s: Settings) -> dict:
    seconds, reps = s.pick(2.0, 10.0), s.pick(1, 3)
    rows = []
    with s.guest(kernel="6.1", mem="512M", busy=False) as g, \
            tempfile.TemporaryDirectory(dir=s.work) as tmp:
        rounds = {}
        for kind in KINDS:  # rounds for SECONDS of work, from the rate alone
            out = g.console.check(f"/bin/workload bench {kind} 0")
            n, ns = (int(x) for x in re.search(r"rounds (\d+) ns (\d+)", out).groups())
            rounds[kind] = max(1000, int(n / (ns / 1e9) * seconds))
        conditions = {"alone": None, **_watchers(g.name, Path(tmp))}
        alone_host: dict[str, float] = {}
        for condition, fn in conditions.items():
            s.log(f"  {condition}")
            with _watching(fn) as errors:
                for kind in KINDS:
                    runs = [_bench(g, kind, rounds[kind])]
                    # a watcher that slows the guest many times over is measured once: its
                    # repeats would take the better part of an hour and say the same
                    if condition == "alone" or runs[0][0] < SLOW * alone_host[kind]:
                        runs += [_bench(g, kind, rounds[kind]) for _ in range(reps - 1)]
                    rows.append({"condition": condition, "kind": kind,
                                 "rounds": rounds[kind],
                                 "host_s": sorted(h for h, _ in runs)[len(runs) // 2],
                                 "guest_s": sorted(x for _, x in runs)[len(runs) // 2],
                                 "runs": runs})
                    if condition == "alone":
                        alone_host[kind] = rows[-1]["host_s"]
            if errors:
                for r in rows[-len(KINDS):]:
                    r["error"] = "; ".join(errors)
        meta = {"kernel": g.meta["release"], "mem_mib": g.meta["mem_mib"],
                "accel": g.meta["accel"]}
    alone = {r["kind"]: r for r in rows if r["condition"] == "alone"}
    for r in rows:
        base = alone[r["kind"]]
        r["host_slowdown"] = r["host_s"] / base["host_s"] - 1
        r["guest_slowdown"] = r["guest_s"] / base["guest_s"] - 1
    return {"guest": meta, "seconds": seconds, "repeats": reps, "rows": rows}

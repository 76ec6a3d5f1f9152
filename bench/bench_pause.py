"""How long a view holds a live guest still, and a whole `cloudvmi ps` on a running guest
(the speed issue's goal 2: paused ≤ 10 ms per view on 200 processes, the command ≤ 0.25 s).

The pause is timed from the QMP `stop` to the `cont` of each view's snapshot, in-process and
warm (the kernel located, the profile cached), on a 6.1 guest running about 200 processes.

Run: .venv/bin/python bench/bench_pause.py   (boots one 6.1 guest, stops it at the end)
"""

import os
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))

from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.vm import attach  # noqa: E402

from report import Report, summary  # noqa: E402

MS = 1e3
VIEWS = ("processes", "threads", "modules", "sockets", "files")
REPEAT = 20


class PauseClock:
    """Wraps a VM's pause and resume: the seconds between each stop and its cont."""

    def __init__(self, vm) -> None:
        self.held: list[float] = []
        self._since = 0.0
        pause, resume = vm.pause, vm.resume

        def timed_pause() -> None:
            pause()
            self._since = time.perf_counter()

        def timed_resume() -> None:
            self.held.append(time.perf_counter() - self._since)
            resume()

        vm.pause, vm.resume = timed_pause, timed_resume


def main() -> None:
    report = Report("pause")
    print("CloudVMI: the guest held still per view, and `cloudvmi ps` on a running guest")
    name = f"bp{uuid.uuid4().hex[:6]}"
    lab.up(name, kernel="6.1", extra_procs=150)
    try:
        with attach(name) as vm:
            count = len(vm.linux.processes().items)
            clock = PauseClock(vm)
            for view in VIEWS:
                call = getattr(vm.linux, view)
                arg = {"pid": 1} if view == "files" else {}
                call(**arg)
                clock.held.clear()
                for _ in range(REPEAT):
                    call(**arg)
                s = summary(clock.held)
                report.add(f"{view}: guest held still ({count} processes)", s["median"] * MS,
                           "ms", "<= 10 ms" if view == "processes" else "",
                           s["median"] <= 0.010 if view == "processes" else None,
                           f"p99 {s['p99'] * MS:.1f} ms")
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "cloudvmi.cli.main", "ps", name, "--json"],
                               capture_output=True, text=True)
            runs.append(time.perf_counter() - start)
            assert r.returncode == 0, r.stderr
        whole = summary(runs)["median"]
        report.add("cloudvmi ps on a running guest: whole command", whole, "s", "<= 0.25 s",
                   whole <= 0.25)
    finally:
        lab.down(name)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()

"""The applications on a real guest: fim's throughput (files per second and MB/s for a
baseline, a check and a restore), a guard check, a hunt and an enforce plan, each timed.

Run: .venv/bin/python bench/bench_apps.py   (boots one 6.1 guest, stops it at the end)
"""

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from cloudvmi.apps import enforce, fim  # noqa: E402
from cloudvmi.apps.guard import Guard, Policy  # noqa: E402
from cloudvmi.apps.hunt import Hunt  # noqa: E402
from cloudvmi.apps.targets import Target  # noqa: E402
from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.vm import attach  # noqa: E402

from report import Report  # noqa: E402

SMALL, SMALL_SIZE, BIG = 2000, 4096, 32  # files of 4 KiB, and one of 32 MiB


def main() -> None:
    report = Report("apps")
    print("CloudVMI applications on a real Debian 6.1 guest under QEMU/TCG")
    name = f"ba{uuid.uuid4().hex[:6]}"
    g = lab.up(name, kernel="6.1", mem="1G")
    try:
        g.console.check(f"mkdir -p /srv/fim && cd /srv/fim && i=0; while [ $i -lt {SMALL} ]; "
                        f"do head -c {SMALL_SIZE} /dev/urandom > f$i; i=$((i+1)); done; "
                        f"dd if=/dev/urandom of=big bs=1M count={BIG} 2>/dev/null", timeout=900)
        files, size = SMALL + 1, SMALL * SMALL_SIZE + (BIG << 20)
        with attach(name, writable=True) as vm, tempfile.TemporaryDirectory() as tmp:
            for channel in ("stop", "persistent"):
                base = Path(tmp) / f"srv-{channel}.json"
                start = time.perf_counter()
                fim.baseline(vm, name, ["/srv/fim"], base, channel)
                took = time.perf_counter() - start
                report.add(f"fim baseline ({channel}): files per second", files / took,
                           "files/s")
                report.add(f"fim baseline ({channel}): throughput", size / took / 1e6, "MB/s")
                start = time.perf_counter()
                assert fim.check(vm, base, channel) == []
                took = time.perf_counter() - start
                report.add(f"fim check ({channel}): files per second", files / took, "files/s")
                report.add(f"fim check ({channel}): throughput", size / took / 1e6, "MB/s")
                g.console.check("cd /srv/fim && for i in $(seq 0 99); do echo x >> f$i; done")
                start = time.perf_counter()
                undone = fim.restore(vm, base, channel=channel)
                report.add(f"fim restore ({channel}) of 100 changed files, with its check",
                           time.perf_counter() - start, "s")
                assert len(undone) == 100
            target = Target(name, "")
            policy = Policy.parse({"rule": [{"name": "r", "action": "report",
                                             "match": {"name": "no-such-process"}}]})
            start = time.perf_counter()
            Guard(policy).check(target, vm)
            report.add("guard: one check of a VM (process rules)", time.perf_counter() - start,
                       "s")
            start = time.perf_counter()
            Hunt().check(target, vm)
            report.add("hunt: one VM", time.perf_counter() - start, "s")
            start = time.perf_counter()
            enforce.plan(vm, {"sysctl": {"vm.swappiness": 60},
                              "files": {"/etc/passwd": {"mode": "0644"}}})
            report.add("enforce: plan of a sysctl and a file", time.perf_counter() - start,
                       "s")
    finally:
        lab.down(name)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()

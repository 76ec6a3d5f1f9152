"""Redirected programs (`cloudvmi exec`) on a real lab guest: the wall time of each command
run on the host with its guest calls redirected, against the same kind of command run inside
the same guest (its busybox), in one session; and the guest resumes each command costs.

Run: .venv/bin/python bench/bench_exec.py   (boots one 6.1 guest, stops it at the end)
"""

import os
import re
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))

from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.vm import attach  # noqa: E402

from report import Report, summary  # noqa: E402

MS = 1e3
REPEAT = 5
# (label, host program, the guest's own command, goal on resumes)
COMMANDS = [
    ("ls -l /etc", ["ls", "-l", "/etc"], "busybox ls -l /etc", 4),
    ("ls -l /bin (400 entries)", ["ls", "-l", "/bin"], "busybox ls -l /bin", None),
    ("ps aux", ["ps", "aux"], "busybox ps aux", 5),
    ("find /etc", ["find", "/etc"], "busybox find /etc", None),
    ("find / -xdev", ["find", "/", "-xdev"], "busybox find / -xdev", None),
    ("sha256sum of 50 MiB", ["sha256sum", "/root/big"], "busybox sha256sum /root/big", None),
]


def in_guest(g, command: str, times: int = 10) -> float:
    """Seconds COMMAND takes inside the guest (the mean of TIMES runs, timed by the guest's
    own uptime clock, whose tick is 10 ms)."""
    out = g.console.check(f"a=$(cat /proc/uptime); for i in $(seq {times}); do {command} "
                          ">/dev/null; done; b=$(cat /proc/uptime); echo $a $b", timeout=900)
    start, _, end, _ = (float(x) for x in re.findall(r"[\d.]+", out)[-4:])
    return (end - start) / times


def main() -> None:
    report = Report("exec")
    print("CloudVMI exec: host programs with guest system calls redirected, real Debian 6.1 "
          "guest under QEMU/TCG, stop-the-world channel")
    name = f"be{uuid.uuid4().hex[:6]}"
    g = lab.up(name, kernel="6.1", mem="512M")
    try:
        g.console.check("dd if=/dev/urandom of=/root/big bs=1M count=50 2>/dev/null",
                        timeout=300)
        with attach(name, writable=True) as vm:
            for label, argv, theirs, goal in COMMANDS:
                vm.exec(argv, timeout=300)  # learns the program's start-up requests
                runs = []
                for _ in range(REPEAT):
                    start = time.perf_counter()
                    r = vm.exec(argv, timeout=300)
                    runs.append((time.perf_counter() - start, r.resumes))
                    assert r.status == 0, (argv, r.stderr)
                ours = summary([t for t, _ in runs])["median"]
                resumes = sorted(n for _, n in runs)[len(runs) // 2]
                guest = in_guest(g, theirs, 3 if "50 MiB" in label else 10)
                ratio = ours / guest
                report.add(f"{label}: redirected", ours * MS, "ms")
                report.add(f"{label}: in the guest ({theirs})", guest * MS, "ms")
                report.add(f"{label}: ratio", ratio, "x", "<= 1.5x", ratio <= 1.5)
                report.add(f"{label}: guest resumes", resumes, "",
                           f"<= {goal}" if goal else "", resumes <= goal if goal else None)
    finally:
        lab.down(name)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()

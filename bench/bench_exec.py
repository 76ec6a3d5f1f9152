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
from cloudvmi.write.channel import GuestCall  # noqa: E402

from report import Report, summary  # noqa: E402

MS = 1e3
REPEAT = 5
# (label, host program, the guest's own command, goal on resumes)
COMMANDS = [  # the same static busybox on both sides, then GNU coreutils and procps
    ("ls -l /etc", ["busybox", "ls", "-l", "/etc"], "busybox ls -l /etc", 4),
    ("ls -l /bin (400 entries)", ["busybox", "ls", "-l", "/bin"], "busybox ls -l /bin", None),
    ("ps aux", ["busybox", "ps", "aux"], "busybox ps aux", 5),
    ("find /etc", ["busybox", "find", "/etc"], "busybox find /etc", None),
    ("find / -xdev", ["busybox", "find", "/", "-xdev"], "busybox find / -xdev", None),
    ("sha256sum of 50 MiB", ["busybox", "sha256sum", "/root/big"],
     "busybox sha256sum /root/big", None),
    ("GNU ls -l /etc", ["ls", "-l", "/etc"], "busybox ls -l /etc", None),
    ("procps ps aux", ["ps", "aux"], "busybox ps aux", 5),
]


def in_guest(g, command: str, times: int = 10) -> float:
    """Seconds COMMAND takes inside the guest (the mean of TIMES runs, timed by the guest's
    own uptime clock, whose tick is 10 ms)."""
    out = g.console.check(f"a=$(cat /proc/uptime); for i in $(seq {times}); do {command} "
                          ">/dev/null; done; b=$(cat /proc/uptime); echo $a $b", timeout=900)
    start, _, end, _ = (float(x) for x in re.findall(r"[\d.]+", out)[-4:])
    return (end - start) / times


def timed(vm, argv: list[str], channel: str) -> tuple[float, int]:
    """Median seconds and resumes of REPEAT runs (after one that learns the start-up)."""
    vm.exec(argv, timeout=300, channel=channel)
    runs = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        r = vm.exec(argv, timeout=300, channel=channel)
        runs.append((time.perf_counter() - start, r.resumes))
        assert r.status == 0, (argv, r.stderr)
    return summary([t for t, _ in runs])["median"], sorted(n for _, n in runs)[len(runs) // 2]


def main() -> None:
    report = Report("exec")
    print("CloudVMI exec: host programs with guest system calls redirected, real Debian 6.1 "
          "guest under QEMU/TCG, both channels (stop-the-world; persistent helper)")
    name = f"be{uuid.uuid4().hex[:6]}"
    g = lab.up(name, kernel="6.1", mem="512M")
    try:
        g.console.check("dd if=/dev/urandom of=/root/big bs=1M count=50 2>/dev/null",
                        timeout=300)
        with attach(name, writable=True) as vm:
            for label, argv, theirs, goal in COMMANDS:
                guest = in_guest(g, theirs, 3 if "50 MiB" in label else 10)
                report.add(f"{label}: in the guest ({theirs})", guest * MS, "ms")
                for channel in ("stop", "persistent"):
                    ours, resumes = timed(vm, argv, channel)
                    ratio = ours / guest
                    report.add(f"{label}: {channel} channel", ours * MS, "ms")
                    report.add(f"{label}: {channel} channel ratio", ratio, "x", "<= 1.5x",
                               ratio <= 1.5)
                    report.add(f"{label}: {channel} channel guest resumes", resumes, "",
                               f"<= {goal}" if goal else "", resumes <= goal if goal else None)
            helper = vm.guest.channel("persistent").helper
            report.add("persistent helper: lists run", helper.lists, "")
            report.add("persistent helper: list round trip (getpid)",
                       _round_trip(vm) * MS, "ms", "~0.1 ms")
    finally:
        lab.down(name)
    print(f"saved {report.save()}")


def _round_trip(vm) -> float:
    """Median seconds of a one-call list through the persistent channel."""
    with vm.guest.channel("persistent") as channel:
        times = []
        for _ in range(200):
            start = time.perf_counter()
            channel.run([GuestCall("getpid")])
            times.append(time.perf_counter() - start)
    return summary(times)["median"]


if __name__ == "__main__":
    main()

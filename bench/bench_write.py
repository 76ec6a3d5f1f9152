"""Writable VMI benchmarks on a real lab guest: injected syscalls, the batched channel,
end-to-end operations and file throughput through the guest.

Run: .venv/bin/python bench/bench_write.py   (boots one 6.1 guest, stops it at the end)
"""

import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(__file__))

from cloudvmi.arch.x86_64.abi import NR  # noqa: E402
from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.vm import attach  # noqa: E402
from cloudvmi.write.session import GuestSession  # noqa: E402

from report import Report, summary, timed  # noqa: E402

MS = 1e3


def main() -> None:
    report = Report("write")
    print("CloudVMI writable operations, real Debian 6.1 guest under QEMU/TCG")
    name = f"bw{uuid.uuid4().hex[:6]}"
    g = lab.up(name, kernel="6.1")
    try:
        with attach(name, writable=True) as vm:
            ops = vm.guest
            inj = ops.injector
            inj.hijack()
            try:
                single = timed(lambda: inj.syscall(NR["getpid"]), 1000)
            finally:
                inj.release()
            s = summary(single)
            report.add("injected syscall (getpid), median", s["median"] * MS, "ms", "<= 10 ms",
                       s["median"] <= 0.010)
            report.add("injected syscall (getpid), p99", s["p99"] * MS, "ms")

            def full() -> None:
                inj.hijack()
                try:
                    inj.syscall(NR["getpid"])
                finally:
                    inj.release()

            report.add("hijack + 1 syscall + restore, median",
                       summary(timed(full, 50))["median"] * MS, "ms")

            calls = 900
            with GuestSession(inj) as session:
                b = session.batch()
                for _ in range(calls):
                    b.add(NR["getpid"])
                batch_times = timed(lambda: session.run(b), 10)
            per_call = summary(batch_times)["median"] / calls
            report.add(f"batched syscall ({calls} a batch), per call", per_call * MS, "ms",
                       "<= 0.5 ms", per_call <= 0.0005)

            g.console.check("i=0; while [ $i -lt 60 ]; do sleep 600$i & i=$((i+1)); done")
            sleepers = [p.pid for p in vm.linux.processes().items
                        if p.cmdline[:1] == ["sleep"] and p.cmdline[1].startswith("600")]
            kills = timed(lambda: ops.kill(sleepers.pop(), 9), 50)
            report.add("kill, end to end", summary(kills)["median"] * MS, "ms")
            report.add("cat /proc/version, end to end",
                       summary(timed(lambda: ops.read_file("/proc/version"), 30))["median"]
                       * MS, "ms")
            one_mib = os.urandom(1 << 20)
            report.add("put 1 MiB, end to end",
                       summary(timed(lambda: ops.write_file("/tmp/b1", one_mib), 20))["median"]
                       * MS, "ms")
            report.add("cat 1 MiB, end to end",
                       summary(timed(lambda: ops.read_file("/tmp/b1"), 20))["median"] * MS, "ms")
            big = os.urandom(32 << 20)
            write_s = min(timed(lambda: ops.write_file("/tmp/b32", big), 3))
            read_s = min(timed(lambda: ops.read_file("/tmp/b32"), 3))
            report.add("file write throughput through the guest (32 MiB)",
                       len(big) / write_s / 1e6, "MB/s")
            report.add("file read throughput through the guest (32 MiB)",
                       len(big) / read_s / 1e6, "MB/s")
            report.add("run /bin/true, end to end",
                       summary(timed(lambda: ops.run(["/bin/true"]), 10))["median"] * MS, "ms")
    finally:
        lab.down(name)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()

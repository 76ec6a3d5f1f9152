"""Read-only core benchmarks on real lab guests: attach, process lists, memory reads.

Run: .venv/bin/python bench/bench_core.py   (boots two 6.1 guests, stops them at the end)
"""

import os
import random
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(__file__))

from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.memory.layout import host_regions  # noqa: E402
from cloudvmi.memory.procmem import ProcessMemory  # noqa: E402
from cloudvmi.vm import attach  # noqa: E402

from report import Report, summary, timed  # noqa: E402

MS = 1e3


def attach_and_list(name: str, cache: str) -> int:
    with attach(name, profile_cache=cache) as vm:
        return len(vm.linux.processes().items)


def physical_throughput(phys, size: int, total: int) -> float:
    """MB/s of random-offset reads of SIZE bytes, TOTAL bytes in all."""
    ram = phys.regions()[-1]
    offsets = [ram.start + random.randrange(0, ram.size - size) & ~4095
               for _ in range(max(1, total // size))]
    read = phys.read

    def run() -> None:
        for o in offsets:  # results dropped, as a consumer that parses and moves on would
            read(o, size)

    samples = timed(run, 3)
    return total / min(samples) / 1e6


def bench_small(report: Report) -> None:
    name = f"bc{uuid.uuid4().hex[:6]}"
    g = lab.up(name, kernel="6.1")
    try:
        cold = []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as empty:
                cold += timed(lambda d=empty: attach_and_list(name, d), 1)
        with tempfile.TemporaryDirectory() as cache:
            attach_and_list(name, cache)
            warm = timed(lambda: attach_and_list(name, cache), 5)
            with attach(name, profile_cache=cache) as vm:
                n = len(vm.linux.processes().items)
                listing = timed(vm.linux.processes, 50)
                vm.pause()
                try:
                    k = vm.linux.kernel
                    from cloudvmi.os.linux.views.processes import TaskReader, processes

                    reader = k.helper(TaskReader)
                    paused = timed(lambda: processes(k), 50)
                    phys = vm.phys
                    mb4k = physical_throughput(phys, 4096, 256 << 20)
                    mb1m = physical_throughput(phys, 1 << 20, 1 << 30)
                    banner = k.symbols.lookup("linux_banner")
                    cached = timed(lambda: k.read(banner, 8), 20000)

                    def uncached() -> None:
                        k.space.cache.invalidate()
                        k.space._walk(banner)

                    walk = timed(uncached, 5000)
                    user = next(p for p in vm.linux.processes().items if p.cmdline)
                    mm = reader.mm.read(k, reader.task.read(k, user.address)["mm"])
                    space = k.user_space(mm["pgd"])
                    user_read = timed(lambda: space.read(mm["arg_start"], 8), 20000)
                finally:
                    vm.resume()
                qmp_regions = vm.phys.regions()
                pm = ProcessMemory(g.pid, host_regions(vm.qmp, qmp_regions))
                pm4k = physical_throughput(pm, 4096, 64 << 20)
                pm.close()
        c, w = summary(cold), summary(warm)
        report.add("cold attach + first process list (no profile)", c["median"], "s",
                   "<= 1 s", c["median"] <= 1.0, f"({n} processes, median of 3)")
        report.add("warm attach + first process list (cached profile)", w["median"], "s",
                   note="(median of 5)")
        report.add(f"process list, {n} processes, paused snapshot", summary(listing)["median"]
                   * MS, "ms", note="(includes QMP stop/cont)")
        report.add(f"process list, {n} processes, data path only",
                   summary(paused)["median"] * MS, "ms", "<= 20 ms",
                   summary(paused)["median"] <= 0.020)
        report.add("physical read 4 KiB, shm mmap", mb4k, "MB/s", ">= 2000", mb4k >= 2000)
        report.add("physical read 1 MiB, shm mmap", mb1m, "MB/s")
        report.add("physical read 4 KiB, /proc/<qemu>/mem", pm4k, "MB/s")
        report.add("virtual read 8 B, kernel, cached translation",
                   summary(cached)["median"] * 1e6, "us")
        report.add("virtual read 8 B, user process, cached translation",
                   summary(user_read)["median"] * 1e6, "us")
        report.add(f"page-table walk ({k.levels}-level), uncached", summary(walk)["median"] * 1e6,
                   "us")
    finally:
        lab.down(name)


def bench_thousand(report: Report) -> None:
    name = f"bk{uuid.uuid4().hex[:6]}"
    lab.up(name, kernel="6.1", extra_procs=950, mem="512M")
    try:
        with tempfile.TemporaryDirectory() as cache, attach(name, profile_cache=cache) as vm:
            n = len(vm.linux.processes().items)
            listing = summary(timed(vm.linux.processes, 10))
            threads = summary(timed(vm.linux.threads, 5))
        report.add(f"process list, {n} processes (with command lines, exe)",
                   listing["median"] * MS, "ms", note="(median of 10)")
        report.add(f"thread list, {n} processes", threads["median"] * MS, "ms")
    finally:
        lab.down(name)


def main() -> None:
    report = Report("core")
    print("CloudVMI read-only core, real Debian 6.1 guests under QEMU")
    bench_small(report)
    bench_thousand(report)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()

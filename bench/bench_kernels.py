"""Cold attach on each kernel of the matrix, located by VMCOREINFO and by scanning alone.

Issue 8's number: a cold attach on 7.2 (place-relative kallsyms, split packages) is no slower
than on 6.1. Each guest is booted in turn (never two at once), its RAM read from the shared
memory file; "scan" runs the same locate on a copy of RAM whose VMCOREINFO note is erased.

Run: .venv/bin/python bench/bench_kernels.py
"""

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from cloudvmi.control.qmp import QMP  # noqa: E402
from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.memory.mapped import MappedFileMemory  # noqa: E402
from cloudvmi.os.linux import kernel as kernel_mod  # noqa: E402
from cloudvmi.os.linux.vmcoreinfo import NOTE_NAME, find_vmcoreinfo  # noqa: E402
from cloudvmi.vm import attach  # noqa: E402

from report import Report, summary, timed  # noqa: E402

KERNELS = ("5.10", "6.1", "6.12", "7.2")


def cold_attach(name: str, repeat: int = 7) -> float:
    """Median seconds from attach to the first process list, with an empty profile cache
    (detaching, which waits for the profile to be cached, is not counted)."""
    samples = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as empty:
            start = time.perf_counter()
            vm = attach(name, profile_cache=empty)
            vm.linux.processes()
            samples.append(time.perf_counter() - start)
            vm.close()
    return summary(samples)["median"]


def locate_both_ways(g, workdir: Path) -> tuple[float, float, str]:
    """(seconds by note, seconds by scan, how) on a paused copy of the guest's RAM."""
    with QMP(str(g.qmp_path)) as qmp:
        qmp.execute("stop")
        copy = workdir / "ram"
        shutil.copyfile(g.shm_path, copy)
        qmp.execute("cont")
    mem = MappedFileMemory(copy)
    how = kernel_mod.locate(mem).stats.how
    by_note = summary(timed(lambda: kernel_mod.locate(mem), 3))["median"]
    notes = [n.paddr for n in find_vmcoreinfo(mem)]
    mem.close()
    with copy.open("r+b") as f:  # erase every note: the scan is all that is left
        for at in notes:
            f.seek(at - 12 - 12)
            f.write(bytes(24 + len(NOTE_NAME)))
    mem = MappedFileMemory(copy)
    scanned = summary(timed(lambda: kernel_mod.locate(mem), 3))["median"]
    assert kernel_mod.locate(mem).stats.how == "scan"
    mem.close()
    return by_note, scanned, how


def main() -> None:
    report = Report("kernels")
    print("Cold attach per kernel (Debian generic kernels, 256 MiB TCG guests, one at a time)")
    cold: dict[str, float] = {}
    for version in KERNELS:
        name = f"bn{uuid.uuid4().hex[:6]}"
        g = lab.up(name, kernel=version)
        try:
            cold[version] = cold_attach(name)
            with tempfile.TemporaryDirectory() as work:
                by_note, scanned, how = locate_both_ways(g, Path(work))
        finally:
            lab.down(name)
        report.add(f"{version}: cold attach + first process list", cold[version], "s",
                   note=f"(located by {how}, median of 7)")
        report.add(f"{version}: locate by VMCOREINFO / by scan", by_note * 1e3, "ms",
                   note=f"/ {scanned * 1e3:.0f} ms by scan alone")
    ratio = cold["7.2"] / cold["6.1"]
    report.add("cold attach 7.2 / 6.1", ratio, "x", "<= 1.0 (no slower)", ratio <= 1.0)
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()

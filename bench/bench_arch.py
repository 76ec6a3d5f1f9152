"""x86-64 and arm64 guests side by side: boot, cold and warm attach, the process list.

    python bench/bench_arch.py            boots one guest per (architecture, kernel) in turn
    python bench/bench_arch.py DUMP...    reads dump-guest-memory files instead (no boot)

Each guest is booted, measured and stopped before the next (arm64 runs under TCG here)."""

import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.vm import attach  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import Report  # noqa: E402

GUESTS = [("x86_64", "6.1"), ("x86_64", "6.12"), ("arm64", "6.1"), ("arm64", "6.12")]
ROUNDS = 20


def measure(target: str, symbols: str | None = None) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for kind in ("cold", "warm"):
            t = time.perf_counter()
            with attach(target, profile_cache=cache, symbols=symbols) as vm:
                vm.linux.ready()
                out[f"attach_{kind}_s"] = round(time.perf_counter() - t, 3)
                out["arch"] = vm.arch.name
                out["paging_levels"] = vm.linux.kernel.levels
                out["release"] = vm.linux.info().release
                t = time.perf_counter()
                for _ in range(ROUNDS):
                    procs = vm.linux.processes()
                out["processes_ms"] = round((time.perf_counter() - t) / ROUNDS * 1000, 2)
                out["processes"] = len(procs.items)
    return out


def main(argv: list[str]) -> None:
    rows = []
    if argv:
        for dump in argv:
            symbols = Path(dump).parent / "symbols"
            rows.append({"target": dump, **measure(dump, str(symbols) if symbols.is_dir()
                                                   else None)})
    for arch, kernel in ([] if argv else GUESTS):
        t = time.perf_counter()
        g = lab.up(f"ba{uuid.uuid4().hex[:6]}", kernel=kernel, arch=arch)
        try:
            boot = round(time.perf_counter() - t, 2)
            rows.append({"target": f"{arch} {kernel}", "boot_s": boot, **measure(g.name)})
        finally:
            lab.down(g.name)
    print(json.dumps(rows, indent=1))
    if not argv:  # guests booted here: kept in bench/RESULTS.md beside the x86-64 figures
        report = Report("arch")
        for r in rows:
            what = f"{r['target']} ({r['paging_levels']}-level, {r['processes']} processes)"
            report.add(f"{what}: boot to workload", r["boot_s"], "s")
            report.add(f"{what}: cold attach", r["attach_cold_s"], "s")
            report.add(f"{what}: warm attach", r["attach_warm_s"], "s")
            report.add(f"{what}: process list", r["processes_ms"], "ms")
        report.save()


if __name__ == "__main__":
    main(sys.argv[1:])

"""Print benchmark figures and keep the latest ones in the repo (bench/results/NAME.json)."""

import json
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeat: int) -> list[float]:
    """Wall-clock seconds of `repeat` calls of fn."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "min": ordered[0],
        "n": len(ordered),
    }


class Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[dict] = []

    def add(self, figure: str, value: float, unit: str, floor: str = "", ok: bool | None = None,
            note: str = "") -> None:
        self.rows.append({"figure": figure, "value": value, "unit": unit, "floor": floor,
                          "ok": ok, "note": note})
        mark = "" if ok is None else ("  ok" if ok else "  BELOW FLOOR")
        print(f"  {figure:<52} {value:>12.3f} {unit:<6} {floor}{mark} {note}", flush=True)

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps({
            "benchmark": self.name,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.node()} {platform.machine()}, "
                       f"{len(__import__('os').sched_getaffinity(0))} cores",
            "rows": self.rows,
        }, indent=1) + "\n")
        write_markdown()
        return path


def write_markdown() -> None:
    """bench/RESULTS.md: every kept result as a table, so the figures read in the repo."""
    lines = ["# Latest benchmark results", "",
             "Written by the bench scripts (`bench/bench_*.py`); raw figures in `results/`.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        lines += [f"## {data['benchmark']} ({data['when']}, {data['machine']})", "",
                  "| figure | value | unit | floor | |", "|---|---:|---|---|---|"]
        for r in data["rows"]:
            verdict = "" if r["ok"] is None else ("ok" if r["ok"] else "**below floor**")
            lines.append(f"| {r['figure']} {r['note']} | {r['value']:.3f} | {r['unit']} | "
                         f"{r['floor']} | {verdict} |")
        lines.append("")
    (RESULTS.parent / "RESULTS.md").write_text("\n".join(lines))

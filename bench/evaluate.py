"""CloudVMI's evaluation in one command: boots its own guests, runs every experiment family
(peers, guest-side overhead, scaling, effectiveness), keeps each family's raw figures as
JSON, and writes EVALUATION.md with its tables and PNG figures.

Run (root, guests boot one at a time):
    flock /work/guest.lock .venv/bin/python bench/evaluate.py            # full: docs/
    .venv/bin/python bench/evaluate.py --quick --out /tmp/ev             # checks it works
    .venv/bin/python bench/evaluate.py --render-only                     # redraw from JSON
    .venv/bin/python bench/evaluate.py --only scaling,effectiveness
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
ROOT = Path(__file__).resolve().parents[1]
# Agents and probes run as programs of their own: they import this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                         os.environ.get("PYTHONPATH")]))

from eval import doc, effectiveness, machine, overhead, peers, plots, scaling  # noqa: E402
from eval.common import Settings  # noqa: E402

FAMILIES = {"peers": peers.run, "overhead": overhead.run, "scaling": scaling.run,
            "effectiveness": effectiveness.run}
DRAW = {"peers": [plots.peers, plots.exec_baseline], "overhead": [plots.overhead],
        "scaling": [plots.scaling], "effectiveness": [plots.effectiveness]}


def render(out: Path) -> Path:
    """EVALUATION.md and its figures from OUT/evaluation/data/*.json."""
    data_dir = out / "evaluation" / "data"
    data = {p.stem: json.loads(p.read_text()) for p in sorted(data_dir.glob("*.json"))}
    if "machine" not in data:
        raise SystemExit(f"no {data_dir}/machine.json: run the experiments first")
    figures = {}
    for family, drawers in DRAW.items():
        if family in data:
            figures[family] = [n for d in drawers for n in d(data[family], out / "evaluation")]
    meta = data.pop("machine")
    text = doc.render({"machine": meta, "elapsed_min": meta.get("elapsed_min", 0), **data},
                      figures, meta.get("quick", False))
    path = out / "EVALUATION.md"
    doc.write(path, text)
    return path


def _earlier_runs(data_dir: Path, chosen: list[str]) -> list[dict]:
    """The runs whose families' figures are still kept beside this run's: a run of some
    families (`--only`) keeps the others' data, so the document says where each came from."""
    try:
        runs = json.loads((data_dir / "machine.json").read_text()).get("runs", [])
    except (OSError, ValueError):
        return []
    out = []
    for run in runs:
        left = [f for f in run.get("families", []) if f not in chosen]
        if left:
            out.append({**run, "families": left})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs",
                        help="folder of EVALUATION.md (figures and data in OUT/evaluation)")
    parser.add_argument("--quick", action="store_true",
                        help="smallest settings, one shared guest: checks the harness only")
    parser.add_argument("--only", help=f"comma-separated families: {', '.join(FAMILIES)}")
    parser.add_argument("--render-only", action="store_true",
                        help="redraw the document and figures from the kept JSON")
    args = parser.parse_args()
    data_dir = args.out / "evaluation" / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        chosen = args.only.split(",") if args.only else list(FAMILIES)
        unknown = set(chosen) - set(FAMILIES)
        if unknown:
            parser.error(f"unknown families: {', '.join(sorted(unknown))}")
        started = time.monotonic()
        meta = {**machine.describe(), "quick": args.quick}
        work = Path(tempfile.mkdtemp(prefix="cloudvmi-eval-"))
        settings = Settings(args.quick, work, log=lambda m: print(m, flush=True))
        try:
            for family in chosen:
                print(f"{family}", flush=True)
                result = FAMILIES[family](settings)
                (data_dir / f"{family}.json").write_text(json.dumps(result, indent=1) + "\n")
        finally:
            settings.close()
            shutil.rmtree(work, ignore_errors=True)
        meta["elapsed_min"] = (time.monotonic() - started) / 60
        this = {"families": chosen, "date": meta["date"], "minutes": meta["elapsed_min"],
                "commit": meta["cloudvmi_commit"]}
        meta["runs"] = _earlier_runs(data_dir, chosen) + [this]
        (data_dir / "machine.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {render(args.out)}")


if __name__ == "__main__":
    main()

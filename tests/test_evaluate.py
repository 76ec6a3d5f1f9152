"""bench/evaluate.py --quick, end to end on one small guest it boots itself: every experiment
family runs, its JSON is kept, the figures are PNG files, EVALUATION.md names the machine and
shows every table and figure, and --render-only rebuilds the same document from the JSON.
Written into a temporary folder: nothing in docs/ is touched."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(ROOT / "bench" / "evaluate.py")]
FAMILIES = ("peers", "overhead", "scaling", "effectiveness")
FIGURES = ("peers.png", "exec.png", "overhead.png", "scaling-processes.png",
           "scaling-memory.png", "scaling-remote.png", "scaling-fleet.png",
           "scaling-injection.png")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The folder a quick evaluation wrote (it boots one guest and stops it)."""
    out = tmp_path_factory.mktemp("evaluation")
    done = subprocess.run([*SCRIPT, "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=1500, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _data(out: Path, name: str) -> dict:
    return json.loads((out / "evaluation" / "data" / f"{name}.json").read_text())


def test_document_tables_and_figures(evaluated):
    text = (evaluated / "EVALUATION.md").read_text()
    machine = _data(evaluated, "machine")
    assert machine["quick"] and machine["cloudvmi_commit"] and machine["qemu"]
    for heading in ("## Machine and versions", "## CloudVMI beside Volatility 3 and drgn",
                    "## Guest-side overhead", "## Scaling", "## Effectiveness",
                    "### Published figures"):
        assert heading in text
    for name in FAMILIES:
        assert f"evaluation/data/{name}.json" in text
    for name in FIGURES:
        png = (evaluated / "evaluation" / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
        assert f"(evaluation/{name})" in text


def test_figures_are_real_measurements(evaluated):
    peers = _data(evaluated, "peers")
    ours = next(r for r in peers["tools"] if r["tool"] == "CloudVMI"
                and r["listing"] == "processes")
    assert ours["ok"] and ours["recall"] == 1.0 and ours["extra"] <= 2, ours  # 2: transient
    assert peers["truth"]["processes"] > 20 and peers["exec"] and peers["operations"]
    overhead = _data(evaluated, "overhead")
    assert {r["condition"] for r in overhead["rows"]} >= {"alone", "guard watch (1 s)"}
    assert all(r["host_s"] > 0 and "error" not in r for r in overhead["rows"])
    scaling = _data(evaluated, "scaling")
    counts = [p["processes"] for p in scaling["processes"]["points"]]
    assert counts[-1] >= counts[0] + 100  # the spawned processes were listed
    assert all(p["errors"] == [] for p in scaling["fleet"]["points"])
    assert scaling["injection"]["syscall"]["n"] == len(scaling["injection"]["syscall_us"])
    effect = _data(evaluated, "effectiveness")
    assert [c["detected"] for c in effect["cases"]] == [True] * len(effect["cases"]), \
        effect["cases"]
    assert all(r["hunt"] == r["fim"] == r["guard"] == r["enforce"] == 0
               for r in effect["clean"]), effect["clean"]


def test_render_only_rebuilds_the_document(evaluated):
    before = (evaluated / "EVALUATION.md").read_text()
    (evaluated / "EVALUATION.md").unlink()
    done = subprocess.run([*SCRIPT, "--render-only", "--out", str(evaluated)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (evaluated / "EVALUATION.md").read_text() == before

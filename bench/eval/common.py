"""What every experiment family shares: its settings, the lab guests it runs on, timing of
calls and of whole programs (wall time and peak memory), and the guest's own clock."""

import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cloudvmi.control.qmp import QMP
from cloudvmi.lab import guest as lab

from report import timed as samples  # noqa: F401 - wall-clock seconds of N calls (bench/)

ROOT = Path(__file__).resolve().parents[2]  # the checkout
CLI = [sys.executable, "-m", "cloudvmi.cli.main"]
VOL = str(Path(sys.executable).with_name("vol"))  # the environment's own Volatility 3


@dataclass
class Settings:
    """How big a run is. `quick` checks the harness end to end on the smallest settings: one
    small guest shared by every family, few points, no downloads."""

    quick: bool
    work: Path  # scratch space for dumps, baselines, caches (removed at the end)
    log: Callable[[str], None] = print
    _shared: lab.LabGuest | None = field(default=None, repr=False)

    def pick(self, quick, full):
        return quick if self.quick else full

    @contextlib.contextmanager
    def guest(self, kernel: str = "6.1", mem: str = "256M", paging: int = 4,
              busy: bool = False) -> Iterator[lab.LabGuest]:
        """A running lab guest: in quick mode the one shared guest (6.1, 256 MiB, 4-level
        paging, idle), else a new one booted for the block and stopped after it. Idle: the
        workload's busy loop would take a whole host core and every figure would measure
        that contention."""
        if self.quick:
            if self._shared is None:
                self._shared = self._boot("6.1", "256M", 4, False)
            yield self._shared
            return
        g = self._boot(kernel, mem, paging, busy)
        try:
            yield g
        finally:
            lab.down(g.name)

    def _boot(self, kernel: str, mem: str, paging: int, busy: bool) -> lab.LabGuest:
        self.log(f"  booting a {kernel} guest ({mem}, {paging}-level paging)")
        return lab.up(f"ev{uuid.uuid4().hex[:6]}", kernel=kernel, mem=mem, paging=paging,
                      busy=busy)

    def close(self) -> None:
        if self._shared is not None:
            lab.down(self._shared.name)
            self._shared = None


def stats(values: list[float]) -> dict:
    """Median, percentiles and spread of VALUES (any unit), for tables and error bars."""
    v = sorted(values)

    def pct(p: float) -> float:
        return v[min(len(v) - 1, int(len(v) * p))]

    return {"n": len(v), "median": statistics.median(v), "min": v[0], "max": v[-1],
            "p25": pct(0.25), "p75": pct(0.75), "p99": pct(0.99), "p999": pct(0.999)}


@dataclass
class Measured:
    """One program run: exit status, wall seconds, peak resident memory (MiB), its output."""

    status: int
    seconds: float
    rss_mib: float
    stdout: str
    stderr: str


def measure(argv: list[str], env: dict | None = None, timeout: float = 1800) -> Measured:
    """Run ARGV; its wall time and its own peak RSS (from wait4, so per child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(proc.returncode, seconds, usage.ru_maxrss / 1024,
                        out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def env_with(**extra: str) -> dict:
    """This environment, this checkout first on the module path, plus EXTRA."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def dump(g: lab.LabGuest, path: Path) -> Path:
    """QEMU's ELF dump of the guest, taken while paused (then let run again). A 4 GiB
    guest takes longer than QMP's usual 10 s."""
    with QMP(str(g.qmp_path), timeout=900) as qmp:
        qmp.execute("stop")
        try:
            qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{path}")
        finally:
            qmp.execute("cont")
    return path


def in_guest_seconds(g: lab.LabGuest, command: str, times: int) -> float:
    """Seconds COMMAND takes inside the guest: the mean of TIMES runs, timed by the guest's
    own uptime clock (10 ms ticks, so TIMES should make the loop last a second or more)."""
    out = g.console.check(f"a=$(cat /proc/uptime); for i in $(seq {times}); do {command} "
                          ">/dev/null; done; b=$(cat /proc/uptime); echo $a $b", timeout=1800)
    start, _, end, _ = (float(x) for x in re.findall(r"[\d.]+", out)[-4:])
    return (end - start) / times


def guest_pids(g: lab.LabGuest) -> set[int]:
    """The pids in the guest's own /proc."""
    out = g.console.check("ls /proc", timeout=300)
    return {int(x) for x in out.split() if x.isdigit()}


def process_count(g: lab.LabGuest) -> int:
    return len(guest_pids(g))

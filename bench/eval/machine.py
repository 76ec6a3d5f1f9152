"""The machine and the versions a run was made with: the document states them beside every
figure, since the same code gives different figures on another host or under KVM."""

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from cloudvmi.lab.accel import kvm_usable

from .common import ROOT


def _first(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict:
    kvm, why = kvm_usable()
    mem_kib = next((int(line.split()[1]) for line in
                    Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
    commit = _first(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    dirty = bool(_first(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]))
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "qemu": _first(["qemu-system-x86_64", "--version"]),
        "accel": "KVM" if kvm else f"TCG ({why})",
        "load_at_start": os.getloadavg()[0],
        "cloudvmi_commit": commit + (" (with local changes)" if dirty else ""),
        "python": platform.python_version(),
        "volatility3": _version("volatility3"), "drgn": _version("drgn"),
        "matplotlib": _version("matplotlib"),
    }

"""Where lab kernels, images and running guests live: a cache outside the repo."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of CloudVMI's cache, reused across runs ($CLOUDVMI_CACHE or ~/.cache/cloudvmi)."""
    root = os.environ.get("CLOUDVMI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cloudvmi"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sub(name: str) -> Path:
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_dir() -> Path:
    """Per-guest state directories (sockets, pid file, console log)."""
    return sub("run")

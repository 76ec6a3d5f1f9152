"""Where CloudVMI keeps files outside the repo: a cache (profiles, lab kernels and images)
that may be deleted, and state (the injection journal) that must survive a crash."""

import os
from pathlib import Path


def _dir(env: str, xdg: str, default: str) -> Path:
    root = os.environ.get(env) or os.path.join(
        os.environ.get(xdg) or os.path.expanduser(default), "cloudvmi")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Root of CloudVMI's cache, reused across runs ($CLOUDVMI_CACHE or ~/.cache/cloudvmi)."""
    return _dir("CLOUDVMI_CACHE", "XDG_CACHE_HOME", "~/.cache")


def state_dir() -> Path:
    """State that keeps guests safe across crashes ($CLOUDVMI_STATE or
    $XDG_STATE_HOME/cloudvmi, ~/.local/state/cloudvmi)."""
    return _dir("CLOUDVMI_STATE", "XDG_STATE_HOME", "~/.local/state")


def cache_sub(name: str) -> Path:
    path = cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_sub(name: str) -> Path:
    path = state_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path

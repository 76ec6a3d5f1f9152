"""Where lab kernels, images and running guests live: a cache outside the repo."""

from pathlib import Path

from cloudvmi.paths import cache_dir, cache_sub

sub = cache_sub


def run_dir() -> Path:
    """Per-guest state directories (sockets, pid file, console log)."""
    return sub("run")


__all__ = ["cache_dir", "sub", "run_dir"]

"""Shared fixtures: real lab guests, booted once per session and stopped by PID afterwards."""

import os
import uuid

import pytest

from cloudvmi.lab import guest as lab

KERNELS = ["5.10", "6.1", "6.12"]


class GuestPool:
    """Boots guests on first use and stops every one it started at the end of the session."""

    def __init__(self) -> None:
        self.guests: dict[tuple, lab.LabGuest] = {}
        self.prefix = f"t{uuid.uuid4().hex[:6]}"

    def get(self, kernel: str = "6.1", **options) -> lab.LabGuest:
        key = (kernel, tuple(sorted(options.items())))
        g = self.guests.get(key)
        if g is None or not g.running():
            name = f"{self.prefix}-{len(self.guests)}-{kernel.replace('.', '')}"
            g = lab.up(name, kernel=kernel, **options)
            self.guests[key] = g
        return g

    def stop(self, g: lab.LabGuest) -> None:
        for key, value in list(self.guests.items()):
            if value is g:
                del self.guests[key]
        lab.down(g.name)

    def stop_all(self) -> None:
        for g in list(self.guests.values()):
            try:
                lab.down(g.name)
            except Exception:  # keep stopping the others
                if g.running():
                    os.kill(g.pid, 9)
        self.guests.clear()


@pytest.fixture(scope="session")
def guests():
    pool = GuestPool()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def profile_dir(tmp_path_factory):
    """A profile cache private to the test session, so the first attach is cold."""
    return tmp_path_factory.mktemp("profiles")

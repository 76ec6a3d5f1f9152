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


def _capture(version: str, root) -> None:
    """Boot a guest, record its own view (/proc/kallsyms, ps), then its RAM while paused."""
    import base64
    import gzip
    import shutil

    from cloudvmi.control.qmp import QMP

    g = lab.up(f"im{uuid.uuid4().hex[:6]}-{version.replace('.', '')}", kernel=version)
    try:
        blob = g.console.check("gzip -c /proc/kallsyms | base64 -w0", timeout=300)
        (root / f"{version}.kallsyms").write_bytes(gzip.decompress(base64.b64decode(blob)))
        (root / f"{version}.ps").write_text(g.console.check("ps -o pid,ppid,comm,args"))
        with QMP(str(g.qmp_path)) as qmp:
            qmp.execute("stop")
            shutil.copyfile(g.shm_path, root / f"{version}.raw")
            qmp.execute("dump-guest-memory", paging=False,
                        protocol=f"file:{root / f'{version}.elf'}")
    finally:
        lab.down(g.name)


@pytest.fixture(scope="session")
def guest_images(tmp_path_factory):
    """guest_images(VERSION) -> a folder with VERSION.raw (RAM, physical address == offset),
    VERSION.elf (QEMU's dump-guest-memory), VERSION.kallsyms and VERSION.ps (the guest's own
    view at that moment), made on first use from a real booted guest."""
    root = tmp_path_factory.mktemp("images")
    made: set[str] = set()

    def get(version: str):
        if version not in made:
            _capture(version, root)
            made.add(version)
        return root

    return get

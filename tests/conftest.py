"""Shared fixtures: images of real lab guests, and the `guest` marker for tests that boot them."""

import uuid

import pytest

from cloudvmi.lab import guest as lab

# Fixtures that boot real lab guests (or capture images from them): a test that uses one,
# directly or through another fixture, is marked `guest`, so `-m "not guest"` selects the
# fast subset truthfully.
BOOTING = {"live", "variant", "fleet", "setup", "guest", "guest_images"}


def pytest_collection_modifyitems(items):
    for item in items:
        if BOOTING & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.guest)


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

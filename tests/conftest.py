"""Shared fixtures: images of real lab guests, and the `guest` marker for tests that boot them."""

import contextlib
import os
import uuid
from pathlib import Path

import pytest
from matrix import ARM64, KERNELS, split

from cloudvmi.lab import guest as lab

# Fixtures that boot real lab guests (or capture images from them): a test that uses one,
# directly or through another fixture, is marked `guest`, so `-m "not guest"` selects the
# fast subset truthfully.
VIEW_KERNELS = KERNELS + ARM64
CORPUS_ENV = "CLOUDVMI_VIEW_CORPUS"  # a folder of VERSION/{guest.elf,guest.raw,truth/}
BOOTING = {"live", "variant", "fleet", "setup", "guest", "guest_images", "viewed", "seen",
           "domain", "guest4", "served", "evaluated"}


def pytest_collection_modifyitems(items):
    for item in items:
        if BOOTING & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.guest)


LARGE_COPY = 32 << 20  # bytes: a guest image or dump, not a test's small files


@pytest.fixture(autouse=True)
def _drop_large_copies(request):
    """Hostile tests corrupt a copy of a guest image (512 MiB) in their tmp_path, and pytest
    keeps every test's tmp_path: over the suite that is tens of GB. Once a test is done, the
    large files it left there go (the small ones stay for a look at a failure)."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    folder = request.getfixturevalue("tmp_path")
    yield
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and path.stat().st_size > LARGE_COPY:
                path.unlink()


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
    corpus = os.environ.get(CORPUS_ENV)

    def get(version: str):
        if version not in made:
            if corpus and (Path(corpus) / version).is_dir():  # a kept image (tests/truth.py)
                for kind in ("raw", "elf"):
                    (root / f"{version}.{kind}").symlink_to(
                        Path(corpus) / version / f"guest.{kind}")
            else:
                _capture(version, root)
            made.add(version)
        return root

    return get



# What tests/test_arm64_live.py compares with beyond the views' truth, asked of the guest
# before it is paused (so its one guest per kernel serves both).
CONSOLE_FACTS = {
    "procview": "cloudvmi-procview -t",
    "machine": "uname -m",
    "cmdline": "cat /proc/cmdline",
    "kallsyms-text": "grep -E ' (_text|_stext)$' /proc/kallsyms || true",
    "iomem": "cat /proc/iomem",
}


def _record_console(g, dest: Path) -> None:
    dest.mkdir()
    for name, command in CONSOLE_FACTS.items():
        (dest / name).write_text(g.console.check(command, timeout=180))


@pytest.fixture(scope="session")
def viewed(tmp_path_factory, profile_dir):
    """viewed(VERSION) -> (vm, truth): a lab guest of VERSION running the workload, its own
    view captured into TRUTH (tests/truth.py), then paused and attached, so what a view reads
    from memory is the moment the guest described. Each version is booted once per session
    and stays paused (a paused guest costs memory, no CPU). With $CLOUDVMI_VIEW_CORPUS set,
    a kept image and its truth are used instead (no boot)."""
    from truth import capture

    from cloudvmi.control.qmp import QMP
    from cloudvmi.vm import attach

    made: dict[str, tuple] = {}
    guests: list = []

    def get(version: str):
        if version in made:
            return made[version]
        corpus = os.environ.get(CORPUS_ENV)
        # "arm64:6.1" is kept as arm64-6.1: a ':' would split its symbols path in two
        if corpus and (Path(corpus) / version.replace(":", "-")).is_dir():
            root = Path(corpus) / version.replace(":", "-")
            symbols = root / "symbols"  # a System.map, for a kernel whose kallsyms lacks data
            made[version] = (attach(str(root / "guest.elf"), profile_cache=profile_dir,
                                    symbols=str(symbols) if symbols.is_dir() else None),
                             root / "truth")
            return made[version]
        arch, kernel = split(version)
        g = lab.up(f"vw{uuid.uuid4().hex[:6]}-{kernel.replace('.', '')}", kernel=kernel,
                   mem="256M" if arch == "arm64" else "512M", arch=arch)
        guests.append(g)
        truth = capture(g, tmp_path_factory.mktemp(f"truth-{version}"))
        if arch == "arm64":
            _record_console(g, truth / "console")
        with QMP(str(g.qmp_path)) as qmp:
            qmp.execute("stop")
        made[version] = (attach(g.name, profile_cache=profile_dir), truth)
        return made[version]

    try:
        yield get
    finally:
        for vm, _ in made.values():
            vm.close()
        for g in guests:
            lab.down(g.name)


@pytest.fixture(scope="module", params=VIEW_KERNELS)
def seen(request, viewed):
    """(vm, truth) for each kernel of the matrix, one module's tests per guest."""
    return viewed(request.param)

"""Debian kernels for lab guests, fetched with apt from a sources list of our own and cached."""

import lzma
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.errors import CloudVMIError, MissingDependency
from cloudvmi.lab.paths import sub

SUITES = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie"}
FLAVOURS = {"generic": "amd64", "cloud": "cloud-amd64"}
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Modules the lab guest loads: small, dependency-free, present in every flavour.
# Loaded in this order (dependencies first): the VLAN stack gives modules that use each
# other (llc <- stp <- garp <- 8021q, mrp <- 8021q), so reference counts are exercised.
LAB_MODULES = ("net/llc/llc.ko", "net/802/stp.ko", "net/802/garp.ko", "net/802/mrp.ko",
               "net/8021q/8021q.ko", "drivers/net/dummy.ko")


@dataclass(frozen=True)
class LabKernel:
    version: str  # "6.1"
    flavour: str  # "generic" | "cloud"
    release: str  # uname -r, e.g. "6.1.0-50-amd64"
    vmlinuz: Path
    modules: tuple[Path, ...]  # uncompressed .ko files to load in the guest


def _apt_options(root: Path) -> list[str]:
    return [
        "-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
        "-o", "APT::Sandbox::User=root",
        "-q",
    ]


def _apt_root() -> Path:
    """A private apt state that knows all three suites, leaving the host's sources alone."""
    root = sub("apt")
    (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = "".join(
        f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n" for suite in SUITES.values()
    )
    lst = root / "sources.list"
    if not lst.exists() or lst.read_text() != sources:
        lst.write_text(sources)
        for f in (root / "lists").glob("*Packages*"):
            f.unlink()
    if not any((root / "lists").glob("*Packages*")):
        _run(["apt-get", *_apt_options(root), "update"], "apt-get update")
    return root


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise MissingDependency(f"{cmd[0]} is needed to {what}: apt-get install {cmd[0]}")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CloudVMIError(f"{what} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def resolve_package(version: str, flavour: str) -> str:
    """The versioned image package the suite's meta-package points at (newest ABI)."""
    if version not in SUITES:
        raise CloudVMIError(f"unknown lab kernel {version!r}; choose from {', '.join(SUITES)}")
    if flavour not in FLAVOURS:
        raise CloudVMIError(f"unknown flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")
    root = _apt_root()
    meta = f"linux-image-{FLAVOURS[flavour]}"
    out = _run(["apt-cache", *_apt_options(root), "show", meta], "look up kernel packages")
    prefix = re.escape(version) + r"[.\-+]"
    for stanza in out.split("\n\n"):
        ver = re.search(r"^Version: (\S+)", stanza, re.M)
        dep = re.search(r"^Depends: (linux-image-\S+)", stanza, re.M)
        if ver and dep and re.match(prefix, ver.group(1)):
            return dep.group(1)
    raise CloudVMIError(f"no {meta} for Linux {version} in the {SUITES[version]} suite")


def fetch(version: str = "6.1", flavour: str = "generic") -> LabKernel:
    """Download (once) and unpack a Debian kernel with the modules the lab loads."""
    kdir = sub("kernels") / f"{version}-{flavour}"
    done = kdir / "release"
    listed = kdir / "modules.list"
    if not done.exists() or not listed.exists() or listed.read_text() != "\n".join(LAB_MODULES):
        package = resolve_package(version, flavour)
        root = _apt_root()
        debdir = sub("debs")
        debs = list(debdir.glob(f"{package}_*.deb"))
        if not debs:
            _run(["apt-get", *_apt_options(root), "download", package], "download " + package,
                 cwd=debdir)
            debs = list(debdir.glob(f"{package}_*.deb"))
        _unpack(debs[0], kdir)
        listed.write_text("\n".join(LAB_MODULES))
        done.write_text(package.removeprefix("linux-image-"))
    release = done.read_text().strip()
    return LabKernel(
        version=version,
        flavour=flavour,
        release=release,
        vmlinuz=kdir / "vmlinuz",
        modules=tuple(sorted(kdir.glob("modules/*.ko"))),
    )


def _unpack(deb: Path, kdir: Path) -> None:
    """Take vmlinuz and the lab modules out of the .deb, decompressing .ko.xz."""
    kdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(kdir / "modules", ignore_errors=True)
    (kdir / "modules").mkdir()
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            name = member.name.lstrip("./")
            if re.fullmatch(r"boot/vmlinuz-.*", name):
                (kdir / "vmlinuz").write_bytes(tar.extractfile(member).read())
                continue
            for order, mod in enumerate(LAB_MODULES):
                if re.fullmatch(rf"(usr/)?lib/modules/[^/]+/kernel/{re.escape(mod)}(\.xz)?", name):
                    blob = tar.extractfile(member).read()
                    if name.endswith(".xz"):
                        blob = lzma.decompress(blob)
                    # The file name's prefix keeps the load order (init loads them sorted).
                    (kdir / "modules" / f"{order:02d}-{Path(mod).name}").write_bytes(blob)
    if not (kdir / "vmlinuz").exists():
        raise CloudVMIError(f"{deb.name} has no boot/vmlinuz")

"""Debian kernels for lab guests, fetched with apt from a sources list of our own and cached."""

import functools
import lzma
import re
import shutil
import struct
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.errors import CloudVMIError, MissingDependency
from cloudvmi.lab.paths import sub

# Suites whose kernels the lab can boot, oldest first. A kernel is asked for by version
# prefix ("6.1", "7.2") or by suite name ("bookworm", "unstable"): nothing here names a
# kernel version, so the next upload to unstable is bootable the day it lands.
SUITES = ("bullseye", "bookworm", "trixie", "unstable")
ALIASES = {"sid": "unstable"}
FLAVOURS = {"generic": "amd64", "cloud": "cloud-amd64", "rt": "rt-amd64"}
# Debian's architecture names and each one's kernel flavours (package suffixes).
ARCHES = {"x86_64": "amd64", "arm64": "arm64"}
ARCH_FLAVOURS = {
    "x86_64": FLAVOURS,
    "arm64": {"generic": "arm64", "cloud": "cloud-arm64", "rt": "rt-arm64"},
}
SUITE_REFRESH = 24 * 3600.0  # seconds before a kernel asked for by suite is looked up again
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
    # The lab kernel's folder: its System.map-RELEASE (kallsyms of arm64 6.1 holds code only)
    vmlinuz: Path  # what QEMU's -kernel takes (an arm64 Image.gz is unpacked to Image)
    modules: tuple[Path, ...]  # uncompressed .ko files to load in the guest
    arch: str = "x86_64"  # "x86_64" or "arm64"

    @property
    def symbols(self) -> Path:
        """Where the build's System.map is (a --symbols directory)."""
        return self.vmlinuz.parent


def _check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise CloudVMIError(f"unknown lab architecture {arch!r}; choose from {', '.join(ARCHES)}")
    return arch


def _apt_options(root: Path, arch: str = "x86_64") -> list[str]:
    return [
        "-o", f"APT::Architecture={ARCHES[arch]}",
        "-o", f"APT::Architectures={ARCHES[arch]}",
        "-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
        "-o", "APT::Sandbox::User=root",
        "-q",
    ]


def _apt_root(max_age: float | None = None, arch: str = "x86_64") -> Path:
    """A private apt state per architecture that knows the lab's suites, leaving the host's
    sources alone; refreshed when older than MAX_AGE seconds (a suite name follows its suite)."""
    root = sub("apt" if arch == "x86_64" else f"apt-{ARCHES[arch]}")
    (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = "".join(
        f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n" for suite in SUITES
    )
    lst = root / "sources.list"
    if not lst.exists() or lst.read_text() != sources:
        lst.write_text(sources)
        for f in (root / "lists").glob("*Packages*"):
            f.unlink()
    lists = list((root / "lists").glob("*Packages*"))
    stale = max_age is not None and lists and time.time() - min(
        f.stat().st_mtime for f in lists) > max_age
    if not lists or stale:
        _run(["apt-get", *_apt_options(root, arch), "update"], "apt-get update")
        for f in (root / "lists").glob("*Packages*"):
            f.touch()
    return root


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise MissingDependency(f"{cmd[0]} is needed to {what}: apt-get install {cmd[0]}")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CloudVMIError(f"{what} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


@functools.cache
def _meta_stanzas(flavour: str, arch: str = "x86_64") -> list[tuple[str, str, list[str]]]:
    """(version, suite, depends) of every linux-image-FLAVOUR meta-package apt knows (asked
    once per process: apt-cache takes seconds)."""
    root = _apt_root(arch=arch)
    meta = f"linux-image-{ARCH_FLAVOURS[arch][flavour]}"
    policy = _run(["apt-cache", *_apt_options(root, arch), "madison", meta],
                  "look up kernel packages")
    suite_of = {}
    for line in policy.splitlines():  # "pkg | version | mirror suite/main amd64 Packages"
        cols = [c.strip() for c in line.split("|")]
        if len(cols) >= 3:
            found = re.search(r"\s(\S+?)/main", " " + cols[2])
            if found:
                suite_of[cols[1]] = found.group(1)
    out = _run(["apt-cache", *_apt_options(root, arch), "show", meta], "look up kernel packages")
    stanzas = []
    for stanza in out.split("\n\n"):
        ver = re.search(r"^Version: (\S+)", stanza, re.M)
        dep = re.search(r"^Depends: (.+)$", stanza, re.M)
        if ver and dep:
            depends = [d.strip().split()[0] for d in dep.group(1).split(",")]
            stanzas.append((ver.group(1), suite_of.get(ver.group(1), "?"), depends))
    return stanzas


def resolve_package(kernel: str, flavour: str, arch: str = "x86_64") -> str:
    """The versioned image package for KERNEL: a version prefix ("7.2") matched against
    every suite's meta-package, or a suite name ("unstable") for that suite's newest."""
    flavours = ARCH_FLAVOURS[_check_arch(arch)]
    if flavour not in flavours:
        raise CloudVMIError(f"unknown flavour {flavour!r}; choose from {', '.join(flavours)}")
    kernel = ALIASES.get(kernel, kernel)
    by_suite = kernel in SUITES
    if not by_suite and not re.fullmatch(r"\d+\.\d+(\.\d+)?", kernel):
        raise CloudVMIError(f"unknown lab kernel {kernel!r}: give a version such as 6.1 or 7.2, "
                            f"or a suite: {', '.join(SUITES)}")
    stanzas = _meta_stanzas(flavour, arch)
    prefix = re.escape(kernel) + r"[.\-+~]"
    for version, suite, depends in stanzas:
        if suite == kernel if by_suite else re.match(prefix, version):
            image = [d for d in depends if re.fullmatch(r"linux-image-\d\S*", d)]
            if image:
                return image[0]
    known = ", ".join(sorted({f"{v.split('-')[0]} ({s})" for v, s, _ in stanzas}))
    raise CloudVMIError(f"no linux-image-{flavours[flavour]} for {kernel!r} in "
                        f"{', '.join(SUITES)}; available: {known}")


def _packages(image: str, arch: str = "x86_64") -> list[str]:
    """The packages holding the image and its modules: the image package itself up to 6.x;
    from 7.x an empty image package that depends on linux-binary-* and linux-modules-*."""
    out = _run(["apt-cache", *_apt_options(_apt_root(arch=arch), arch), "show", image],
               "look up " + image)
    dep = re.search(r"^Depends: (.+)$", out, re.M)
    names = [d.strip().split()[0] for d in dep.group(1).split(",")] if dep else []
    release = image.removeprefix("linux-image-")
    split = [n for n in names if n in (f"linux-binary-{release}", f"linux-modules-{release}")]
    return [image, *split]


def download(package: str, arch: str = "x86_64") -> Path:
    """A package's .deb for ARCH from the lab's suites (downloaded once, kept)."""
    debdir = sub("debs" if arch == "x86_64" else f"debs-{ARCHES[arch]}")
    debs = list(debdir.glob(f"{package}_*.deb"))
    if not debs:
        _run(["apt-get", *_apt_options(_apt_root(arch=arch), arch), "download", package],
             "download " + package, cwd=debdir)
        debs = list(debdir.glob(f"{package}_*.deb"))
    if not debs:
        raise CloudVMIError(f"apt-get download {package} left no .deb")
    return debs[0]


def fetch(kernel: str = "6.1", flavour: str = "generic", arch: str = "x86_64") -> LabKernel:
    """Download (once) and unpack a Debian kernel of ARCH with the modules the lab loads."""
    _check_arch(arch)
    kdir = sub("kernels") / (f"{kernel}-{flavour}" if arch == "x86_64"
                             else f"{kernel}-{flavour}-{ARCHES[arch]}")
    done = kdir / "release"
    listed = kdir / "modules.list"
    package = None
    if ALIASES.get(kernel, kernel) in SUITES:  # a suite moves on: follow it, daily
        _apt_root(max_age=SUITE_REFRESH, arch=arch)
        package = resolve_package(kernel, flavour, arch)
        if done.exists() and done.read_text() != package.removeprefix("linux-image-"):
            done.unlink()
    has_map = arch == "x86_64" or any(kdir.glob("System.map-*"))
    if not done.exists() or not listed.exists() or not has_map or (
            listed.read_text() != "\n".join(LAB_MODULES)):
        package = package or resolve_package(kernel, flavour, arch)
        _unpack([download(p, arch) for p in _packages(package, arch)], kdir)
        _real_system_map(kdir, package, arch)
        listed.write_text("\n".join(LAB_MODULES))
        done.write_text(package.removeprefix("linux-image-"))
    release = done.read_text().strip()
    return LabKernel(
        version=kernel,
        flavour=flavour,
        release=release,
        vmlinuz=kdir / "vmlinuz",
        modules=tuple(sorted(kdir.glob("modules/*.ko"))),
        arch=arch,
    )


def vmlinux(kernel: LabKernel) -> Path:
    """The uncompressed ELF vmlinux inside a lab kernel's bzImage (cached beside it): what a
    user would feed to pahole or objcopy. The setup header says where the payload is."""
    out = kernel.vmlinuz.parent / "vmlinux"
    if out.exists():
        return out
    image = kernel.vmlinuz.read_bytes()
    if image[0x202:0x206] != b"HdrS":
        raise CloudVMIError(f"{kernel.vmlinuz} is not a bzImage")
    setup = (image[0x1F1] or 4) + 1
    offset, length = struct.unpack_from("<II", image, 0x248)
    payload = image[setup * 512 + offset:setup * 512 + offset + length]
    if payload.startswith(b"\xfd7zXZ"):
        elf = lzma.LZMADecompressor().decompress(payload)
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        elf = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    else:
        raise CloudVMIError(f"{kernel.vmlinuz}: payload compressed in a way the lab does not "
                            f"read ({payload[:4].hex()})")
    if not elf.startswith(b"\x7fELF"):
        raise CloudVMIError(f"{kernel.vmlinuz}: the payload is not an ELF vmlinux")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.rename(out)
    return out


def _unpack(debs: list[Path], kdir: Path) -> None:
    """Take vmlinuz (boot/vmlinuz-* up to 6.x, usr/lib/modules/*/vmlinuz from 7.x) and the lab
    modules out of the .debs, decompressing .ko.xz."""
    kdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(kdir / "modules", ignore_errors=True)
    (kdir / "modules").mkdir()
    (kdir / "vmlinuz").unlink(missing_ok=True)
    for deb in debs:
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                              stdout=subprocess.PIPE) as proc, \
                tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                _take(tar, member, kdir)
    if not (kdir / "vmlinuz").exists():
        raise CloudVMIError(f"no vmlinuz in {', '.join(d.name for d in debs)}")
    _gunzip_image(kdir / "vmlinuz")


def _real_system_map(kdir: Path, package: str, arch: str) -> None:
    """A kernel built without CONFIG_KALLSYMS_ALL (Debian's arm64 6.1) keeps only code in
    kallsyms; its variables are in the build's System.map. Debian's image package ships a
    placeholder there, the real one is in the -dbg package: take just that file from it
    (the .deb, 800 MiB of DWARF, is not kept)."""
    maps = list(kdir.glob("System.map-*"))
    configs = list(kdir.glob("config-*"))
    if not maps or not configs or "# CONFIG_KALLSYMS_ALL is not set" not in (
            configs[0].read_text(errors="replace")):
        return
    with maps[0].open("rb") as f:
        if b"The real System.map" not in f.read(200):  # already the real one
            return
    deb = download(f"{package}-dbg".replace("-unsigned-dbg", "-dbg"), arch)
    try:
        _take_one(deb, r"usr/lib/debug/boot/System\.map-[^/]+", maps[0])
    finally:
        deb.unlink(missing_ok=True)


def _take_one(deb: Path, pattern: str, dest: Path) -> bool:
    """Stream DEB's data and write its first member matching PATTERN to DEST (through a
    temporary file renamed into place); stops reading there. Whether it was found."""
    tmp = dest.with_suffix(".tmp")
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as proc, \
            tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:  # stops at the one file: dpkg-deb's broken pipe is expected
            if re.fullmatch(pattern, member.name.lstrip("./")):
                with tar.extractfile(member) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                tmp.rename(dest)
                return True
    return False


def _gunzip_image(path: Path) -> None:
    """arm64's vmlinuz is a gzipped Image: unpack it in place, so QEMU boots it whatever
    its version and the dump and profile code can read the Image header."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        import gzip

        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(gzip.decompress(data))
        tmp.rename(path)


def _take(tar: tarfile.TarFile, member: tarfile.TarInfo, kdir: Path) -> None:
    name = member.name.lstrip("./")
    if re.fullmatch(r"boot/vmlinuz-.*|(usr/)?lib/modules/[^/]+/vmlinuz", name):
        (kdir / "vmlinuz").write_bytes(tar.extractfile(member).read())
        return
    if re.fullmatch(r"boot/(System\.map|config)-[^/]+", name):
        (kdir / Path(name).name).write_bytes(tar.extractfile(member).read())
        return
    for order, mod in enumerate(LAB_MODULES):
        if re.fullmatch(rf"(usr/)?lib/modules/[^/]+/kernel/{re.escape(mod)}(\.xz)?", name):
            blob = tar.extractfile(member).read()
            if name.endswith(".xz"):
                blob = lzma.decompress(blob)
            # The file name's prefix keeps the load order (init loads them sorted).
            (kdir / "modules" / f"{order:02d}-{Path(mod).name}").write_bytes(blob)


def debug_vmlinux(kernel: LabKernel) -> Path:
    """The DWARF vmlinux of a lab kernel, from Debian's `linux-image-RELEASE-dbg` package
    (downloaded once, ~1 GB: only what debuggers such as drgn need; CloudVMI itself reads
    the guest's BTF). Only usr/lib/debug/boot/vmlinux-* is taken out of the package."""
    out = kernel.vmlinuz.parent / "vmlinux-dbg"
    if out.exists():
        return out
    deb = download(f"linux-image-{kernel.release}-dbg", kernel.arch)
    try:
        if not _take_one(deb, r"usr/lib/debug/boot/vmlinux-.*", out):
            raise CloudVMIError(f"no usr/lib/debug/boot/vmlinux-* in {deb.name}")
    finally:
        deb.unlink(missing_ok=True)  # about 1 GB of DWARF for every other file
    return out

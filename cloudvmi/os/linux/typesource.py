"""Kernel types from outside the guest, for kernels that carry no BTF of their own.

Many cloud kernels are built without CONFIG_DEBUG_INFO_BTF (RHEL/CentOS 7 and 8, Ubuntu GA
kernels, Amazon Linux 2, custom builds). Their symbols still come from kallsyms in memory; only
the types are taken from a file the user has: a raw BTF file (BTFHub's layout
DISTRO/VERSION/x86_64/RELEASE.btf, or .btf.tar.xz), a Volatility 3 ISF (.json, .json.xz), or a
vmlinux with a .BTF section or DWARF (converted by pahole). Places to look: --symbols,
$CLOUDVMI_SYMBOLS and "symbols" in the settings file, each a file or a directory.

A file is only a claim: one whose banner or build id names another kernel is refused here, and
the caller reads the guest with the types before accepting them (kernel._check_types).
"""

import hashlib
import lzma
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

from cloudvmi import config
from cloudvmi.errors import ProfileError
from cloudvmi.memory.elfdump import elf_notes
from cloudvmi.paths import cache_sub

ENV = "CLOUDVMI_SYMBOLS"
BTF_MAGIC = b"\x9f\xeb"  # 0xeB9F, little-endian
ELF_MAGIC = b"\x7fELF"
MAX_ENTRIES = 20_000  # directory entries looked at under one search path
MAX_BTF = 64 << 20  # a vmlinux BTF is 5-6 MiB
MAX_COMPRESSED = 256 << 20
MAX_NOTES = 1 << 20  # a vmlinux's .notes: a build id and Xen's few
NT_GNU_BUILD_ID = 3
PAHOLE_TIMEOUT = 900.0


def search_path(explicit: str | os.PathLike | None = None) -> list[Path]:
    """--symbols, then $CLOUDVMI_SYMBOLS, then the settings file's "symbols" (each may list
    several paths separated by ':')."""
    out: list[Path] = []
    for value in (explicit, os.environ.get(ENV), config.setting("symbols")):
        if value:
            out += [Path(p).expanduser() for p in str(value).split(os.pathsep) if p]
    return out


def check_path(path: str | os.PathLike) -> None:
    """Refuse (ValueError) a --symbols PATH that cannot hold types: missing, unreadable, or
    a file that is neither BTF, an ISF, an ELF file nor an archive of them. What it holds is
    checked against the guest's kernel only when one needs it."""
    for part in str(path).split(os.pathsep):
        p = Path(part).expanduser()
        if p.is_dir():
            if not os.access(p, os.R_OK | os.X_OK):
                raise ValueError(f"{p}: directory not readable")
            continue
        try:
            with p.open("rb") as f:
                head = f.read(6)
        except OSError as exc:
            raise ValueError(f"{p}: {exc.strerror}") from None
        if not (p.name.endswith((".json", ".json.xz", ".tar", ".tar.xz"))
                or head.startswith((BTF_MAGIC, ELF_MAGIC, b"\xfd7zXZ"))):
            raise ValueError(f"{p}: neither BTF, an ISF, an ELF file nor a .tar of them")


def release_of(banner: bytes) -> str:
    """uname -r from "Linux version RELEASE (builder) ..."."""
    words = banner.split()
    return words[2].decode("ascii", "replace") if len(words) > 2 else ""


class TypeSources:
    """The places to look for one kernel's types, tried in order."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    @classmethod
    def default(cls, explicit: str | os.PathLike | None = None) -> "TypeSources":
        return cls(search_path(explicit))

    def candidates(self, banner: bytes, build_id: str | None,
                   refused: list[str]) -> Iterator[tuple[bytes, str]]:
        """(BTF blob, where from) for each file that may describe the kernel of BANNER; files
        that name another kernel, or do not load, are added to REFUSED instead."""
        release = release_of(banner)
        for path in self._files(release, refused):
            try:
                yield _load(path, banner, build_id), str(path)
            except ProfileError as exc:
                refused.append(f"{path}: {exc}")

    def none_fit(self, why: str, refused: list[str]) -> str:
        """The error when nothing gave usable types."""
        if not self.paths:
            return (f"{why}; give its types with --symbols PATH or ${ENV} (a BTF file, a "
                    "Volatility 3 ISF or a vmlinux, or a directory of them)")
        detail = "; ".join(refused[:4]) or "nothing there names this kernel"
        return f"{why}, and no types given fit it: {detail}"

    def _files(self, release: str, refused: list[str]) -> Iterator[Path]:
        for path in self.paths:
            if path.is_file():
                yield path
            elif path.is_dir():
                found = _named_for(path, release)
                if not found:
                    refused.append(f"{path}: no file there is named for release {release}")
                yield from found
            else:
                refused.append(f"{path}: no such file or directory")


def _named_for(root: Path, release: str) -> list[Path]:
    """Files under ROOT named for RELEASE: BTF first, then ISF, then vmlinux."""
    ranked: list[tuple[int, str, Path]] = []
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            seen += 1
            if seen > MAX_ENTRIES:
                return [p for _, _, p in sorted(ranked)]
            if name in (f"{release}.btf", f"{release}.btf.tar.xz", f"{release}.btf.xz"):
                rank = 0
            elif release in name and name.endswith((".json", ".json.xz")):
                rank = 1
            elif name == f"vmlinux-{release}" or (name == "vmlinux" and release in folder):
                rank = 2
            else:
                continue
            ranked.append((rank, os.path.join(folder, name), Path(folder) / name))
    return [p for _, _, p in sorted(ranked)]


def _load(path: Path, banner: bytes, build_id: str | None) -> bytes:
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise ProfileError(f"cannot read it ({exc.strerror})") from exc
    name = path.name
    if name.endswith((".json", ".json.xz")):
        return _from_isf(path, banner)
    if head.startswith(ELF_MAGIC):
        return _from_vmlinux(path, banner, build_id)
    if name.endswith((".tar.xz", ".tar")):
        return _from_tar(path, release_of(banner))
    if head.startswith(b"\xfd7zXZ"):
        return _raw_btf(_bounded_xz(path.read_bytes()))
    return _raw_btf(_read_bounded(path))


def _read_bounded(path: Path) -> bytes:
    if path.stat().st_size > MAX_BTF:
        raise ProfileError(f"too large for a BTF file ({path.stat().st_size} bytes)")
    return path.read_bytes()


def _bounded_xz(data: bytes) -> bytes:
    if len(data) > MAX_COMPRESSED:
        raise ProfileError("compressed file too large")
    try:
        out = lzma.LZMADecompressor().decompress(data, MAX_BTF + 1)
    except lzma.LZMAError as exc:
        raise ProfileError(f"not valid xz ({exc})") from exc
    if len(out) > MAX_BTF:
        raise ProfileError("decompresses past any real BTF's size")
    return out


def _raw_btf(blob: bytes) -> bytes:
    if not blob.startswith(BTF_MAGIC):
        raise ProfileError("neither BTF, an ISF nor an ELF file")
    return blob


def _from_tar(path: Path, release: str) -> bytes:
    """BTFHub's RELEASE.btf.tar.xz: one member, RELEASE.btf."""
    if path.stat().st_size > MAX_COMPRESSED:
        raise ProfileError("archive too large")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers()[:64]
                       if m.isfile() and m.name.endswith(".btf") and m.size <= MAX_BTF]
            chosen = [m for m in members if Path(m.name).name == f"{release}.btf"] or members
            if len(chosen) != 1:
                raise ProfileError(f"holds {len(members)} .btf files, none named {release}.btf")
            return _raw_btf(tar.extractfile(chosen[0]).read())
    except (tarfile.TarError, lzma.LZMAError, OSError, EOFError) as exc:
        raise ProfileError(f"not a readable archive ({exc})") from exc


def _from_isf(path: Path, banner: bytes) -> bytes:
    from cloudvmi.os.linux.isf import isf_banner, isf_to_btf, load_isf

    isf = load_isf(path)
    theirs = isf_banner(isf)
    if theirs is not None and theirs.rstrip(b"\n\0") != banner.rstrip(b"\n\0"):
        raise ProfileError(f"its banner is {_short(theirs)}, the guest runs {_short(banner)}")
    return isf_to_btf(isf)


def _short(banner: bytes) -> str:
    return repr(banner.rstrip(b"\n\0")[:120].decode("ascii", "replace"))


def _from_vmlinux(path: Path, banner: bytes, build_id: str | None) -> bytes:
    """The .BTF section of a vmlinux, or its DWARF turned into BTF by pahole (cached)."""
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile

    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            theirs = _elf_build_id(elf)
            if build_id and theirs and theirs.lower() != build_id.lower():
                raise ProfileError(f"its build id is {theirs}, the guest kernel's is {build_id}")
            own = _elf_banner(elf)
            if own is not None and own.rstrip(b"\n\0") != banner.rstrip(b"\n\0"):
                raise ProfileError(f"its banner is {_short(own)}, the guest runs "
                                   f"{_short(banner)}")
            section = elf.get_section_by_name(".BTF")
            if section is not None:
                if section.data_size > MAX_BTF:
                    raise ProfileError("its .BTF section is too large")
                return _raw_btf(section.data())
            if elf.get_section_by_name(".debug_info") is None:
                raise ProfileError("has neither a .BTF section nor DWARF")
    except (ELFError, ConstructError, OSError, ValueError) as exc:  # construct: cut short
        raise ProfileError(f"not a readable ELF file ({exc})") from exc
    return _pahole(path)


def _elf_build_id(elf) -> str | None:
    section = elf.get_section_by_name(".notes") or elf.get_section_by_name(
        ".note.gnu.build-id")
    if section is None or section["sh_type"] != "SHT_NOTE" or section.data_size > MAX_NOTES:
        return None
    for name, kind, desc in elf_notes(section.data(), "<" if elf.little_endian else ">"):
        if kind == NT_GNU_BUILD_ID and name == b"GNU":  # not Xen's
            return desc.hex()
    return None


def _elf_banner(elf) -> bytes | None:
    """linux_banner's bytes, from the section its symbol is defined in."""
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None or not hasattr(symtab, "get_symbol_by_name"):  # a .symtab of another type
        return None
    for symbol in (symtab.get_symbol_by_name("linux_banner") or [])[:1]:
        index = symbol["st_shndx"]
        if not isinstance(index, int):
            return None  # undefined or absolute
        section = elf.get_section(index)
        if section["sh_type"] != "SHT_PROGBITS":
            return None
        at = symbol["st_value"] - section["sh_addr"]  # sh_addr is 0 in an object file
        if not 0 <= at < section["sh_size"]:
            return None
        elf.stream.seek(section["sh_offset"] + at)
        return elf.stream.read(min(512, section["sh_size"] - at)).split(b"\0", 1)[0]
    return None


def _pahole(path: Path) -> bytes:
    """DWARF to BTF with pahole (Debian's dwarves), once per file version."""
    if shutil.which("pahole") is None:
        raise ProfileError("has DWARF but no .BTF section; install pahole "
                           "(apt-get install dwarves) to convert it")
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = cache_sub("types") / f"{key.hexdigest()[:24]}.btf"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        try:
            proc = subprocess.run(["pahole", f"--btf_encode_detached={tmp}", str(path)],
                                  capture_output=True, timeout=PAHOLE_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise ProfileError("pahole did not finish converting its DWARF") from exc
        if proc.returncode != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)
            err = proc.stderr.decode(errors="replace").strip()[-300:]
            raise ProfileError(f"pahole could not convert its DWARF: {err}")
        tmp.rename(out)
    return _raw_btf(_read_bounded(out))

"""A located kernel as a Volatility 3 ISF, for `cloudvmi isf VM -o FILE`: its own BTF and
kallsyms and its banner, so Volatility's Linux plugins run on a guest with no debug package.

Volatility wants the addresses of the ISF as the linker placed them, not as this boot's KASLR
moved them: its LinuxIntelStacker finds init_task in memory (by its "swapper/0" comm) and takes
the physical shift from there, and the virtual one from init_task.files - init_files. So every
symbol is exported relative to the link-time _text (the architecture's default_text); per-cpu
symbols, which KASLR does not move, keep their values.
"""

from __future__ import annotations

import bisect
import gzip
import json
import lzma
import os
from pathlib import Path
from typing import Any

from cloudvmi.errors import GuestMemoryError, ProfileError
from cloudvmi.os.linux.isf import btf_to_isf
from cloudvmi.os.linux.kernel import LinuxKernel

MAX_TAINT_FLAGS = 64  # TAINT_FLAGS_COUNT is 18-20 in every kernel so far
SUFFIXES = (".json", ".json.xz", ".json.gz")


def kernel_isf(kernel: LinuxKernel) -> dict[str, Any]:
    """The ISF of KERNEL: BTF types, kallsyms at link-time addresses, the banner."""
    linked = kernel.profile.symbols(kernel.arch.default_text)
    # The first of several symbols of one name wins, as the kernel's own lookups do.
    symbols = dict(zip(reversed(linked.names), reversed(linked.addresses), strict=True))
    counts = {}
    taint = _taint_flag_count(kernel)
    if taint is not None:
        counts["taint_flags"] = taint
    return btf_to_isf(kernel.btf, symbols, kernel.profile.banner, counts)


def _taint_flag_count(kernel: LinuxKernel) -> int | None:
    """Entries of taint_flags[TAINT_FLAGS_COUNT], a constant BTF does not carry: the
    entries up to the next symbol whose c_true is a taint letter ('P', 'F', ... 'T')."""
    syms = kernel.symbols
    start = syms.get("taint_flags")
    if start is None:
        return None
    try:
        layout = kernel.btf.struct("taint_flag")
        at = layout.offset("c_true")
    except (ProfileError, KeyError):
        return None
    size = layout.size
    if size <= at:
        return None
    addresses = syms.addresses
    i = bisect.bisect_right(addresses, start)
    end = addresses[i] if i < len(addresses) else start + size * MAX_TAINT_FLAGS
    room = min((end - start) // size, MAX_TAINT_FLAGS)
    try:
        data = kernel.read(start, room * size)
    except GuestMemoryError:
        return None
    count = 0
    while count < room and 0x41 <= data[count * size + at] <= 0x5A:
        count += 1
    return count or None


def write_isf(isf: dict[str, Any], path: str | os.PathLike[str]) -> int:
    """Write ISF to PATH, compressed as its suffix says (.json, .json.xz, .json.gz), whole or
    not at all (written aside, then renamed); its size in bytes."""
    path = Path(path)
    name = path.name
    if not name.endswith(SUFFIXES):
        raise ValueError(f"{path}: an ISF file ends in {', '.join(SUFFIXES)}")
    text = json.dumps(isf, separators=(",", ":")).encode()
    if name.endswith(".xz"):
        data = lzma.compress(text, preset=1)  # 5x faster than 6, 25% larger
    elif name.endswith(".gz"):
        data = gzip.compress(text, mtime=0)
    else:
        data = text
    aside = path.with_name(f".{name}.{os.getpid()}.tmp")
    try:
        aside.write_bytes(data)
        os.replace(aside, path)
    finally:
        aside.unlink(missing_ok=True)
    return len(data)

"""Data symbols from a System.map, for kernels whose kallsyms holds code symbols only.

A kernel built without CONFIG_KALLSYMS_ALL (Debian's arm64 6.1 kernels among them) keeps
only functions in kallsyms: no init_task, no linux_banner, no __start_BTF, none of the
variables the views start from. Its build's System.map (in the distribution's kernel
package, /boot/System.map-RELEASE) has them all, at link-time addresses. A map is only a
claim: it is taken when every sampled code symbol of the guest's own kallsyms sits in it at
the same place, one KASLR slide apart; then its symbols, slid, replace the table (the
banner and BTF it points at are checked after, as for kallsyms).
"""

import re
from collections.abc import Iterator
from pathlib import Path

from cloudvmi.errors import ProfileError
from cloudvmi.os.linux.kallsyms import Kallsyms
from cloudvmi.os.linux.kallsyms_names import tables_of

MAX_MAP = 64 << 20  # bytes: a System.map of a distribution kernel is 5-10 MiB
MAX_SYMBOLS = 1_000_000
SAMPLES = 2000  # code symbols of the guest's table checked against a map
KERNEL_SPACE = 0xFFFF_0000_0000_0000  # below: absolute symbols, not slid
DATA_SYMBOLS = ("init_task", "linux_banner")  # a table with these needs no map
_LINE = re.compile(rb"([0-9a-fA-F]{1,16}) ([A-Za-z]) (\S{1,512})")


def needs_map(syms: Kallsyms) -> bool:
    """Whether SYMS lacks the variables every view starts from."""
    return any(syms.get(name) is None for name in DATA_SYMBOLS)


def candidates(paths: list[Path], release: str | None) -> Iterator[Path]:
    """System.map files under PATHS: System.map-RELEASE first, then any System.map*."""
    for path in paths:
        if path.is_file() and path.name.startswith("System.map"):
            yield path
        elif path.is_dir():
            named = sorted(path.glob(f"System.map-{release}")) if release else []
            yield from named
            yield from (p for p in sorted(path.glob("System.map*"))[:64] if p not in named)


def parse(path: Path) -> list[tuple[int, str, str]]:
    """(address, type, name) of each line of a System.map, bounded."""
    with path.open("rb") as f:
        data = f.read(MAX_MAP + 1)
    if len(data) > MAX_MAP:
        raise ProfileError(f"{path}: larger than any System.map")
    out = []
    for line in data.splitlines():
        m = _LINE.fullmatch(line.strip())
        if m is None:
            raise ProfileError(f"{path}: not a System.map (line {len(out) + 1})")
        out.append((int(m[1], 16), m[2].decode(), m[3].decode("latin-1")))
        if len(out) > MAX_SYMBOLS:
            raise ProfileError(f"{path}: more symbols than any kernel has")
    return out


def complete(syms: Kallsyms, paths: list[Path], release: str | None) -> Kallsyms:
    """SYMS itself when it has data symbols; else the first System.map under PATHS that
    agrees with it, slid to this boot. ProfileError when none does."""
    if not needs_map(syms):
        return syms
    tried = []
    for path in candidates(paths, release):
        try:
            return _from_map(syms, parse(path), path)
        except (OSError, ProfileError) as exc:
            tried.append(f"{path}: {exc}")
    detail = "; ".join(tried[:3]) or "no System.map given"
    raise ProfileError("kallsyms holds code symbols only (a kernel built without "
                       "CONFIG_KALLSYMS_ALL): give its build's System.map with --symbols "
                       f"DIR or $CLOUDVMI_SYMBOLS ({detail})")


def _from_map(syms: Kallsyms, rows: list[tuple[int, str, str]], path: Path) -> Kallsyms:
    by_name: dict[str, set[int]] = {}
    for address, _, name in rows:
        by_name.setdefault(name, set()).add(address)
    stext = syms.get("_stext")
    linked = by_name.get("_stext")
    if stext is None or not linked or len(linked) != 1:
        raise ProfileError("no single _stext to place it by")
    slide = (stext - next(iter(linked))) % (1 << 64)
    names = syms.names
    step = max(1, len(names) // SAMPLES)
    checked = 0
    for i in range(0, len(names), step):
        want = syms.addresses[i]
        if want < KERNEL_SPACE:
            continue
        if (want - slide) % (1 << 64) not in by_name.get(names[i], ()):
            raise ProfileError(f"another build: {names[i]} is not where the guest has it")
        checked += 1
    if checked < 100:
        raise ProfileError("too few symbols to compare")
    placed = sorted(((a + slide) % (1 << 64) if a >= KERNEL_SPACE else a, t, n)
                    for a, t, n in rows)
    tables = tables_of([t + n for _, t, n in placed])
    return Kallsyms(tables, [a for a, _, _ in placed], table_paddr=syms.table_paddr)

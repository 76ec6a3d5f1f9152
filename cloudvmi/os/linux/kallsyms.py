"""Kernel symbols from the kernel's own compressed kallsyms tables, found in physical memory.

No System.map, debug info or per-version offsets: the tables that back /proc/kallsyms sit in
the kernel image's .rodata, which is physically contiguous, so they are found by scanning
guest RAM for the token table and decoded there. scripts/kallsyms.c emits them as

    older (5.10, 6.1):  offsets, relative_base, num_syms, names, markers, [seqs_of_names],
                        token_table, token_index
    newer (6.12):       num_syms, names, markers, token_table, token_index, offsets,
                        relative_base, seqs_of_names
    newest (7.x):       the same without relative_base: each offset is relative to its own
                        place in kallsyms_offsets (offset_to_ptr)

each aligned to 8 bytes, with seqs_of_names absent (5.10), 3 bytes big-endian an entry (Debian's
6.1, a backport) or 4 bytes. Rather than trusting a version number, every placement is tried
and the data must prove it: token_index, markers, num_syms, name lengths, sorted addresses.

Memory is treated as hostile: every loop is bounded, every index checked, and anything that
does not add up is rejected; only ProfileError (never IndexError or a hang) reaches the caller.
"""

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, compress, repeat
from operator import add, eq

from cloudvmi.errors import CloudVMIError, ProfileError
from cloudvmi.memory.base import PhysicalMemory, Region
from cloudvmi.os.linux.kallsyms_names import NameTables, is_permutation, unpack_seqs

# The token table holds every byte value used in a name as its own one-char token, so token
# indices 0x30..0x39 are "0".."9": ten NUL-terminated digits in a row are a rare, cheap anchor.
ANCHOR = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00"
ANCHOR_INDEX = 0x30
MAX_SYMS = 1 << 21                  # far above any real kernel (~170k for Debian 6.12)
MAX_MARKERS = (MAX_SYMS + 255) // 256
MAX_TOKEN_LEN = 256                 # u16 token_index caps the whole table at 64 KiB anyway
WINDOW_ENTRY = 2 + 512              # KSYM_NAME_LEN caps a compressed name (and its length)
MAX_BLOCK = 256 * WINDOW_ENTRY      # bytes of names between two markers
MAX_NAMES_BYTES = 64 << 20          # all of kallsyms_names (2.3 MiB for Debian 6.12)
MAX_PAD = 8                         # tables are aligned to at most 8 bytes (ALGN)
MAX_ANCHORS = 1 << 14               # anchor hits tried before giving up on a full scan
MAX_NAME_STARTS = 64                # names-start candidates tried per markers placement
MAX_SEQS_COUNTS = 8                 # seqs_of_names lengths tried per width
PHYS_ALIGN = 2 << 20                # x86-64 physical KASLR moves the kernel in 2 MiB steps
MAX_HINT_PROBES = 4096              # 2 MiB steps tried around a hint before a full scan
_PRINTABLE = bytes(range(0x21, 0x7F))


class _Reject(Exception):
    """This candidate placement is not a kallsyms table (internal, never escapes).

    STAGE says how far the candidate got, so the error names the most convincing failure.
    """

    def __init__(self, message: str, stage: int = 0) -> None:
        super().__init__(message)
        self.stage = stage


class Kallsyms:
    """The symbol table, in table order (sorted by address). Names come either as lists (a
    cache, a test) or as the kernel's compressed tables, expanded when asked for."""

    def __init__(self, names: "list[str] | NameTables", addresses: list[int], types: str = "",
                 table_paddr: int = 0, relative_to: int | None = None) -> None:
        if isinstance(names, NameTables):
            self.tables: NameTables | None = names
            self._names: list[str] | None = None
            self._types: str | None = None
        else:
            self.tables, self._names, self._types = None, list(names), types
        self.addresses = addresses
        self.table_paddr = table_paddr  # kallsyms_token_table's: a hint for the next attach
        # Place-relative tables (7.x) give addresses relative to kallsyms_offsets' own virtual
        # address, unknown from physical memory alone: then this is that table's physical
        # address, and the addresses are relative to it until rebased.
        self.relative_to = relative_to
        self._by_name: dict[str, int] | None = None
        self._found: dict[str, int | None] = {}

    def _expand(self) -> None:
        entries = self.tables.all()
        self._types = "".join(e[0] for e in entries)
        self._names = [e[1:] for e in entries]

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self._expand()
        return self._names

    @property
    def types(self) -> str:
        if self._types is None:
            self._expand()
        return self._types

    def name_at(self, i: int) -> str:
        return self._names[i] if self._names is not None else self.tables.name(i)

    def __len__(self) -> int:
        return len(self.addresses)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Kallsyms) and (
            self.addresses, self.table_paddr, self.relative_to, self.names, self.types) == (
            other.addresses, other.table_paddr, other.relative_to, other.names, other.types)

    __hash__ = None  # type: ignore[assignment]

    def _index(self) -> dict[str, int]:
        if self._by_name is None:
            # Reversed so the first (lowest-address) of duplicate names wins, like the kernel.
            self._by_name = dict(zip(reversed(self.names), reversed(self.addresses),
                                     strict=True))
        return self._by_name

    def get(self, name: str, default: int | None = None) -> int | None:
        if self._by_name is None and self.tables is not None and self.tables.seqs is not None:
            if name not in self._found:  # by seqs_of_names, as the kernel looks names up
                i = self.tables.find(name)
                self._found[name] = None if i is None else self.addresses[i]
            found = self._found[name]
            return default if found is None else found
        return self._index().get(name, default)

    def lookup(self, name: str) -> int:
        """Address of NAME; KeyError if the kernel has no such symbol."""
        found = self.get(name)
        if found is None:
            raise KeyError(f"kernel symbol {name!r} not found")
        return found

    def symbolize(self, address: int) -> tuple[str, int] | None:
        """Nearest symbol at or below ADDRESS and the offset into it; None below the first."""
        i = bisect.bisect_right(self.addresses, address) - 1
        if i < 0:
            return None
        i = bisect.bisect_left(self.addresses, self.addresses[i], 0, i)  # first alias, as kernel
        return self.name_at(i), address - self.addresses[i]

    def aliases(self, address: int) -> list[str]:
        """Every name at exactly ADDRESS (a function often has several: __x64_sys_getpid and
        __do_sys_getpid), in table order; empty when no symbol starts there."""
        lo = bisect.bisect_left(self.addresses, address)
        hi = bisect.bisect_right(self.addresses, address, lo)
        return [self.name_at(i) for i in range(lo, hi)]

    def next_address(self, address: int) -> int | None:
        """The first symbol address above ADDRESS: where the object at ADDRESS ends at the
        latest (kallsyms has no sizes). None above the last symbol."""
        i = bisect.bisect_right(self.addresses, address)
        return self.addresses[i] if i < len(self.addresses) else None

    def with_addresses(self, addresses: list[int]) -> "Kallsyms":
        """The same names at other addresses (another boot's slide), sharing what was expanded
        and keeping the compressed tables (a profile is made of them)."""
        if self.tables is None:
            return Kallsyms(self.names, addresses, self.types, self.table_paddr)
        out = Kallsyms(self.tables, addresses, "", self.table_paddr)
        out._names, out._types = self._names, self._types
        return out

    def rebased(self, table_virt: int) -> "Kallsyms":
        """The absolute table, once kallsyms_offsets' virtual address is known."""
        if self.relative_to is None:
            return self
        return self.with_addresses(list(map(add, self.addresses, repeat(table_virt))))

    def to_cache(self) -> dict:
        """JSON-able; keep table_paddr to pass as the hint on the next attach."""
        return {"version": 1, "table_paddr": self.table_paddr, "names": list(self.names),
                "addresses": list(self.addresses), "types": self.types,
                "relative_to": self.relative_to}

    @classmethod
    def from_cache(cls, d: dict) -> "Kallsyms":
        """Rebuild from to_cache(); a cache that does not hold together is a ProfileError."""
        try:
            names, addresses, types = list(d["names"]), list(d["addresses"]), d["types"]
            table_paddr, relative_to = d["table_paddr"], d.get("relative_to")
            low = -(1 << 63) if relative_to is not None else 0
            ok = (d.get("version") == 1 and isinstance(types, str) and isinstance(table_paddr, int)
                  and isinstance(relative_to, int | None)
                  and len(names) == len(addresses) == len(types)
                  and all(isinstance(n, str) for n in names)
                  and all(isinstance(a, int) and low <= a < 1 << 64 for a in addresses)
                  and all(a <= b for a, b in zip(addresses, addresses[1:], strict=False)))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProfileError(f"kallsyms cache is malformed: {exc!r}") from exc
        if not ok:
            raise ProfileError("kallsyms cache is malformed")
        return cls(names, addresses, types, table_paddr, relative_to)


def find_kallsyms(memory: PhysicalMemory, hint: int | None = None) -> Kallsyms:
    """Find and decode kallsyms in guest RAM; HINT is a table_paddr from an earlier boot."""
    for found in kallsyms_candidates(memory, hint):
        return found
    raise AssertionError("unreachable: kallsyms_candidates raises when it finds nothing")


def kallsyms_at(memory: PhysicalMemory, token_table: int,
                offsets: tuple[int, int] | None = None, num_syms: int | None = None
                ) -> Kallsyms:
    """Decode the tables whose kallsyms_token_table starts at TOKEN_TABLE (a physical address
    the kernel gave, e.g. in VMCOREINFO): the same proofs as a scan, at one place. OFFSETS,
    (physical, virtual) address of kallsyms_offsets, places a place-relative (7.x) table at
    once; it must then be there. NUM_SYMS, the count the kernel gave, is the one length a
    seqs_of_names before the token table is looked for at (instead of searched)."""
    region = _region_of(memory.regions(), token_table)
    if region is None:
        raise ProfileError(f"kallsyms_token_table {token_table:#x} is outside RAM")
    span = _Span(memory, region)
    try:
        head = span.read(token_table, min(ANCHOR_INDEX * MAX_TOKEN_LEN + len(ANCHOR),
                                          region.end - token_table))
        at = head.find(ANCHOR)
        if at < 0:
            raise _Reject("no token table there")
        found = _decode_at(span, token_table + at, offsets, num_syms)
    except _Reject as exc:
        raise ProfileError(f"kallsyms at {token_table:#x}: {exc}") from None
    if found.table_paddr != token_table:
        raise ProfileError(f"kallsyms_token_table is at {found.table_paddr:#x}, "
                           f"not {token_table:#x}")
    return found


def kallsyms_candidates(memory: PhysicalMemory, hint: int | None = None,
                        within: tuple[int, int] | None = None) -> Iterator[Kallsyms]:
    """Every self-consistent kallsyms table, in the order find_kallsyms tries them. A guest
    can plant a consistent fake: callers that can cross-check (page tables, BTF) take the
    first that passes. WITHIN (start, end) limits the scan to where the kernel image is
    known to be. Raises ProfileError when there is none at all."""
    regions = memory.regions()
    reasons: list[tuple[int, str]] = []
    tried: set[int] = set()
    found_any = False
    if hint is not None:
        for anchor in _anchors_near_hint(memory, regions, hint):
            tried.add(anchor)
            found = _try_anchor(memory, regions, anchor, reasons)
            if found is not None:
                found_any = True
                yield found
    count = 0
    for anchor in memory.find(ANCHOR, *(within or ())):
        if anchor in tried:
            continue
        count += 1
        if count > MAX_ANCHORS:
            raise ProfileError(f"kallsyms: gave up after {MAX_ANCHORS} token-table look-alikes "
                               "(guest memory may be hostile)")
        found = _try_anchor(memory, regions, anchor, reasons)
        if found is not None:
            found_any = True
            yield found
    if found_any:
        return
    reasons.sort(key=lambda r: -r[0])  # stable: the furthest-got candidates, in scan order
    detail = f"; closest candidates: {'; '.join(r for _, r in reasons[:3])}" if reasons else ""
    raise ProfileError(f"kallsyms tables not found in guest memory{detail}")


def _anchors_near_hint(memory: PhysicalMemory, regions: list[Region],
                       hint: int) -> Iterator[int]:
    """Anchors at the hint and at 2 MiB steps either side of it, nearest first."""
    span = ANCHOR_INDEX * MAX_TOKEN_LEN + len(ANCHOR)
    for step in range(MAX_HINT_PROBES):
        start = hint + (step + 1) // 2 * PHYS_ALIGN * (1 if step % 2 else -1)  # 0, +1, -1, ..
        region = _region_of(regions, start)
        if region is None:
            continue
        try:
            data = memory.read(start, min(span, region.end - start))
        except CloudVMIError:
            continue
        i = data.find(ANCHOR)
        if i >= 0:
            yield start + i


def _region_of(regions: list[Region], address: int) -> Region | None:
    for r in regions:
        if r.start <= address < r.end:
            return r
    return None


def _try_anchor(memory: PhysicalMemory, regions: list[Region], anchor: int,
                reasons: list[tuple[int, str]]) -> Kallsyms | None:
    region = _region_of(regions, anchor)
    if region is None:
        return None
    try:
        return _decode_at(_Span(memory, region), anchor)
    except _Reject as exc:
        reasons.append((exc.stage, f"{anchor:#x}: {exc}"))
        return None


class _Span:
    """Reads confined to the RAM region holding the anchor: .rodata never spans a hole."""

    def __init__(self, memory: PhysicalMemory, region: Region) -> None:
        self.memory, self.start, self.end = memory, region.start, region.end

    def read(self, address: int, size: int) -> bytes:
        if size < 0 or address < self.start or address + size > self.end:
            raise _Reject(f"table would run outside RAM at {address:#x}+{size:#x}")
        try:
            data = self.memory.read(address, size)
        except CloudVMIError as exc:
            raise _Reject(str(exc)) from exc
        if len(data) != size:
            raise _Reject(f"short read at {address:#x}")
        return data

    def read_back(self, end: int, size: int) -> tuple[int, bytes]:
        """Up to SIZE bytes ending at END, clipped to the region: (start, data)."""
        start = max(self.start, end - size)
        return start, self.read(start, max(0, end - start))

    def zeros(self, address: int, size: int) -> bool:
        """Whether [address, address+size) is zero padding (False outside the region)."""
        try:
            return not self.read(address, size).strip(b"\0")
        except _Reject:
            return False


@dataclass
class _Tokens:
    start: int      # kallsyms_token_table
    end: int        # one past its last NUL
    index: int      # kallsyms_token_index
    tokens: list[str]


def _decode_at(span: _Span, anchor: int, offsets: tuple[int, int] | None = None,
               num_syms: int | None = None) -> Kallsyms:
    tok = _parse_tokens(span, anchor)
    best = _Reject("token table found, but no kallsyms_markers before it", 1)
    for mstart, markers, known_n, seqs_at in _markers_candidates(span, tok, num_syms):
        if best.stage < 2:
            best = _Reject(f"no kallsyms_num_syms and kallsyms_names fit the {len(markers)} "
                           f"kallsyms_markers at {mstart:#x}", 2)
        for names_start, n, num_syms_at in _names_candidates(span, mstart, markers, known_n, tok):
            try:
                tables = _prove_names(span, names_start, n, mstart, markers, tok.tokens)
            except _Reject as exc:
                best = _Reject(f"{n} names at {names_start:#x}: {exc}", 3)
                continue
            try:
                addresses, relative_to, offsets_end = _find_addresses(span, n, num_syms_at, tok,
                                                                      offsets)
            except _Reject as exc:
                best = _Reject(f"{n} names at {names_start:#x} decode, but {exc}", 4)
                continue
            tables.seqs = _seqs(span, n, seqs_at, offsets_end)
            if tables.seqs is not None and not tables._ordered():
                tables.seqs = None
            return Kallsyms(tables, addresses, "", tok.start, relative_to)
    raise best


def _seqs(span: _Span, n: int, seqs_at: tuple[int, int] | None,
          offsets_end: int) -> list[int] | None:
    """kallsyms_seqs_of_names (6.2+, Debian's 6.1): where the markers search met it, or after
    kallsyms_offsets (and relative_base), 3 bytes an entry; None when there is none."""
    places = [seqs_at] if seqs_at else []
    for pad in range(MAX_PAD):
        places += [(offsets_end + pad, 3), (offsets_end + pad, 4)]
    for start, width in places:
        try:  # the first and last entries first: most places fail there
            ends = unpack_seqs(span.read(start, width) + span.read(start + width * (n - 1),
                                                                  width), width)
            if max(ends) >= n:
                continue
            seqs = unpack_seqs(span.read(start, width * n), width)
        except _Reject:
            continue
        if is_permutation(seqs):
            return seqs
    return None


def _parse_tokens(span: _Span, anchor: int) -> _Tokens:
    """The token table around ANCHOR, proven by a token_index that matches it entry for entry."""
    tail = 256 - ANCHOR_INDEX
    data = span.read(anchor, min(tail * MAX_TOKEN_LEN + MAX_PAD + 512, span.end - anchor))
    parts = data.split(b"\0", tail)
    if len(parts) <= tail:
        raise _Reject("token table has no end")
    fwd = parts[:tail]
    if not all(fwd) or b"".join(fwd).translate(None, _PRINTABLE):
        raise _Reject("token table holds empty or unprintable tokens")
    end = anchor + sum(map(len, fwd)) + tail
    # kallsyms_token_index follows the table after at most 7 bytes of zero padding.
    for pad in range(MAX_PAD):
        where, rel = end + pad, end + pad - anchor
        if rel + 512 > len(data) or data[end - anchor:rel].strip(b"\0"):
            break
        index = struct.unpack_from("<256H", data, rel)
        start = anchor - index[ANCHOR_INDEX]
        if index[0] != 0 or not 0 < anchor - start <= ANCHOR_INDEX * MAX_TOKEN_LEN:
            continue
        try:
            table = span.read(start, end - start)
        except _Reject:
            continue
        toks = table.split(b"\0")
        if len(toks) != 257 or toks[256] or not all(toks[:256]):
            continue
        if tuple(accumulate((len(t) + 1 for t in toks[:255]), initial=0)) != index:
            continue
        if table.translate(None, _PRINTABLE + b"\0"):
            continue
        return _Tokens(start, end, where, [t.decode("ascii") for t in toks[:256]])
    raise _Reject("no kallsyms_token_index matches the token table")


def _markers_ok(markers: tuple[int, ...] | list[int]) -> bool:
    """Markers start at 0 and step by one block of 256 names (2 to WINDOW_ENTRY bytes each)."""
    return bool(markers) and markers[0] == 0 and markers[-1] <= MAX_NAMES_BYTES and all(
        512 <= b - a <= MAX_BLOCK for a, b in zip(markers, markers[1:], strict=False))


def _markers_candidates(span: _Span, tok: _Tokens, num_syms: int | None = None
                        ) -> Iterator[tuple[int, list[int], int | None, tuple[int, int] | None]]:
    """(markers start, markers, num_syms if known, (seqs_of_names start, width) if met) for
    every placement before the token table.

    Markers either end right before the token table or before a seqs_of_names between them,
    whose length is NUM_SYMS when the kernel said so, else searched for.
    """
    for pad in range(MAX_PAD):
        end = tok.start - pad
        if pad and not span.zeros(end, pad):
            break
        markers = _markers_ending_at(span, end)
        if markers is not None:
            yield end - 4 * len(markers), markers, None, None
    for width in (3, 4):
        for pad in range(MAX_PAD):
            end = tok.start - pad
            if pad and not span.zeros(end, pad):
                break
            lengths = (_permutation_lengths(span, end, width) if num_syms is None
                       else _permutation_of(span, end, width, num_syms))
            for n in lengths:
                seqs_start = end - width * n
                k = (n + 255) // 256
                for pad2 in range(MAX_PAD):
                    mend = seqs_start - pad2
                    if pad2 and not span.zeros(mend, pad2):
                        break
                    try:
                        raw = span.read(mend - 4 * k, 4 * k)
                    except _Reject:
                        break
                    markers = list(struct.unpack(f"<{k}I", raw))
                    if _markers_ok(markers):
                        yield mend - 4 * k, markers, n, (seqs_start, width)


def _markers_ending_at(span: _Span, end: int) -> list[int] | None:
    """The markers array ending at END: walk back over decreasing blocks down to marker 0."""
    _, raw = span.read_back(end, 4 * MAX_MARKERS)
    count = len(raw) // 4
    if not count:
        return None
    words = struct.unpack_from(f"<{count}I", raw, len(raw) - 4 * count)
    i = count - 1
    while i > 0 and words[i] != 0:
        step = words[i] - words[i - 1]
        if not 512 <= step <= MAX_BLOCK or words[i] > MAX_NAMES_BYTES:
            return None
        i -= 1
    return list(words[i:]) if words[i] == 0 else None


def _permutation_of(span: _Span, end: int, width: int, n: int) -> Iterator[int]:
    """N, if the N entries before END are a permutation of range(N)."""
    if not 0 < n <= MAX_SYMS:
        return
    try:
        values = unpack_seqs(span.read(end - width * n, width * n), width)
    except _Reject:
        return
    if is_permutation(values):
        yield n


def _permutation_lengths(span: _Span, end: int, width: int) -> Iterator[int]:
    """Each N for which the N entries before END are a permutation of range(N) (seqs_of_names).

    Reads backwards in growing chunks; a running maximum (in C) finds the few N where the
    entries so far could be 0..N-1, and a set confirms. Stops once the maximum passes
    MAX_SYMS, which garbage does at once.
    """
    chunk = 1 << 12
    seen: set[int] = set()
    values: list[int] = []  # nearest to END first
    checked = 0
    best = -1
    found = 0
    while len(values) < MAX_SYMS and best < MAX_SYMS:
        have = len(values)
        n = min(chunk, MAX_SYMS - have, (end - width * have - span.start) // width)
        if n <= 0:
            return
        raw = span.read(end - width * (have + n), width * n)
        new = unpack_seqs(raw, width)[::-1]
        running = list(accumulate(new, max, initial=best))[1:]
        values.extend(new)
        best = running[-1]
        for c in compress(range(have + 1, have + n + 1), map(eq, running, range(have, have + n))):
            seen.update(values[checked:c])
            checked = c
            if len(seen) == c:
                found += 1
                yield c
                if found >= MAX_SEQS_COUNTS:
                    return
        chunk = min(chunk * 2, 1 << 18)


def _names_candidates(span: _Span, mstart: int, markers: list[int], known_n: int | None,
                      tok: _Tokens) -> Iterator[tuple[int, int, int]]:
    """(names start, num_syms, where num_syms is) for every u32 count just before a names start.

    kallsyms_num_syms directly precedes kallsyms_names (maybe padded), so the names start is
    where a plausible count sits 4 or 8 bytes before; the first block must then end exactly at
    the second marker.
    """
    k = len(markers)
    if known_n is not None:
        counts = range(known_n, known_n + 1) if 256 * (k - 1) < known_n <= 256 * k else range(0)
    else:
        counts = range(256 * (k - 1) + 1, 256 * k + 1)
    last = markers[-1]
    hi = mstart - last - 2                       # the last block holds at least one name
    lo = hi - MAX_BLOCK - MAX_PAD
    wstart, window = span.read_back(hi, hi - lo + 8)
    tried = 0
    # Find counts by their top three bytes: one search per possible value of N >> 8.
    for top in sorted({c >> 8 for c in (*counts[:1], *counts[-1:])}):
        needle = struct.pack("<I", top)[:3]
        at = window.find(needle, 1)
        while at >= 0:
            (n,) = struct.unpack_from("<I", window, at - 1)
            pos = wstart + at - 1
            at = window.find(needle, at + 1)
            if n not in counts:
                continue
            for gap in (4, 8):
                start = pos + gap
                if lo <= start <= hi and (gap == 4 or span.zeros(pos + 4, 4)):
                    tried += 1
                    if tried > MAX_NAME_STARTS:
                        return
                    if _first_block_fits(span, start, n, mstart, markers):
                        yield start, n, pos


def _entry_span(blob: bytes, pos: int) -> tuple[int, int]:
    """(first token, end) of the name entry at POS: a ULEB128 length of 1 or 2 bytes."""
    size = len(blob)
    if pos >= size:
        raise _Reject("kallsyms_names runs past its end")
    length = blob[pos]
    pos += 1
    if length & 0x80:
        if pos >= size or blob[pos] & 0x80:
            raise _Reject("bad name length in kallsyms_names")
        length = (length & 0x7F) | blob[pos] << 7
        pos += 1
    if not length or pos + length > size:
        raise _Reject("name entry runs past kallsyms_names")
    return pos, pos + length


def _first_block_fits(span: _Span, start: int, n: int, mstart: int, markers: list[int]) -> bool:
    block = min(n, 256)
    target = markers[1] if len(markers) > 1 else None
    limit = target if target is not None else mstart - start
    try:
        blob = span.read(start, min(limit, mstart - start))
        pos = 0
        for _ in range(block):
            pos = _entry_span(blob, pos)[1]
    except _Reject:
        return False
    if target is not None:
        return pos == target
    return 0 <= mstart - (start + pos) < MAX_PAD


def _prove_names(span: _Span, start: int, n: int, mstart: int, markers: list[int],
                 tokens: list[str]) -> NameTables:
    """The N names between START and the markers, proved on a sample (NameTables.prove);
    they are expanded when asked for."""
    blob = span.read(start, mstart - start)
    try:
        tables = NameTables(tokens, blob, markers, n)
        tables.prove(MAX_PAD)
    except ProfileError as exc:
        raise _Reject(str(exc)) from None
    return tables


def _find_addresses(span: _Span, n: int, num_syms_at: int, tok: _Tokens,
                    known: tuple[int, int] | None = None) -> tuple[list[int], int | None, int]:
    """kallsyms_offsets, before num_syms (old) or after token_index, decoded against
    kallsyms_relative_base where one follows (5.x, 6.x), else place-relative (7.x):
    (addresses, None, end) or (addresses relative to the table, the table's physical
    address, end), END being where the tables after it may start."""
    last = "no kallsyms_offsets placement decodes to sorted addresses"
    unbased: dict[int, tuple[int, ...]] = {}
    places = _offsets_places(span, n, num_syms_at, tok.index + 512)
    if known is not None:  # where the kernel said the table is: tried first (sort is stable)
        places.sort(key=lambda p: p[0] != known[0])
    for start, base_at in places:
        try:
            offsets = unbased.get(start) or struct.unpack(f"<{n}i", span.read(start, 4 * n))
        except _Reject as exc:
            last = str(exc)
            continue
        unbased[start] = offsets
        try:
            (base,) = struct.unpack("<Q", span.read(base_at, 8))
        except _Reject:
            continue
        if base >> 56 != 0xFF:  # a kernel virtual address, so not padding or a torn read
            last = f"kallsyms_relative_base {base:#x} is not a kernel address"
            continue
        addresses = _addresses(offsets, base)
        if addresses is not None:
            return addresses, None, base_at + 8
    for start, offsets in unbased.items():  # no base fits: try each entry against its place
        if known is not None and start != known[0]:
            continue  # KNOWN says where the table is, and so where its entries point
        addresses = _place_relative(offsets, known[1] if known else 0)
        if addresses is not None:
            return addresses, None if known else start, start + 4 * n
    raise _Reject(last + ", nor as place-relative offsets")


def _place_relative(offsets: tuple[int, ...], place: int = 0) -> list[int] | None:
    """Entry i holds (symbol address - address of entry i); sorted by address, within the
    span of one kernel image (1 GiB on x86-64)."""
    head = list(map(add, offsets[:256], range(0, 1024, 4)))  # most wrong places fail here
    if not head or not _sorted(head):
        return None
    relative = list(map(add, offsets, range(place, place + 4 * len(offsets), 4)))
    if relative[-1] - relative[0] < 1 << 30 and _sorted(relative):
        return relative
    return None


def _offsets_places(span: _Span, n: int, num_syms_at: int,
                    after_index: int) -> list[tuple[int, int]]:
    """(offsets start, relative_base address) pairs, zero padding allowed between tables.

    The 8-byte aligned relative_base (ALGN) comes first; the rest cover unaligned builds.
    """
    places = []
    base_at = num_syms_at - 8  # old order: offsets, pad, relative_base, num_syms
    for pad in range(MAX_PAD):
        if pad and not span.zeros(base_at - pad, pad):
            break
        places.append((base_at - pad - 4 * n, base_at))
    for pad in range(MAX_PAD):  # new order: token_index, pad, offsets, pad, relative_base
        if pad and not span.zeros(after_index, pad):
            break
        start = after_index + pad
        for pad2 in range(MAX_PAD):
            if pad2 and not span.zeros(start + 4 * n, pad2):
                break
            places.append((start, start + 4 * n + pad2))
    return sorted(places, key=lambda p: p[1] % 8 != 0)  # stable: smallest padding first


def _sorted(values: list[int]) -> bool:
    return values == sorted(values)  # timsort checks an already sorted list in one C pass


def _addresses(offsets: tuple[int, ...], base: int) -> list[int] | None:
    """Decode base-relative offsets; the table is sorted by address, which picks the encoding.

    Plain: base + (u32)offset, where base is the first symbol (offset 0). Absolute per-cpu:
    offsets >= 0 are absolute (per-cpu symbols, first), negative ones are base - 1 - offset.
    """
    if not offsets or base == 0:
        return None
    negative = next((i for i, o in enumerate(offsets) if o < 0), len(offsets))
    if negative < len(offsets) and offsets[negative] == -1 and _sorted(
            list(offsets[:negative])):
        tail = offsets[negative:]
        if max(tail) < 0 and base - 1 - tail[-1] < 1 << 64:
            absolute = list(offsets[:negative])
            relative = [base - 1 - o for o in tail]
            if _sorted(relative) and (not absolute or absolute[-1] <= relative[0]):
                return absolute + relative
    if offsets[0] == 0:
        unsigned = [o & 0xFFFFFFFF for o in offsets[:256]]
        if _sorted(unsigned):
            unsigned = [o & 0xFFFFFFFF for o in offsets]
            if base + unsigned[-1] < 1 << 64 and _sorted(unsigned):
                return [base + o for o in unsigned]
    return None

"""kallsyms' compressed names, expanded only when asked for, as the kernel does.

A 7.x kernel has 200,000 symbols and 5 MB of names; a cold attach looks up a few hundred.
The names stay as the kernel keeps them (token table, kallsyms_names, markers every 256
names, and from 6.2 kallsyms_seqs_of_names, the symbols in name order): a name is expanded from
its block's marker, and a lookup by name is a binary search through seqs_of_names, 18 names
deep. Blocks already walked and names already expanded are kept.

The tables come from guest memory: every expansion is bounded and checked, and a damaged
entry is a ProfileError, never an IndexError.
"""

import random
import struct
from array import array

from cloudvmi.errors import ProfileError

BLOCK = 256  # names between two markers
MAX_EXPANDED = 256 << 20  # characters of all names once expanded (5 MB for Debian 7.2)
SAMPLE_BLOCKS = 16  # blocks expanded in full when the tables are first proved
SAMPLE_ORDER = 64  # neighbouring pairs of seqs_of_names checked for name order


class NameTables:
    """The names of one kallsyms table, by index (table order) or by name."""

    def __init__(self, tokens: list[str], blob: bytes, markers: list[int], count: int,
                 seqs: list[int] | None = None) -> None:
        if len(tokens) != 256 or count > BLOCK * len(markers) or count <= BLOCK * (
                len(markers) - 1):
            raise ProfileError("kallsyms tables do not hold together")
        self.tokens = tokens
        self.blob = blob
        self.markers = markers
        self.count = count
        self.seqs = seqs  # index of the j-th symbol in name order, or None (before 6.2)
        self._blocks: dict[int, list[int]] = {}
        self._entries: dict[int, str] = {}
        self._all: list[str] | None = None

    def __len__(self) -> int:
        return self.count

    # -- one name ----------------------------------------------------------------------------
    def _block(self, k: int) -> list[int]:
        """Where each entry of block K starts, and where the block ends."""
        starts = self._blocks.get(k)
        if starts is None:
            blob = self.blob
            pos = self.markers[k]
            starts = []
            try:
                for _ in range(min(BLOCK, self.count - BLOCK * k)):
                    starts.append(pos)
                    length = blob[pos]
                    if length & 0x80:
                        length = (length & 0x7F) | blob[pos + 1] << 7
                        pos += 1
                    pos += 1 + length
            except IndexError:
                raise ProfileError(f"kallsyms_names block {k} runs past its end") from None
            if pos > len(blob):
                raise ProfileError(f"kallsyms_names block {k} runs past its end")
            starts.append(pos)
            self._blocks[k] = starts
        return starts

    def entry(self, i: int) -> str:
        """Symbol I as the kernel stores it: its type letter, then its name."""
        text = self._entries.get(i)
        if text is None:
            if not 0 <= i < self.count:
                raise IndexError(i)
            starts = self._block(i // BLOCK)
            pos, end = starts[i % BLOCK], starts[i % BLOCK + 1]
            blob = self.blob
            skip = 2 if blob[pos] & 0x80 else 1
            text = "".join(map(self.tokens.__getitem__, blob[pos + skip:end]))
            if len(text) < 2:
                raise ProfileError(f"kallsyms entry {i} is empty")
            self._entries[i] = text
        return text

    def name(self, i: int) -> str:
        return self.entry(i)[1:]

    def kind(self, i: int) -> str:
        return self.entry(i)[0]

    # -- by name -----------------------------------------------------------------------------
    def find(self, name: str) -> int | None:
        """Index of the first (lowest-address) symbol called NAME, by binary search through
        seqs_of_names; None when there is none. Needs seqs (check has_order first)."""
        seqs = self.seqs
        lo, hi = 0, len(seqs)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.name(seqs[mid]) < name:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(seqs) and self.name(seqs[lo]) == name:
            return seqs[lo]
        return None

    # -- all names ---------------------------------------------------------------------------
    def all(self) -> list[str]:
        """Every entry (type letter and name), in table order, expanded once."""
        if self._all is None:
            lengths = bytes(min(len(t), 255) for t in self.tokens)
            if len(self.blob) * max(lengths) > MAX_EXPANDED and sum(
                    self.blob.translate(lengths)) > MAX_EXPANDED:
                raise ProfileError("kallsyms_names would expand past any real kernel's")
            self._all = self._expand_all()
            self._entries.clear()
        return self._all

    def _expand_all(self) -> list[str]:
        """One tight pass over all names; each block must start at its marker. The loop leans
        on exceptions: a bad length shows as a block that misses its marker or an IndexError."""
        blob, count = self.blob, self.count
        full: list[str] = []
        append = full.append
        join = "".join
        tok = self.tokens.__getitem__
        pos = 0
        try:
            for k, marker in enumerate(self.markers):
                if pos != marker:
                    raise ProfileError(f"kallsyms_markers[{k}] does not match kallsyms_names")
                for _ in range(min(BLOCK, count - BLOCK * k)):
                    length = blob[pos]
                    if length & 0x80:
                        length = (length & 0x7F) | blob[pos + 1] << 7
                        pos += 1
                    pos += 1
                    end = pos + length
                    if end > len(blob):
                        raise IndexError
                    append(join(map(tok, blob[pos:end])))
                    pos = end
        except IndexError:
            raise ProfileError("kallsyms_names runs past its end") from None
        if not all(full):
            raise ProfileError("empty kallsyms entry")
        return full

    # -- proof -------------------------------------------------------------------------------
    def prove(self, end_slack: int) -> None:
        """Check the tables where a guest could have faked them, without expanding 200,000
        names: the first and last blocks and random others expand to letters and names, each
        ends at the next marker, the last ends within END_SLACK bytes of padding of the
        blob's end, and seqs_of_names is in name order at random places (else it is dropped
        and lookups use a full index)."""
        blocks = len(self.markers)
        chosen = {0, blocks - 1} | set(random.Random().sample(range(blocks),
                                                                min(blocks, SAMPLE_BLOCKS)))
        for k in sorted(chosen):
            starts = self._block(k)
            if k + 1 < blocks and starts[-1] != self.markers[k + 1]:
                raise ProfileError(f"kallsyms_markers[{k + 1}] does not match kallsyms_names")
            for i in range(BLOCK * k, min(self.count, BLOCK * (k + 1))):
                text = self.entry(i)
                if not (text[0].isascii() and text[0].isalpha()):
                    raise ProfileError("symbol types are not letters")
        last = self._block(blocks - 1)[-1]
        if not 0 <= len(self.blob) - last < end_slack or self.blob[last:].strip(b"\0"):
            raise ProfileError("kallsyms_names does not end at kallsyms_markers")
        if self.seqs is not None and not self._ordered():
            self.seqs = None

    def _ordered(self) -> bool:
        seqs = self.seqs
        if len(seqs) != self.count:
            return False
        if self.count < 2:
            return True
        rng = random.Random()
        picks = [rng.randrange(self.count - 1) for _ in range(min(SAMPLE_ORDER, self.count - 1))]
        # The first pair always: a table read from the padding before it starts out of order.
        return all(self.name(seqs[j]) <= self.name(seqs[j + 1]) for j in [0, *picks])

    # -- cache ---------------------------------------------------------------------------
    def pack(self) -> tuple[dict, bytes]:
        """(small JSON-able part, the names blob and seqs_of_names as bytes) for a cache."""
        seqs = b"" if self.seqs is None else array("I", self.seqs).tobytes()
        meta = {"tokens": self.tokens, "markers": self.markers, "count": self.count,
                "blob": len(self.blob), "seqs": None if self.seqs is None else len(seqs)}
        return meta, self.blob + seqs

    @classmethod
    def unpack(cls, meta: dict, payload: bytes) -> "NameTables":
        try:
            size = int(meta["blob"])
            seqs = None
            if meta["seqs"] is not None:  # kept as an array: indexed, never listed whole
                seqs = array("I")
                seqs.frombytes(payload[size:size + int(meta["seqs"])])
            tables = cls([str(t) for t in meta["tokens"]], payload[:size],
                         [int(m) for m in meta["markers"]], int(meta["count"]), seqs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"corrupt cached symbol names: {exc}") from exc
        if len(tables.blob) != size or (seqs is not None and len(seqs) != tables.count):
            raise ProfileError("corrupt cached symbol names: truncated")
        return tables


def unpack_seqs(raw: bytes, width: int) -> list[int]:
    """Entries of seqs_of_names: 3 bytes big-endian (the kernel's), or u32 little-endian."""
    if width == 3:
        wide = bytearray(len(raw) // 3 * 4)
        wide[0::4], wide[1::4], wide[2::4] = raw[2::3], raw[1::3], raw[0::3]
        raw = bytes(wide)
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def is_permutation(values: list[int]) -> bool:
    """Whether VALUES may be seqs_of_names: indices 0..n-1, each in range, summing as a
    permutation does. Not proved distinct (a set of 200,000 costs more than it protects: a
    hostile order can only make lookups miss, and NameTables.prove samples the order), but
    the sum refuses the table read one entry early, from the padding before it (a 0 in
    front, the last entry lost), which min and max let through."""
    n = len(values)
    return bool(n) and min(values) == 0 and max(values) == n - 1 and sum(values) == \
        n * (n - 1) // 2


def tables_of(entries: list[str]) -> NameTables:
    """NameTables holding ENTRIES (type letter and name each) uncompressed: one token per
    byte. For symbol tables that come from outside the kernel (a System.map)."""
    tokens = [chr(i) for i in range(256)]
    blob = bytearray()
    markers = []
    for i, entry in enumerate(entries):
        if i % BLOCK == 0:
            markers.append(len(blob))
        raw = entry.encode("latin-1", "replace")
        if len(raw) >= 0x80:
            blob += bytes(((len(raw) & 0x7F) | 0x80, len(raw) >> 7))
        else:
            blob.append(len(raw))
        blob += raw
    seqs = sorted(range(len(entries)), key=lambda i: (entries[i][1:], i))
    return NameTables(tokens, bytes(blob), markers or [0], len(entries), seqs)

"""kallsyms discovery: synthetic tables in every layout, hostile tables, and real guest dumps."""

import contextlib
import random
import struct
import time
from collections import Counter
from itertools import accumulate
from pathlib import Path

import pytest
from matrix import KERNELS

from cloudvmi.errors import ProfileError
from cloudvmi.memory.base import PhysicalMemory, Region
from cloudvmi.os.linux.kallsyms import ANCHOR, Kallsyms, find_kallsyms
from cloudvmi.os.linux.vmcoreinfo import find_vmcoreinfo

KBASE = 0xFFFFFFFF9A000000  # a KASLR-slid _text
OLD = ["offsets", "relative_base", "num_syms", "names", "markers", "seqs", "token_table",
       "token_index"]
NEW = ["num_syms", "names", "markers", "token_table", "token_index", "offsets",
       "relative_base", "seqs"]
NEWEST = ["num_syms", "names", "markers", "token_table", "token_index", "offsets", "seqs"]
TABLE_VIRT = KBASE + 0x1234560  # where a place-relative (7.x) kallsyms_offsets is linked


class BytesMemory(PhysicalMemory):
    """Guest RAM held in a bytes object; counts full scans so tests can see the hint work."""

    def __init__(self, data: bytes, base: int = 0) -> None:
        self.data = bytes(data)
        self.scans = 0
        super().__init__([Region(base, len(data), 0)])

    def _read_at(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]

    def find(self, needle: bytes, start: int = 0, end: int | None = None):
        self.scans += 1
        return super().find(needle, start, end)


# --- a tiny scripts/kallsyms.c ---------------------------------------------------------------

def make_symbols(count: int = 700, percpu: bool = True) -> list[tuple[int, str, str]]:
    """Sorted (address, type, name): per-cpu symbols at 0.., then text and data, with aliases,
    duplicate static names and one name long enough to need a two-byte length."""
    rng = random.Random(1234)
    words = ["sched", "irq", "page", "alloc", "free", "mutex", "lock", "init", "x86", "ip6",
             "v4l2", "zone", "tcp", "qdisc", "0day", "Jiffy", "K9", "__pfx_", "vfs", "xyz"]
    syms = []
    if percpu:
        syms += [(0x1000 * i, "A", f"percpu_var{i}") for i in range(20)]
    addr = KBASE
    for i in range(count):
        name = "_".join(rng.choice(words) for _ in range(rng.randint(1, 4))) + f"{i:x}"
        syms.append((addr, rng.choice("TtDdRrBbW"), name))
        if i % 50 == 0:
            syms.append((addr, "t", "static_helper"))  # duplicate names, first is lowest
        if i % 97 == 0:
            syms.append((addr, "T", f"alias_{i}"))      # same address, different name
        addr += rng.randint(1, 0x400)
    syms.append((addr, "T", "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                                    for _ in range(300))))
    syms.append((addr + 0x40, "D", "_end"))
    return syms


def _tokens(full: list[str]) -> tuple[list[bytes], dict[str, int]]:
    tokens = [b""] * 256
    for c in range(0x21, 0x7F):
        tokens[c] = bytes([c])
    free = [i for i in range(256) if not tokens[i]]
    pairs = Counter(s[i:i + 2] for s in full for i in range(len(s) - 1))
    pairmap = {}
    for slot, (pair, _) in zip(free, pairs.most_common(len(free) // 2), strict=False):
        tokens[slot] = pair.encode()
        pairmap[pair] = slot
    for slot in free:
        tokens[slot] = tokens[slot] or f"~{slot:02x}".encode()  # never used, but present
    return tokens, pairmap


def _encode(s: str, pairmap: dict[str, int]) -> bytes:
    out, i = bytearray(), 0
    while i < len(s):
        slot = pairmap.get(s[i:i + 2])
        if slot is not None and i + 1 < len(s):
            out.append(slot)
            i += 2
        else:
            out.append(ord(s[i]))
            i += 1
    return bytes(out)


def build_tables(syms, order=OLD, seqs_width=4, abs_percpu=True, align=8, base=KBASE):
    """The kallsyms tables as scripts/kallsyms.c lays them out: (blob, offsets of each table).
    Without relative_base in ORDER, offsets are place-relative to TABLE_VIRT (7.x)."""
    full = [t + name for _, t, name in syms]
    tokens, pairmap = _tokens(full)
    names, markers = bytearray(), []
    for i, s in enumerate(full):
        if i % 256 == 0:
            markers.append(len(names))
        enc = _encode(s, pairmap)
        n = len(enc)
        names += bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7])
        names += enc
    if abs_percpu:
        relbase = next(a for a, _, _ in syms if a >= 1 << 32)
        offs = [a if a < 1 << 32 else relbase - a - 1 for a, _, _ in syms]
    else:
        relbase = syms[0][0]
        offs = [a - relbase for a, _, _ in syms]
    slide = base - KBASE
    if "relative_base" not in order:
        offs = [a - (TABLE_VIRT + 4 * i) for i, (a, _, _) in enumerate(syms)]
    seqs = sorted(range(len(syms)), key=lambda i: (syms[i][2], syms[i][0]))
    seq_bytes = (b"".join(struct.pack(">I", s)[1:] for s in seqs) if seqs_width == 3
                 else struct.pack(f"<{len(seqs)}I", *seqs))
    parts = {
        "offsets": struct.pack(f"<{len(offs)}i", *[o if o < 1 << 31 else o - (1 << 32)
                                                   for o in offs]),
        "relative_base": struct.pack("<Q", relbase + slide),
        "num_syms": struct.pack("<I", len(syms)),
        "names": bytes(names),
        "markers": struct.pack(f"<{len(markers)}I", *markers),
        "seqs": seq_bytes if seqs_width else b"",
        "token_table": b"".join(t + b"\0" for t in tokens),
        "token_index": struct.pack("<256H", *accumulate((len(t) + 1 for t in tokens[:255]),
                                                        initial=0)),
    }
    out, where = bytearray(), {}
    for name in order:
        if name == "seqs" and not seqs_width:
            continue
        out += bytes(-len(out) % align)
        where[name] = len(out)
        out += parts[name]
    return bytes(out), where


def image(blob: bytes, at: int = 0x23458, size: int = 0x80000, seed: int = 7,
          decoys: bool = True) -> bytes:
    """RAM of random junk with BLOB at AT and, before it, a few anchors that lead nowhere."""
    rng = random.Random(seed)
    ram = bytearray(rng.randbytes(size))
    if decoys:
        for pos in (0x100, 0x5000, 0x9001):
            ram[pos:pos + len(ANCHOR) + 300] = ANCHOR + rng.randbytes(300)
        fake_tokens = b"".join(bytes([c, 0]) for c in range(0x21, 0x30))
        ram[0x12000:0x12000 + 600] = (fake_tokens + ANCHOR + b"ab\0" * 250)[:600]
    ram[at:at + len(blob)] = blob
    return bytes(ram)


def expect(found: Kallsyms, syms, base=KBASE) -> None:
    slide = base - KBASE
    assert found.names == [n for _, _, n in syms]
    assert found.types == "".join(t for _, t, _ in syms)
    assert found.addresses == [a if a < 1 << 32 else a + slide for a, _, _ in syms]


# --- synthetic tables ------------------------------------------------------------------------

@pytest.mark.parametrize("order", [OLD, NEW], ids=["old-order", "new-order"])
@pytest.mark.parametrize("seqs_width", [0, 3, 4])
@pytest.mark.parametrize("abs_percpu", [True, False], ids=["abs-percpu", "plain"])
def test_every_layout_decodes(order, seqs_width, abs_percpu):
    syms = make_symbols(percpu=abs_percpu)
    blob, where = build_tables(syms, order, seqs_width, abs_percpu)
    mem = BytesMemory(image(blob))
    found = find_kallsyms(mem)
    expect(found, syms)
    assert found.table_paddr == 0x23458 + where["token_table"]


@pytest.mark.parametrize("seqs_width", [0, 4])
def test_place_relative_layout_decodes(seqs_width):
    """7.x: no relative_base; each entry is relative to itself. The table's own virtual
    address is unknown from RAM, so addresses come relative to it until rebased."""
    syms = make_symbols(percpu=False)
    blob, where = build_tables(syms, NEWEST, seqs_width, abs_percpu=False)
    found = find_kallsyms(BytesMemory(image(blob)))
    assert found.relative_to == 0x23458 + where["offsets"]
    expect(found.rebased(TABLE_VIRT), syms)
    assert found.rebased(TABLE_VIRT).relative_to is None


@pytest.mark.parametrize("align", [1, 4])
def test_unaligned_tables(align):
    syms = make_symbols(300)
    blob, _ = build_tables(syms, OLD, 3, align=align)
    expect(find_kallsyms(BytesMemory(image(blob, at=0x23457))), syms)


def test_small_table_single_marker():
    syms = make_symbols(60)
    assert len(syms) < 256
    for order in (OLD, NEW):
        blob, _ = build_tables(syms, order, 0)
        expect(find_kallsyms(BytesMemory(image(blob))), syms)


def test_lookup_symbolize_and_duplicates():
    syms = make_symbols()
    found = find_kallsyms(BytesMemory(image(build_tables(syms)[0])))
    assert len(found) == len(syms)
    helpers = [a for a, _, n in syms if n == "static_helper"]
    assert found.lookup("static_helper") == min(helpers)
    assert found.get("no_such_symbol") is None
    assert found.get("no_such_symbol", 5) == 5
    with pytest.raises(KeyError):
        found.lookup("no_such_symbol")
    addr = found.lookup("_end")
    assert found.symbolize(addr + 3) == ("_end", 3)
    assert found.symbolize(0x1000 + 8) == ("percpu_var1", 8)
    alias = found.lookup("alias_97")
    name, off = found.symbolize(alias + 1)
    assert off == 1 and found.lookup(name) == alias and name != "alias_97"  # first alias wins
    plain = find_kallsyms(BytesMemory(image(build_tables(make_symbols(percpu=False),
                                                         abs_percpu=False)[0])))
    assert plain.symbolize(KBASE - 1) is None


def test_cache_round_trip_and_malformed_cache():
    import json

    found = find_kallsyms(BytesMemory(image(build_tables(make_symbols(100))[0])))
    again = Kallsyms.from_cache(json.loads(json.dumps(found.to_cache())))
    assert again == found and again.lookup("_end") == found.lookup("_end")
    bad = found.to_cache()
    bad["addresses"] = bad["addresses"][::-1]
    for broken in (bad, {}, {"version": 1}, [], {**found.to_cache(), "types": 3},
                   {**found.to_cache(), "names": found.names[:-1]}):
        with pytest.raises(ProfileError):
            Kallsyms.from_cache(broken)


def test_hint_finds_moved_tables_without_a_scan():
    syms = make_symbols(300)
    blob, where = build_tables(syms, NEW, 0)
    first = find_kallsyms(BytesMemory(image(blob, at=0x10238, size=0x600000)))
    step = 2 << 20  # the next boot: physical KASLR moved the kernel by 4 MiB
    mem = BytesMemory(image(blob, at=0x10238 + 2 * step, size=0x600000))
    moved = find_kallsyms(mem, hint=first.table_paddr)
    assert mem.scans == 0
    assert moved.table_paddr == first.table_paddr + 2 * step
    expect(moved, syms)
    # a hint that leads nowhere falls back to the scan
    mem = BytesMemory(image(blob, at=0x10238, size=0x600000))
    assert find_kallsyms(mem, hint=0x12345).table_paddr == first.table_paddr
    assert mem.scans == 1


def test_kallsyms_at_a_high_region_base():
    syms = make_symbols(300)
    blob, _ = build_tables(syms, NEW, 4)
    expect(find_kallsyms(BytesMemory(image(blob), base=0x100000000)), syms)


# --- hostile memory --------------------------------------------------------------------------

def _hostile(blob: bytes, **kw) -> None:
    mem = BytesMemory(image(blob, **kw))
    start = time.perf_counter()
    with pytest.raises(ProfileError):
        find_kallsyms(mem)
    assert time.perf_counter() - start < 5


def _patched(blob: bytes, at: int, data: bytes) -> bytes:
    return blob[:at] + data + blob[at + len(data):]


@pytest.mark.timeout(60)
def test_hostile_token_index_not_increasing():
    blob, where = build_tables(make_symbols(300))
    idx = where["token_index"]
    _hostile(_patched(blob, idx + 2 * 0x40, struct.pack("<2H", 0x300, 0x200)))
    _hostile(_patched(blob, idx, struct.pack("<H", 4)))  # index[0] != 0


@pytest.mark.timeout(60)
def test_hostile_names_run_past_the_end():
    syms = make_symbols(300)
    blob, where = build_tables(syms, OLD, 0)
    last_block = struct.unpack_from("<I", blob, where["markers"] + 4)[0]
    names = where["names"]
    _hostile(_patched(blob, names + last_block, b"\x7f"))
    _hostile(_patched(blob, names + last_block, b"\xff\x7f"))  # two-byte length, 16 KiB
    _hostile(_patched(blob, names, b"\x00"))                    # a zero-length name


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", [0xFFFFFFFF, 1 << 24, 0])
def test_hostile_num_syms(value):
    blob, where = build_tables(make_symbols(300), NEW, 4)
    _hostile(_patched(blob, where["num_syms"], struct.pack("<I", value)))


@pytest.mark.timeout(60)
def test_hostile_markers():
    blob, where = build_tables(make_symbols(700), OLD, 0)
    m = where["markers"]
    _hostile(_patched(blob, m + 4, struct.pack("<I", 0)))             # repeats: a cycle
    _hostile(_patched(blob, m + 8, struct.pack("<I", 0x100)))         # runs backwards
    _hostile(_patched(blob, m + 8, struct.pack("<I", 0x7FFFFFF0)))    # far past the names


@pytest.mark.timeout(60)
def test_hostile_offsets_and_tokens():
    syms = make_symbols(300)
    blob, where = build_tables(syms)
    o = where["offsets"]
    _hostile(_patched(blob, o + 4 * 40, struct.pack("<i", -0x7000000)))  # addresses unsorted
    tt = where["token_table"]
    _hostile(_patched(blob, tt + 1, b"\x01"))                           # unprintable token
    _hostile(blob[:where["token_index"] + 100], size=0x23458 + where["token_index"] + 100)


@pytest.mark.timeout(60)
def test_hostile_seqs_that_are_every_permutation():
    """0..N-1 descending before the token table: every prefix is a permutation of range(N)."""
    fake = struct.pack("<200000I", *range(199999, -1, -1))
    blob, where = build_tables(make_symbols(60), NEW, 0)
    table = blob[where["token_table"]:where["token_index"] + 512]
    _hostile(fake + table, size=0x200000)


def test_hostile_expansion_is_bounded(monkeypatch):
    """Names made of the longest tokens could expand to gigabytes: refused before expanding
    them all (names are expanded when asked for, one at a time otherwise)."""
    from cloudvmi.os.linux import kallsyms_names

    blob, _ = build_tables(make_symbols(300))
    monkeypatch.setattr(kallsyms_names, "MAX_EXPANDED", 4000)
    found = find_kallsyms(BytesMemory(image(blob)))
    assert found.name_at(5)
    with pytest.raises(ProfileError, match="expand past"):
        found.names  # noqa: B018


@pytest.mark.timeout(60)
def test_hostile_memory_full_of_anchors():
    mem = BytesMemory(ANCHOR * (0x400000 // len(ANCHOR)))
    start = time.perf_counter()
    with pytest.raises(ProfileError):
        find_kallsyms(mem)
    assert time.perf_counter() - start < 10


def test_no_kallsyms_at_all():
    with pytest.raises(ProfileError, match="not found"):
        find_kallsyms(BytesMemory(image(b"", decoys=True)))


@pytest.mark.timeout(120)
def test_random_corruption_never_escapes_as_another_error():
    syms = make_symbols(300)
    for order, width in ((OLD, 3), (NEW, 4)):
        blob, _ = build_tables(syms, order, width)
        rng = random.Random(99)
        for _ in range(60):
            bad = bytearray(blob)
            for _ in range(rng.randint(1, 4)):
                bad[rng.randrange(len(bad))] = rng.randrange(256)
            with contextlib.suppress(ProfileError):
                find_kallsyms(BytesMemory(image(bytes(bad), decoys=False)))


# --- real guest dumps ------------------------------------------------------------------------

def _truth(images: Path, ver: str) -> list[tuple[int, str, str]]:
    """The guest's /proc/kallsyms without module symbols (they live outside the vmlinux table)."""
    out = []
    for line in (images / f"{ver}.kallsyms").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((int(parts[0], 16), parts[1], parts[2]))
    return out


def _absolute(mem, found: Kallsyms) -> Kallsyms:
    """A place-relative (7.x) table placed where the kernel's VMCOREINFO says it is linked."""
    if found.relative_to is None:
        return found
    info = next(find_vmcoreinfo(mem))
    return found.rebased(info.symbol("kallsyms_offsets"))


def _compare(found: Kallsyms, truth) -> None:
    got = list(zip(found.addresses, found.types, found.names, strict=True))
    missing = set(truth) - set(got)
    assert not missing, f"{len(missing)} symbols differ, e.g. {sorted(missing)[:5]}"
    assert got == truth  # same order too: /proc/kallsyms walks the table in order


@pytest.mark.parametrize("ver", KERNELS)
def test_real_dumps_match_proc_kallsyms(ver, guest_images):
    from cloudvmi.memory.mapped import MappedFileMemory

    images = guest_images(ver)
    mem = MappedFileMemory(images / f"{ver}.raw")
    try:
        start = time.perf_counter()
        found = _absolute(mem, find_kallsyms(mem))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        warm = _absolute(mem, find_kallsyms(mem, hint=found.table_paddr))
        decode = time.perf_counter() - start
        print(f"\n{ver}: {len(found)} symbols, scan+decode {cold:.3f}s, "
              f"decode with hint {decode:.3f}s")
        truth = _truth(images, ver)
        _compare(found, truth)
        assert warm == found
        assert found.lookup("init_task") == dict((n, a) for a, _, n in truth
                                                 if n == "init_task")["init_task"]
        assert found.symbolize(found.lookup("schedule") + 0x10) == ("schedule", 0x10)
        _lookups_by_name_order(mem, ver)
    finally:
        mem.close()


def _lookups_by_name_order(mem, ver: str) -> None:
    """Lookups through seqs_of_names (binary search, names expanded on demand) give what a
    full index gives, duplicates included (the lowest address wins, as in the kernel)."""
    lazy = _absolute(mem, find_kallsyms(mem))
    assert (lazy.tables.seqs is not None) == (ver != "5.10")  # seqs_of_names: 6.1 (Debian) on
    full = {}
    for name, address in zip(lazy.names, lazy.addresses, strict=True):
        full.setdefault(name, address)
    fresh = _absolute(mem, find_kallsyms(mem))
    rng = random.Random(5)
    dupes = [n for n, c in Counter(lazy.names).items() if c > 1][:300]
    for name in rng.sample(sorted(full), 3000) + dupes:
        assert fresh.get(name) == full[name], name
    for missing in ("no_such_symbol", "", "zzzz", "!"):
        assert fresh.get(missing) is None


@pytest.mark.parametrize("ver", KERNELS)
def test_real_elf_dumps(ver, guest_images):
    from cloudvmi.memory.elfdump import open_elf_dump

    images = guest_images(ver)
    mem, _ = open_elf_dump(images / f"{ver}.elf")
    try:
        _compare(_absolute(mem, find_kallsyms(mem)), _truth(images, ver))
    finally:
        mem.close()

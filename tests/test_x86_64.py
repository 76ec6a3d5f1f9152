"""x86-64 translation over synthetic page tables: 4/5 levels, huge pages, holes, the cache."""

import struct

import pytest

from cloudvmi.arch.x86_64 import AddressSpace
from cloudvmi.errors import UnmappedAddress
from cloudvmi.memory.base import PhysicalMemory, Region

P, RW, PS = 1, 2, 0x80


class RAM(PhysicalMemory):
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.writable = True
        super().__init__([Region(0, size, 0)])

    def _read_at(self, offset: int, size: int) -> bytes:
        return bytes(self.buf[offset:offset + size])

    def _write_at(self, offset: int, data: bytes) -> None:
        self.buf[offset:offset + len(data)] = data

    def entry(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.buf, table + index * 8, value)


def idx(vaddr: int, shift: int) -> int:
    return (vaddr >> shift) & 0x1FF


@pytest.fixture
def ram():
    return RAM(64 << 20)


def build_4k(ram: RAM, levels: int, vaddr: int, paddr: int, tables: list[int]) -> int:
    shifts = [48, 39, 30, 21, 12][5 - levels:]
    for i, shift in enumerate(shifts):
        nxt = tables[i + 1] if i + 1 < len(tables) else paddr
        ram.entry(tables[i], idx(vaddr, shift), nxt | P | RW)
    return tables[0]


@pytest.mark.parametrize("levels", [4, 5])
def test_4k_translation_both_depths(ram, levels):
    vaddr = 0xFFFF_8880_1234_5000 if levels == 4 else 0xFF11_0000_1234_5000
    tables = [0x1000 * (i + 1) for i in range(levels)]
    root = build_4k(ram, levels, vaddr, 0x20_0000, tables)
    ram.write(0x20_0123, b"hello")
    space = AddressSpace(ram, root, levels)
    assert space.translate(vaddr + 0x123) == 0x20_0123
    assert space.read(vaddr + 0x123, 5) == b"hello"


def test_2m_and_1g_pages(ram):
    pml4, pdpt, pd = 0x1000, 0x2000, 0x3000
    v2m = 0x0000_0040_0020_0000
    ram.entry(pml4, idx(v2m, 39), pdpt | P)
    ram.entry(pdpt, idx(v2m, 30), pd | P)
    ram.entry(pd, idx(v2m, 21), 0x40_0000 | P | PS)
    v1g = 0x0000_0080_4000_0000
    ram.entry(pml4, idx(v1g, 39), 0x5000 | P)
    ram.entry(0x5000, idx(v1g, 30), 0x4000_0000 | P | PS)
    space = AddressSpace(ram, pml4, 4)
    assert space.translate(v2m + 0x1_2345) == 0x41_2345
    assert space.translate(v1g + 0x123_4567) == 0x4123_4567


def test_holes_and_non_canonical(ram):
    space = AddressSpace(ram, 0x1000, 4)
    with pytest.raises(UnmappedAddress):
        space.translate(0x1000)
    with pytest.raises(UnmappedAddress):
        space.translate(0x0000_8000_0000_0000)  # non-canonical with 4 levels
    pml4 = 0x1000
    ram.entry(pml4, 0, 0xFFFF_F000 | P)  # next table outside RAM
    with pytest.raises(UnmappedAddress):
        space.translate(0x1000)


def test_read_across_pages_and_cache_invalidation(ram):
    tables = [0x1000, 0x2000, 0x3000, 0x4000]
    v = 0x7F00_0000_0000
    build_4k(ram, 4, v, 0x10_0000, tables)
    ram.entry(0x4000, idx(v + 0x1000, 12), 0x30_0000 | P)  # next page is elsewhere
    ram.write(0x10_0FFE, b"ab")
    ram.write(0x30_0000, b"cd")
    space = AddressSpace(ram, 0x1000, 4)
    assert space.read(v + 0xFFE, 4) == b"abcd"
    ram.entry(0x4000, idx(v + 0x1000, 12), 0x31_0000 | P)  # the guest remaps the page
    ram.write(0x31_0000, b"XY")
    assert space.read(v + 0x1000, 2) == b"cd"  # stale until invalidated
    space.cache.invalidate()
    assert space.read(v + 0x1000, 2) == b"XY"


def test_mappings_enumeration_is_bounded(ram):
    pml4, pdpt, pd = 0x1000, 0x2000, 0x3000
    ram.entry(pml4, 0, pdpt | P)
    ram.entry(pdpt, 0, pd | P)
    for i in range(512):
        ram.entry(pd, i, (i << 21) | P | PS)
    space = AddressSpace(ram, pml4, 4)
    assert len(list(space.mappings(0, 1 << 30))) == 512
    from cloudvmi.errors import GuestMemoryError

    with pytest.raises(GuestMemoryError):
        list(space.mappings(0, 1 << 30, limit=100))

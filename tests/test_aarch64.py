"""AArch64 translation over synthetic page tables: 48-bit (4 levels) and 52-bit LPA2
(5 levels, output-address bits 51:50 in the descriptor), blocks, the two roots, writability
(AP[2] and Linux's DBM-as-write bit), and the kernel's direct map formula."""

import struct

import pytest

from cloudvmi import arch as arches
from cloudvmi.arch.aarch64 import AddressSpace
from cloudvmi.arch.aarch64.paging import output_address
from cloudvmi.errors import GuestMemoryError, UnmappedAddress
from cloudvmi.memory.base import PhysicalMemory, Region

VALID_TABLE, BLOCK, PAGE_DESC = 0b11, 0b01, 0b11
RDONLY, DBM = 1 << 7, 1 << 51
BASE = 0x4000_0000  # virt's RAM starts at 1 GiB


class RAM(PhysicalMemory):
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.writable = True
        super().__init__([Region(BASE, size, 0)])

    def _read_at(self, offset: int, size: int) -> bytes:
        return bytes(self.buf[offset:offset + size])

    def _write_at(self, offset: int, data: bytes) -> None:
        self.buf[offset:offset + len(data)] = data

    def entry(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.buf, table - BASE + index * 8, value)


def va_index(vaddr: int, shift: int, va_bits: int) -> int:
    return ((vaddr & ((1 << va_bits) - 1)) >> shift) & 0x1FF


def lpa2(address: int) -> int:
    """A descriptor's address field with LPA2: OA[51:50] go to bits 9:8."""
    return (address & 0x0003_FFFF_FFFF_F000) | ((address >> 50) & 3) << 8


def build(ram: RAM, levels: int, vaddr: int, leaf: int, tables: list[int],
          block_shift: int = 12, encode=lambda a: a) -> int:
    va_bits = {4: 48, 5: 52}[levels]
    shifts = [48, 39, 30, 21, 12][5 - levels:]
    root = tables[0]
    table = root
    for n, shift in enumerate(shifts):
        i = va_index(vaddr, shift, va_bits)
        if shift == block_shift:
            ram.entry(table, i, encode(leaf) | (PAGE_DESC if shift == 12 else BLOCK))
            return root
        ram.entry(table, i, encode(tables[n + 1]) | VALID_TABLE)
        table = tables[n + 1]
    raise AssertionError


@pytest.fixture
def ram():
    return RAM(16 << 20)


def test_kernel_half_48_bit_page(ram):
    va = 0xFFFF_D600_5561_0123
    root = build(ram, 4, va, BASE + 0x80_0000, [BASE + i * 0x1000 for i in range(4)])
    space = AddressSpace(ram, root, 4)
    assert space.translate(va) == BASE + 0x80_0123
    with pytest.raises(UnmappedAddress):  # the same index bits in the user half: not TTBR1's
        space.translate(va & 0x0000_FFFF_FFFF_FFFF)
    with pytest.raises(UnmappedAddress):  # outside both halves
        space.translate(0x00F0_0000_0000_0000)


def test_blocks_1g_and_2m(ram):
    tables = [BASE + i * 0x1000 for i in range(4)]
    va2m = 0xFFFF_0000_0020_0000
    root = build(ram, 4, va2m, BASE + 0x40_0000, tables, block_shift=21)
    space = AddressSpace(ram, root, 4)
    assert space.translate(va2m + 0x1_2345) == BASE + 0x41_2345
    assert space.lookup(va2m).size == 4096  # cached as the 4 KiB slice
    va1g = 0xFFFF_0040_0000_0000
    build(ram, 4, va1g, BASE, [root, BASE + 0x5000], block_shift=30)
    space.cache.invalidate()
    assert space.translate(va1g + 0x7_6543) == BASE + 0x7_6543


def test_52_bit_lpa2_five_levels(ram):
    va = 0xFFF0_1234_5678_9ABC  # only a 52-bit space reaches this
    tables = [BASE + i * 0x1000 for i in range(5)]
    root = build(ram, 5, va, BASE + 0x90_0000, tables, encode=lpa2)
    space = AddressSpace(ram, root, 5)
    assert space.translate(va) == BASE + 0x90_0ABC
    assert output_address(lpa2(0x000C_0000_4000_0000) | 3, True) == 0x000C_0000_4000_0000
    with pytest.raises(UnmappedAddress):
        AddressSpace(ram, root, 4).translate(va)  # not canonical for 48 bits


def test_process_space_has_both_roots(ram):
    kernel = build(ram, 4, 0xFFFF_0000_0000_0000, BASE + 0x10_0000,
                   [BASE + i * 0x1000 for i in range(4)])
    user = build(ram, 4, 0x0000_AAAA_0000_1000, BASE + 0x20_0000,
                 [BASE + 0x8000 + i * 0x1000 for i in range(4)])
    space = AddressSpace(ram, user, 4, kernel_root=kernel)
    assert space.translate(0x0000_AAAA_0000_1010) == BASE + 0x20_0010
    assert space.translate(0xFFFF_0000_0000_0020) == BASE + 0x10_0020
    found = {(m.vbase, m.pbase) for m in space.mappings()}
    assert found == {(0x0000_AAAA_0000_1000, BASE + 0x20_0000),
                     (0xFFFF_0000_0000_0000, BASE + 0x10_0000)}


def test_52_bit_process_root_is_a_128_byte_slab_object(ram):
    """With 5 levels a process's top table has 16 entries and Linux allocates it from a
    slab of 128-byte objects: the root need not be page-aligned."""
    kernel = build(ram, 5, 0xFFF0_0000_0000_0000, BASE + 0x10_0000,
                   [BASE + i * 0x1000 for i in range(5)], encode=lpa2)
    user_va = 0x0000_FFFF_E98D_0FB9  # a 48-bit user address (a stack) in a 52-bit space
    user = build(ram, 5, user_va, BASE + 0x20_0000,
                 [BASE + 0x8180] + [BASE + 0x9000 + i * 0x1000 for i in range(4)], encode=lpa2)
    space = AddressSpace(ram, user, 5, kernel_root=kernel)
    assert space.translate(user_va) == BASE + 0x20_0FB9
    assert space.translate(0xFFF0_0000_0000_0040) == BASE + 0x10_0040
    assert {m.vbase for m in space.mappings()} == {user_va & ~0xFFF, 0xFFF0_0000_0000_0000}


@pytest.mark.parametrize("bits, writable", [(0, True), (RDONLY, False), (RDONLY | DBM, True)])
def test_writable_follows_ap2_and_dbm(ram, bits, writable):
    va = 0x0000_0000_0040_0000
    root = build(ram, 4, va, BASE + 0x30_0000, [BASE + i * 0x1000 for i in range(4)],
                 encode=lambda a: a | bits)
    space = AddressSpace(ram, BASE + 0xF000, 4, kernel_root=BASE + 0xE000)
    space.user_root = root
    assert space._walk(va).writable is writable
    if not writable:
        with pytest.raises(GuestMemoryError):
            space.write_private(va, b"x")


def test_invalid_and_reserved_descriptors(ram):
    va = 0xFFFF_0000_0000_0000
    tables = [BASE + i * 0x1000 for i in range(4)]
    root = build(ram, 4, va, BASE + 0x10_0000, tables)
    ram.entry(tables[3], 0, (BASE + 0x10_0000) | BLOCK)  # a "block" at level 3 is reserved
    with pytest.raises(UnmappedAddress):
        AddressSpace(ram, root, 4).translate(va)
    ram.entry(tables[3], 0, 0)
    with pytest.raises(UnmappedAddress):
        AddressSpace(ram, root, 4).translate(va)


def test_direct_map_is_checked_on_the_tables():
    """PAGE_OFFSET follows the build's VA_BITS: the layout whose address of RAM's first
    page the kernel's tables map to it is taken (a 52-bit build on a 48-bit CPU lowers
    memstart_addr so that the same formula holds)."""
    arm64 = arches.get("aarch64")
    mapped = {0xFFFF_0000_0000_0000: BASE}
    base = arm64.direct_map_base({"memstart_addr": BASE}.get,
                                 lambda v, p: mapped.get(v) == p, 4, BASE)
    assert base == (0xFFFF_0000_0000_0000, BASE)
    lowered = (BASE - (0xFFFF_0000_0000_0000 - 0xFFF0_0000_0000_0000)) % (1 << 64)
    base = arm64.direct_map_base({"memstart_addr": lowered}.get,
                                 lambda v, p: mapped.get(v) == p, 4, BASE)
    assert base[0] == 0xFFF0_0000_0000_0000  # virt = BASE - memstart + PAGE_OFFSET


def test_architecture_names():
    assert arches.get("aarch64") is arches.get("arm64") is arches.from_qemu("aarch64")
    assert arches.from_elf_machine("EM_AARCH64").name == "arm64"
    assert arches.from_elf_machine("EM_X86_64").name == "x86_64"
    abi = arches.get("arm64").syscall
    assert abi.nr("openat") == 56 and abi.nr("clone") == 220 and abi.nr("dup3") == 24
    for missing in ("fork", "open", "dup2"):
        with pytest.raises(ValueError):
            abi.nr(missing)


def test_ttbr0_table_address_drops_asid_and_cnp_and_keeps_52_bit_baddr():
    root = arches.get("arm64").page_table_root
    assert root({"ttbr0_el1": 0x0042_0000_4123_4081}) == 0x4123_4080  # ASID 0x42, CnP
    assert root({"ttbr0_el1": 0x0000_0000_4123_4080 | 0b0011 << 2}) == 0x0003_0000_4123_4080


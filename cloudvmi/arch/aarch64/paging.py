"""AArch64 address translation, 4 KiB granule: 48-bit virtual addresses (4 levels) and
52-bit ones with FEAT_LPA2 (5 levels, output addresses to 52 bits), 1 GiB and 2 MiB blocks.

Two roots, as the CPU has: TTBR1_EL1 (the kernel's swapper_pg_dir) translates the upper
half, TTBR0_EL1 (a process's mm->pgd) the lower one."""

import struct

from cloudvmi.arch.paging import Mapping, PagedSpace, TranslationCache
from cloudvmi.errors import GuestMemoryError, UnmappedAddress
from cloudvmi.memory.base import PhysicalMemory

VALID = 1
TABLE = 1 << 1  # at levels 0-2 a table (else a block); at level 3 set for every page
AP_RDONLY = 1 << 7  # AP[2]
DBM = 1 << 51  # dirty-bit modifier: Linux's PTE_WRITE (a clean writable page is AP_RDONLY)
AP_TABLE_RDONLY = 1 << 62  # APTable[1]: nothing below is writable
VA_BITS = {3: 39, 4: 48, 5: 52}


def output_address(entry: int, lpa2: bool) -> int:
    """The next table's or the page's address: bits [47:12], and with LPA2 [49:12] plus
    OA[51:50] from descriptor bits [9:8]."""
    if lpa2:
        return (entry & 0x0003_FFFF_FFFF_F000) | ((entry >> 8) & 3) << 50
    return entry & 0x0000_FFFF_FFFF_F000


class AddressSpace(PagedSpace):
    """A guest virtual address space. With KERNEL_ROOT None, ROOT is a TTBR1 table and only
    the upper half is mapped (the kernel's space); else ROOT is a process's TTBR0 table for
    the lower half and KERNEL_ROOT serves the upper one."""

    def __init__(self, phys: PhysicalMemory, root: int, levels: int = 4,
                 cache: TranslationCache | None = None, kernel_root: int | None = None) -> None:
        if levels not in VA_BITS:
            raise ValueError("AArch64 4 KiB-granule paging has 3, 4 or 5 levels")
        super().__init__(phys, cache)
        self.levels = levels
        self._va_bits = VA_BITS[levels]
        self._lpa2 = levels == 5
        self._top_shift = 12 + 9 * (levels - 1)
        # The top table of a 52-bit (LPA2) space has 16 entries, not 512, and Linux takes a
        # process's from a slab of 128-byte objects (arch/arm64/mm/pgd.c): its root is
        # aligned to the table's size only, not to a page.
        self._top_entries = 1 << (self._va_bits - self._top_shift)
        align = ~(self._top_entries * 8 - 1)
        if kernel_root is None:
            self.root, self.user_root = root & align, None
        else:
            self.root, self.user_root = kernel_root & align, root & align

    def _root_of(self, vaddr: int) -> int | None:
        """The table that translates VADDR, or None for an address outside both halves."""
        top = vaddr >> self._va_bits
        if top == (1 << (64 - self._va_bits)) - 1:
            return self.root
        if top == 0 and self.user_root is not None:
            return self.user_root
        return None

    def canonical(self, vaddr: int) -> bool:
        return self._root_of(vaddr) is not None

    def _walk(self, vaddr: int) -> Mapping:
        table = self._root_of(vaddr) if 0 <= vaddr < 1 << 64 else None
        if table is None:
            raise UnmappedAddress(vaddr, "virtual address outside this address space")
        shift = self._top_shift
        read = self.phys.read
        writable = True
        bits = vaddr & ((1 << self._va_bits) - 1)  # the index bits: TTBR1 drops the ones
        while True:
            index = (bits >> shift) & 0x1FF
            try:
                entry = int.from_bytes(read(table + index * 8, 8), "little")
            except UnmappedAddress as exc:
                raise UnmappedAddress(vaddr, "virtual address (page table outside RAM)") from exc
            if not entry & VALID:
                raise UnmappedAddress(vaddr, "virtual address")
            address = output_address(entry, self._lpa2)
            if shift == 12 or not entry & TABLE:
                if shift == 12 and not entry & TABLE:
                    raise UnmappedAddress(vaddr, "virtual address (reserved descriptor)")
                if shift > 30:
                    raise UnmappedAddress(vaddr, "virtual address (block at the top level)")
                size = 1 << shift
                writable = writable and (not entry & AP_RDONLY or bool(entry & DBM))
                return Mapping(vaddr & ~(size - 1) & ((1 << 64) - 1), address & ~(size - 1),
                               size, writable)
            writable = writable and not entry & AP_TABLE_RDONLY
            table = address
            shift -= 9

    def mappings(self, start: int = 0, end: int | None = None, limit: int = 1 << 20):
        """Yield the present leaf mappings in [start, end), bounded by `limit` entries."""
        end = end if end is not None else (1 << 64)
        count = 0
        high = ((1 << 64) - 1) ^ ((1 << self._va_bits) - 1)

        def walk(table: int, shift: int, base: int, entries: int = 512):
            nonlocal count
            raw = self.phys.read(table, entries * 8)
            for index, entry in enumerate(struct.unpack(f"<{entries}Q", raw)):
                if not entry & VALID:
                    continue
                vbase = base | (index << shift)
                size = 1 << shift
                if vbase + size <= start or vbase >= end:
                    continue
                count += 1
                if count > limit:
                    raise GuestMemoryError(f"more than {limit} page-table entries: stopped")
                address = output_address(entry, self._lpa2)
                if shift == 12 or not entry & TABLE:
                    if shift <= 30 and (shift == 12) == bool(entry & TABLE):
                        yield Mapping(vbase, address & ~(size - 1), size)
                else:
                    yield from walk(address, shift - 9, vbase)

        top_entries = self._top_entries
        if self.user_root is not None:
            yield from walk(self.user_root, self._top_shift, 0, top_entries)
        yield from walk(self.root, self._top_shift, high, top_entries)

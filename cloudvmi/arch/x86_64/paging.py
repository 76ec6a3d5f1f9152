"""x86-64 address translation: 4- and 5-level paging, 2 MiB and 1 GiB pages, with a cache."""

import struct

from cloudvmi.arch.paging import PAGE, Mapping, PagedSpace, TranslationCache
from cloudvmi.errors import GuestMemoryError, UnmappedAddress
from cloudvmi.memory.base import PhysicalMemory

ADDR_MASK = 0x000F_FFFF_FFFF_F000
PRESENT = 1
RW = 1 << 1
HUGE = 1 << 7
_U64 = struct.Struct("<Q")


class AddressSpace(PagedSpace):
    """A guest virtual address space rooted at a top-level page table (CR3 or mm->pgd). One
    root maps both halves, so KERNEL_ROOT (arm64's second root) is not needed here."""

    def __init__(self, phys: PhysicalMemory, root: int, levels: int = 4,
                 cache: TranslationCache | None = None, kernel_root: int | None = None) -> None:
        if levels not in (4, 5):
            raise ValueError("x86-64 paging has 4 or 5 levels")
        super().__init__(phys, cache)
        self.root = root & ADDR_MASK
        self.levels = levels
        self._va_bits = 57 if levels == 5 else 48

    def canonical(self, vaddr: int) -> bool:
        top = vaddr >> (self._va_bits - 1)
        return top == 0 or top == (1 << (65 - self._va_bits)) - 1

    def _walk(self, vaddr: int) -> Mapping:
        if not self.canonical(vaddr) or vaddr >> 64:
            raise UnmappedAddress(vaddr, "non-canonical virtual address")
        table = self.root
        shift = 48 if self.levels == 5 else 39
        read = self.phys.read
        writable = True
        while True:
            index = (vaddr >> shift) & 0x1FF
            try:
                entry = _U64.unpack(read(table + index * 8, 8))[0]
            except UnmappedAddress as exc:
                raise UnmappedAddress(vaddr, "virtual address (page table outside RAM)") from exc
            if not entry & PRESENT:
                raise UnmappedAddress(vaddr, "virtual address")
            writable = writable and bool(entry & RW)
            if shift == 12 or (shift in (21, 30) and entry & HUGE):
                size = 1 << shift
                pbase = entry & ADDR_MASK & ~(size - 1)
                return Mapping(vaddr & ~(size - 1) & ((1 << 64) - 1), pbase, size, writable)
            table = entry & ADDR_MASK
            shift -= 9

    def mappings(self, start: int = 0, end: int | None = None, limit: int = 1 << 20):
        """Yield the present leaf mappings in [start, end), bounded by `limit` entries."""
        top_shift = 48 if self.levels == 5 else 39
        end = end if end is not None else (1 << 64)
        count = 0

        def sign_extend(v: int) -> int:
            if v >> (self._va_bits - 1) & 1:
                v |= ((1 << 64) - 1) ^ ((1 << self._va_bits) - 1)
            return v

        def walk(table: int, shift: int, base: int):
            nonlocal count
            raw = self.phys.read(table, PAGE)
            for index, entry in enumerate(struct.unpack("<512Q", raw)):
                if not entry & PRESENT:
                    continue
                vbase = sign_extend(base | (index << shift))
                size = 1 << shift
                if vbase + size <= start or vbase >= end:
                    continue
                count += 1
                if count > limit:
                    raise GuestMemoryError(f"more than {limit} page-table entries: stopped")
                if shift == 12 or (shift in (21, 30) and entry & HUGE):
                    yield Mapping(vbase, entry & ADDR_MASK & ~(size - 1), size)
                else:
                    yield from walk(entry & ADDR_MASK, shift - 9, base | (index << shift))

        yield from walk(self.root, top_shift, 0)

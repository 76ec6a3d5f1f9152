"""x86-64 address translation: 4- and 5-level paging, 2 MiB and 1 GiB pages, with a cache."""

import struct
from dataclasses import dataclass

from cloudvmi.errors import GuestMemoryError, UnmappedAddress
from cloudvmi.memory.base import PhysicalMemory

PAGE = 4096
ADDR_MASK = 0x000F_FFFF_FFFF_F000
PRESENT = 1
RW = 1 << 1
HUGE = 1 << 7
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Mapping:
    """One translated page: virtual base, physical base, size."""

    vbase: int
    pbase: int
    size: int
    writable: bool = True  # RW set at every level: not read-only, not copy-on-write


class TranslationCache:
    """Translations valid for one epoch: bump the epoch when the guest may have changed them."""

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self.max_entries = max_entries
        self.entries: dict[int, Mapping] = {}
        self.hits = self.misses = 0

    def invalidate(self) -> None:
        self.entries.clear()


class AddressSpace:
    """A guest virtual address space rooted at a top-level page table (CR3 or mm->pgd)."""

    def __init__(self, phys: PhysicalMemory, root: int, levels: int = 4,
                 cache: TranslationCache | None = None) -> None:
        if levels not in (4, 5):
            raise ValueError("x86-64 paging has 4 or 5 levels")
        self.phys = phys
        self.root = root & ADDR_MASK
        self.levels = levels
        self.cache = cache if cache is not None else TranslationCache()
        self._va_bits = 57 if levels == 5 else 48
        # Ranges the OS layer knows to be linear (Linux's direct map, kernel image).
        self._linear: list[tuple[int, int, int]] = []

    def add_linear_range(self, vstart: int, size: int, pstart: int) -> None:
        """Declare [vstart, vstart+size) -> pstart linear, skipping the walk (a hint, trusted)."""
        self._linear.append((vstart, vstart + size, pstart))

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

    def lookup(self, vaddr: int) -> Mapping:
        page = vaddr & ~(PAGE - 1)
        cache = self.cache
        hit = cache.entries.get(page)
        if hit is not None:
            cache.hits += 1
            return hit
        for vstart, vend, pstart in self._linear:
            if vstart <= vaddr < vend:
                return Mapping(page, pstart + page - vstart, PAGE)
        cache.misses += 1
        mapping = self._walk(vaddr)
        if len(cache.entries) >= cache.max_entries:
            cache.entries.clear()
        if mapping.size == PAGE:
            cache.entries[page] = mapping
        else:  # cache the 4 KiB slice of a huge page; lookups of neighbours hit the walk once each
            cache.entries[page] = Mapping(page, mapping.pbase + (page - mapping.vbase), PAGE,
                                          mapping.writable)
        return cache.entries[page]

    def translate(self, vaddr: int) -> int:
        m = self.lookup(vaddr)
        return m.pbase + (vaddr - m.vbase)

    def read(self, vaddr: int, size: int) -> bytes:
        if size <= 0:
            if size == 0:
                return b""
            raise GuestMemoryError(f"negative read size {size}")
        offset = vaddr & (PAGE - 1)
        if offset + size <= PAGE:  # the hot path: one page
            m = self.lookup(vaddr)
            return self.phys.read(m.pbase + (vaddr - m.vbase), size)
        parts = []
        while size > 0:
            n = min(size, PAGE - (vaddr & (PAGE - 1)))
            m = self.lookup(vaddr)
            parts.append(self.phys.read(m.pbase + (vaddr - m.vbase), n))
            vaddr += n
            size -= n
        return b"".join(parts)

    def write_private(self, vaddr: int, data: bytes) -> None:
        """Write only through fresh, writable leaf mappings: never into a read-only or
        copy-on-write page that other processes may share."""
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, PAGE - (vaddr & (PAGE - 1)))
            m = self._walk(vaddr)
            if not m.writable:
                raise GuestMemoryError(f"page at {vaddr:#x} is read-only or shared "
                                       "copy-on-write: not written")
            self.phys.write(m.pbase + (vaddr - m.vbase), data[pos:pos + n])
            vaddr += n
            pos += n

    def write(self, vaddr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, PAGE - (vaddr & (PAGE - 1)))
            self.phys.write(self.translate(vaddr), data[pos:pos + n])
            vaddr += n
            pos += n

    def read_u64(self, vaddr: int) -> int:
        return _U64.unpack(self.read(vaddr, 8))[0]

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

"""What every page-table format shares: a translated page, the translation cache, and reads
and writes of virtual memory over a walk that each architecture supplies."""

import struct
from dataclasses import dataclass

from cloudvmi.errors import GuestMemoryError
from cloudvmi.memory.base import PhysicalMemory

PAGE = 4096
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Mapping:
    """One translated page: virtual base, physical base, size."""

    vbase: int
    pbase: int
    size: int
    writable: bool = True  # writable at every level: not read-only, not copy-on-write


class TranslationCache:
    """Translations valid for one epoch: bump the epoch when the guest may have changed them."""

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self.max_entries = max_entries
        self.entries: dict[int, Mapping] = {}
        self.hits = self.misses = 0

    def invalidate(self) -> None:
        self.entries.clear()


class PagedSpace:
    """A guest virtual address space over 4 KiB pages; subclasses walk their page tables
    (`_walk(vaddr) -> Mapping`, `mappings(start, end, limit)`)."""

    phys: PhysicalMemory
    cache: TranslationCache

    def __init__(self, phys: PhysicalMemory, cache: TranslationCache | None) -> None:
        self.phys = phys
        self.cache = cache if cache is not None else TranslationCache()
        # Ranges the OS layer knows to be linear (Linux's direct map, kernel image).
        self._linear: list[tuple[int, int, int]] = []

    def _walk(self, vaddr: int) -> Mapping:
        raise NotImplementedError

    def add_linear_range(self, vstart: int, size: int, pstart: int) -> None:
        """Declare [vstart, vstart+size) -> pstart linear, skipping the walk (a hint, trusted)."""
        self._linear.append((vstart, vstart + size, pstart))

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

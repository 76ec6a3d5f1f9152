"""The one small interface every guest-physical memory source implements."""

import bisect
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cloudvmi.errors import CloudVMIError, UnmappedAddress


@dataclass(frozen=True, order=True)
class Region:
    """A run of guest RAM: guest-physical [start, start+size) at `offset` in the source."""

    start: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.start + self.size


class RegionMap:
    """Sorted RAM regions with a fast lookup of the one holding an address."""

    def __init__(self, regions: Iterable[Region]) -> None:
        self.regions = sorted(r for r in regions if r.size > 0)
        for a, b in zip(self.regions, self.regions[1:], strict=False):
            if a.end > b.start:
                raise CloudVMIError(f"overlapping RAM regions {a} and {b}")
        self._starts = [r.start for r in self.regions]

    def find(self, address: int) -> Region:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0:
            region = self.regions[i]
            if address < region.end:
                return region
        raise UnmappedAddress(address, "guest-physical address")

    def pieces(self, address: int, size: int) -> Iterator[tuple[Region, int, int]]:
        """Split [address, address+size) into (region, source offset, length) pieces."""
        while size > 0:
            region = self.find(address)
            length = min(size, region.end - address)
            yield region, region.offset + (address - region.start), length
            address += length
            size -= length

    @property
    def total(self) -> int:
        return sum(r.size for r in self.regions)


class PhysicalMemory(ABC):
    """Read and write guest RAM by guest-physical address.

    Sources implement `_read_at`/`_write_at` at source offsets; the region map turns
    guest-physical addresses into those, so holes (the PCI hole) raise UnmappedAddress.
    """

    writable = False
    description = "memory"

    def __init__(self, regions: Iterable[Region]) -> None:
        self.map = RegionMap(regions)

    @abstractmethod
    def _read_at(self, offset: int, size: int) -> bytes: ...

    def _write_at(self, offset: int, data: bytes) -> None:
        raise CloudVMIError(f"{self.description} is read-only")

    def read(self, address: int, size: int) -> bytes:
        if size < 0 or address < 0:
            raise UnmappedAddress(address, "guest-physical address")
        region = self.map.find(address)
        if address + size <= region.end:  # the common case: one region
            return self._read_at(region.offset + address - region.start, size)
        return b"".join(self._read_at(off, n) for _, off, n in self.map.pieces(address, size))

    def read_scatter(self, requests: Iterable[tuple[int, int]]) -> list[bytes]:
        """Many reads at once: sources with a cost per call can batch them."""
        return [self.read(address, size) for address, size in requests]

    def write(self, address: int, data: bytes) -> None:
        if not self.writable:
            raise CloudVMIError(f"{self.description} is read-only")
        pos = 0
        for _, off, n in list(self.map.pieces(address, len(data))):
            self._write_at(off, data[pos:pos + n])
            pos += n

    def regions(self) -> list[Region]:
        return list(self.map.regions)

    def contains(self, address: int, size: int = 1) -> bool:
        try:
            for _ in self.map.pieces(address, size):
                pass
        except UnmappedAddress:
            return False
        return True

    def find(self, needle: bytes, start: int = 0, end: int | None = None) -> Iterator[int]:
        """Every guest-physical address where NEEDLE starts (within one region)."""
        chunk = 16 << 20
        for region in self.map.regions:
            lo, hi = max(start, region.start), min(end if end is not None else region.end,
                                                    region.end)
            pos = lo
            while pos < hi:
                n = min(chunk + len(needle) - 1, hi - pos)
                data = self._read_at(region.offset + pos - region.start, n)
                i = data.find(needle)
                while i != -1 and pos + i < hi:
                    yield pos + i
                    i = data.find(needle, i + 1)
                pos += chunk

    def find_at_page_offset(self, needle: bytes, offset: int, page: int = 4096
                            ) -> Iterator[int]:
        """Addresses k * PAGE + OFFSET where NEEDLE starts, for sources that can look at one
        place per page cheaply (a map); others find none here, and callers scan (find)."""
        return iter(())

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release the source (files, maps)."""

"""Memory sources that are files we can mmap: QEMU's shm RAM file, raw dumps, ELF dumps.

Reads start through the page cache (pread) and move to slices of the map once a process has
read a lot. A page touched through the map joins the process's resident set together with
its neighbours (the kernel maps 64 KiB around each fault), so a command that reads a few
thousand scattered pages of a 4 GiB guest (`cloudvmi ps`) would grow by hundreds of MiB, and
gain nothing from it: each page is read a few times, and a fault costs what a pread does. A
process that goes on reading (an agent, a benchmark) gains from the map: a read of a page
already mapped is a slice, three times cheaper than a system call.
"""

import contextlib
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

from cloudvmi.errors import CloudVMIError, UnmappedAddress
from cloudvmi.memory.base import PhysicalMemory, Region

SCAN_WINDOW = 64 << 20  # bytes of the map searched before they are let go
MAP_AFTER = 1 << 16  # reads through the page cache before reads become slices of the map
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


class MappedFileMemory(PhysicalMemory):
    """Guest RAM as slices of one mmap: the fast path (a read is a memcpy)."""

    def __init__(self, path: str | os.PathLike, regions: Iterable[Region] | None = None,
                 writable: bool = False) -> None:
        self.path = Path(path)
        self.description = f"memory file {self.path}"
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            fd = os.open(self.path, flags)
        except OSError as exc:
            raise CloudVMIError(f"cannot open {self.path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise CloudVMIError(f"{self.path} is empty")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._mm = mmap.mmap(fd, size, access=access)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._unmapped_reads = MAP_AFTER  # reads left before reading the map
        self.file_size = size
        self.writable = writable
        if regions is None:
            regions = [Region(0, size, 0)]
        regions = list(regions)
        for r in regions:
            if r.offset + r.size > size:
                raise CloudVMIError(
                    f"{self.path} is truncated: RAM at {r.start:#x} needs {r.offset + r.size} "
                    f"bytes of file, it has {size}")
        super().__init__(regions)

        self._last = self.map.regions[0]

    def read(self, address: int, size: int) -> bytes:
        """The hot path: a read inside the region last used is one pread, then (once this
        process has read a lot) one slice of the map."""
        r = self._last
        if r.start <= address and address + size <= r.start + r.size and size >= 0:
            offset = r.offset + address - r.start
            if self._unmapped_reads:
                self._unmapped_reads -= 1
                return os.pread(self._fd, size, offset)
            return self._mm[offset:offset + size]
        with contextlib.suppress(UnmappedAddress):
            self._last = self.map.find(address)
        return super().read(address, size)

    def _read_at(self, offset: int, size: int) -> bytes:
        if self._unmapped_reads:
            self._unmapped_reads -= 1
            return os.pread(self._fd, size, offset)
        return self._mm[offset:offset + size]

    def _write_at(self, offset: int, data: bytes) -> None:
        self._mm[offset:offset + len(data)] = data

    def find(self, needle: bytes, start: int = 0, end: int | None = None):
        """Search the mapping in place (no copies): scans of all RAM stay at memory speed.
        The map is scanned a window at a time, and each window scanned is let go again
        (MADV_DONTNEED: the pages stay in the page cache, not in this process's resident
        set), so scanning a 4 GiB guest does not make the process 4 GiB large."""
        step = SCAN_WINDOW
        for region in self.map.regions:
            lo = max(start, region.start)
            hi = min(region.end if end is None else end, region.end)
            base = region.offset - region.start
            while lo < hi:
                stop = min(hi, lo + step)
                pos = self._mm.find(needle, lo + base, min(hi, stop + len(needle) - 1) + base)
                while pos != -1 and pos - base < stop:
                    yield pos - base
                    pos = self._mm.find(needle, pos + 1,
                                        min(hi, stop + len(needle) - 1) + base)
                self._let_go(lo + base, stop + base)
                lo = stop

    def find_at_page_offset(self, needle: bytes, offset: int, page: int = 4096):
        """Guest-physical addresses k * PAGE + OFFSET where NEEDLE starts: one byte looked
        at per page (a strided slice of the map, at C speed), the needle compared where that
        byte is its first; the windows looked at are let go."""
        first = needle[0]
        for region in self.map.regions:
            base = region.offset - region.start
            at = region.start + (offset - region.start) % page
            while at < region.end:
                stop = min(region.end, at + SCAN_WINDOW)
                firsts = self._mm[at + base:stop + base:page]
                i = firsts.find(first)
                while i != -1:
                    candidate = at + i * page
                    if candidate + len(needle) <= region.end and self._mm[
                            candidate + base:candidate + base + len(needle)] == needle:
                        yield candidate
                    i = firsts.find(first, i + 1)
                self._let_go(at + base, stop + base)
                at += len(firsts) * page

    def _let_go(self, lo: int, hi: int) -> None:
        """Drop the pages of file offsets [LO, HI) from this process's resident set (whole
        pages inside the range only)."""
        first = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE
        last = hi // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first and _DONTNEED is not None:
            with contextlib.suppress(OSError, ValueError):
                self._mm.madvise(_DONTNEED, first, last - first)

    def close(self) -> None:
        self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

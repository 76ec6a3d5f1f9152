"""Memory sources that are files we can mmap: QEMU's shm RAM file, raw dumps, ELF dumps."""

import contextlib
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

from cloudvmi.errors import CloudVMIError, UnmappedAddress
from cloudvmi.memory.base import PhysicalMemory, Region


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
        finally:
            os.close(fd)
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
        """The hot path: a read inside the region last used is one slice of the map."""
        r = self._last
        if r.start <= address and address + size <= r.start + r.size and size >= 0:
            offset = r.offset + address - r.start
            return self._mm[offset:offset + size]
        with contextlib.suppress(UnmappedAddress):
            self._last = self.map.find(address)
        return super().read(address, size)

    def _read_at(self, offset: int, size: int) -> bytes:
        return self._mm[offset:offset + size]

    def _write_at(self, offset: int, data: bytes) -> None:
        self._mm[offset:offset + len(data)] = data

    def find(self, needle: bytes, start: int = 0, end: int | None = None):
        """Search the mapping in place (no copies): scans of all RAM stay at memory speed."""
        for region in self.map.regions:
            lo = max(start, region.start)
            hi = min(region.end if end is None else end, region.end)
            if lo >= hi:
                continue
            base = region.offset - region.start
            pos = self._mm.find(needle, lo + base, hi + base)
            while pos != -1:
                yield pos - base
                pos = self._mm.find(needle, pos + 1, hi + base)

    def close(self) -> None:
        self._mm.close()

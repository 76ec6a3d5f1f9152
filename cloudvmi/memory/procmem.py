"""Guest RAM of any running QEMU through /proc/<pid>/mem: no shm file or patch needed (root)."""

import os

from cloudvmi.errors import CloudVMIError, GuestMemoryError
from cloudvmi.memory.base import PhysicalMemory, Region


class ProcessMemory(PhysicalMemory):
    """Reads with pread at host virtual addresses given by the region map (see layout.py)."""

    def __init__(self, pid: int, regions: list[Region], writable: bool = False) -> None:
        self.pid = pid
        self.description = f"QEMU process {pid} memory"
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if writable else os.O_RDONLY)
        except OSError as exc:
            raise CloudVMIError(
                f"cannot open /proc/{pid}/mem (needs root): {exc.strerror}") from exc
        self.writable = writable
        super().__init__(regions)

    def _read_at(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as exc:
            raise GuestMemoryError(f"QEMU {self.pid} memory read at {offset:#x}: {exc}") from exc
        if len(data) != size:
            raise GuestMemoryError(f"short read from QEMU {self.pid} at {offset:#x}")
        return data

    def _write_at(self, offset: int, data: bytes) -> None:
        if os.pwrite(self._fd, data, offset) != len(data):
            raise GuestMemoryError(f"short write to QEMU {self.pid} at {offset:#x}")

    def close(self) -> None:
        os.close(self._fd)

"""A VM's guest-physical memory as a read-only, seekable file: offset N is guest-physical
address N, holes (below 1 MiB, the PCI hole) read as zeros, as in a raw RAM image. Tools that
read memory images from files (Volatility's FileLayer) read any VM through it."""

from __future__ import annotations

import io
from collections import OrderedDict

from cloudvmi.errors import CloudVMIError

BLOCK = 64 << 10  # reads go to the VM in blocks: a remote VM costs a round trip per read
CACHED_BLOCKS = 256  # 16 MiB: page-table walks and struct reads hit the same few pages
MAX_PIECE = 4 << 20  # the largest single read sent to the VM


class GuestPhysicalFile(io.RawIOBase):
    """Guest-physical memory of VM (anything with memory_regions() and read_physical()).

    Blocks read are kept (CACHED_BLOCKS, least recently used out): a reader of a running VM
    sees each block as it was when first read; hold the VM still for one consistent view."""

    def __init__(self, vm) -> None:
        super().__init__()
        self.vm = vm
        regions = sorted((int(start), int(size)) for start, size in vm.memory_regions())
        self.regions = [(start, start + size) for start, size in regions if size > 0]
        if not self.regions:
            raise CloudVMIError(f"{getattr(vm, 'name', vm)} has no guest RAM regions")
        self.size = self.regions[-1][1]
        self.pos = 0
        self.blocks: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.size - self.pos))
        done = 0
        while done < n:
            address = self.pos + done
            index, within = divmod(address, BLOCK)
            if within == 0 and n - done >= BLOCK:  # whole blocks: straight in, not kept
                take = (n - done) // BLOCK * BLOCK
                take = min(take, MAX_PIECE)
                view[done:done + take] = self._read(address, take)
            else:
                block = self._block(index)
                take = min(n - done, BLOCK - within)
                view[done:done + take] = block[within:within + take]
            done += take
        self.pos += n
        return n

    def _block(self, index: int) -> bytes:
        block = self.blocks.get(index)
        if block is None:
            block = self._read(index * BLOCK, min(BLOCK, self.size - index * BLOCK))
            self.blocks[index] = block
            if len(self.blocks) > CACHED_BLOCKS:
                self.blocks.popitem(last=False)
        else:
            self.blocks.move_to_end(index)
        return block

    def _read(self, address: int, size: int) -> bytes:
        """SIZE bytes at ADDRESS: RAM from the VM, zeros in holes."""
        out = bytearray(size)
        end = address + size
        for start, stop in self.regions:
            lo, hi = max(address, start), min(end, stop)
            if lo < hi:
                data = self.vm.read_physical(lo, hi - lo)
                if len(data) != hi - lo:
                    raise CloudVMIError(f"short read at {lo:#x}: {len(data)} of {hi - lo} "
                                        "bytes")
                out[lo - address:hi - address] = data
        return bytes(out)

    def forget(self) -> None:
        """Drop the kept blocks (the guest ran since they were read)."""
        self.blocks.clear()

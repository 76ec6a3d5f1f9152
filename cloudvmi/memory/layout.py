"""Guest RAM layout of a running QEMU, read over QMP: which guest-physical ranges are RAM."""

import re

from cloudvmi.errors import CloudVMIError
from cloudvmi.memory.base import Region

_ROW = re.compile(
    r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (ram|rom|romd)\): (\S+)(?: @([0-9a-f]+))?",
    re.M,
)


def parse_mtree(text: str) -> tuple[str, list[Region]]:
    """From `info mtree -f`, the main RAM block's name and its guest-physical regions.

    Region.offset is the offset inside that RAM block (the file offset of a shm backend).
    ROM views of the block (BIOS shadow areas) count as RAM: the bytes are the block's.
    """
    flat = text.split("FlatView #")
    system = next((v for v in flat if 'AS "memory"' in v), None)
    if system is None:
        raise CloudVMIError("QEMU's memory tree has no system address space")
    rows = [
        (int(m[1], 16), int(m[2], 16) + 1, m[4], int(m[5] or "0", 16))
        for m in _ROW.finditer(system)
    ]
    sizes: dict[str, int] = {}
    for start, end, name, _ in rows:
        sizes[name] = sizes.get(name, 0) + end - start
    if not sizes:
        raise CloudVMIError("QEMU's memory tree lists no RAM")
    block = max(sizes, key=sizes.__getitem__)
    regions: list[Region] = []
    for start, end, name, offset in rows:
        if name != block:
            continue
        last = regions[-1] if regions else None
        if last and last.end == start and last.offset + last.size == offset:
            regions[-1] = Region(last.start, last.size + end - start, last.offset)
        else:
            regions.append(Region(start, end - start, offset))
    return block, regions


_HVA = re.compile(r"Host virtual address for 0x([0-9a-f]+) \((\S+)\) is 0x([0-9a-f]+)")


def host_regions(qmp, regions: list[Region]) -> list[Region]:
    """Rebase regions onto the QEMU process's virtual addresses (for /proc/PID/mem)."""
    out = []
    for region in regions:
        answer = qmp.hmp(f"gpa2hva {region.start:#x}")
        match = _HVA.search(answer)
        if not match:
            raise CloudVMIError(f"QEMU did not give a host address for {region.start:#x}: "
                                f"{answer.strip()}")
        out.append(Region(region.start, region.size, int(match[3], 16)))
    return out

"""Physical memory sources: region maps, mmap'd files, ELF dumps (synthetic files)."""

import struct

import pytest

from cloudvmi.errors import CloudVMIError, UnmappedAddress
from cloudvmi.memory.base import Region, RegionMap
from cloudvmi.memory.elfdump import open_elf_dump
from cloudvmi.memory.mapped import MappedFileMemory


def test_region_map_finds_and_splits():
    rmap = RegionMap([Region(0x100000000, 0x1000, 0x3000), Region(0, 0x3000, 0)])
    assert rmap.find(0x2FFF).start == 0
    assert rmap.find(0x100000000).offset == 0x3000
    with pytest.raises(UnmappedAddress):
        rmap.find(0x3000)
    with pytest.raises(UnmappedAddress):
        list(rmap.pieces(0x2FF0, 0x20))  # runs into the hole


def test_overlapping_regions_are_refused():
    with pytest.raises(CloudVMIError):
        RegionMap([Region(0, 0x2000, 0), Region(0x1000, 0x2000, 0x2000)])


def test_mapped_file_read_write_and_holes(tmp_path):
    path = tmp_path / "ram"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    # guest [0, 8K) at file 0, guest [1M, 1M+8K) at file 8K: a hole between them
    mem = MappedFileMemory(path, [Region(0, 0x2000, 0), Region(0x100000, 0x2000, 0x2000)],
                           writable=True)
    assert mem.read(0x10, 4) == bytes([0x10, 0x11, 0x12, 0x13])
    assert mem.read(0x100000, 2) == bytes([0, 1])
    with pytest.raises(UnmappedAddress):
        mem.read(0x1FFF, 2)
    mem.write(0x100001, b"\xaa\xbb")
    assert path.read_bytes()[0x2001:0x2003] == b"\xaa\xbb"
    assert list(mem.find(b"\xaa\xbb")) == [0x100001]
    mem.close()


def test_read_only_source_refuses_writes(tmp_path):
    path = tmp_path / "ram"
    path.write_bytes(b"\0" * 4096)
    mem = MappedFileMemory(path)
    with pytest.raises(CloudVMIError):
        mem.write(0, b"x")


def _elf_core(segments: list[tuple[int, bytes]]) -> bytes:
    """A minimal ELF64 core file with PT_LOAD segments at the given guest-physical addresses."""
    phoff, phnum = 64, len(segments)
    data_off = phoff + 56 * phnum
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs, blobs, off = b"", b"", data_off
    for paddr, blob in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 6, off, paddr, paddr, len(blob), len(blob), 4096)
        blobs += blob
        off += len(blob)
    return header + phdrs + blobs


def test_elf_dump_segments(tmp_path):
    path = tmp_path / "dump.elf"
    path.write_bytes(_elf_core([(0, b"A" * 4096), (0x100000000, b"B" * 4096)]))
    mem, info = open_elf_dump(path)
    assert mem.read(0xFFF, 1) == b"A" and mem.read(0x100000000, 1) == b"B"
    assert not info.truncated
    with pytest.raises(UnmappedAddress):
        mem.read(0x1000, 1)


def test_elf32_and_extended_numbering_dumps(tmp_path):
    """QEMU writes ELF32 for a guest not in long mode, and puts the number of program
    headers in section 0's sh_info when e_phnum cannot hold it (PN_XNUM)."""
    header = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIIIIIHHHHHH", 4, 3, 1, 0, 52, 0, 0, 52, 32, 1, 40, 0, 0)
    phdr = struct.pack("<IIIIIIII", 1, 84, 0x2000, 0x2000, 4096, 4096, 6, 4096)
    path = tmp_path / "dump32.elf"
    path.write_bytes(header + phdr + b"C" * 4096)
    mem, _ = open_elf_dump(path)
    assert mem.read(0x2000, 2) == b"CC"
    core = bytearray(_elf_core([(0, b"A" * 4096), (0x100000, b"B" * 4096)]))
    shoff = len(core)
    struct.pack_into("<QH", core, 40, shoff, 0)  # e_shoff
    struct.pack_into("<H", core, 56, 0xFFFF)  # e_phnum = PN_XNUM
    core += struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 2, 0, 0)  # sh_info = 2
    path = tmp_path / "xnum.elf"
    path.write_bytes(bytes(core))
    mem, _ = open_elf_dump(path)
    assert mem.read(0x100000, 1) == b"B"


def test_truncated_elf_dump_keeps_what_it_has(tmp_path):
    path = tmp_path / "dump.elf"
    full = _elf_core([(0, b"A" * 4096), (0x100000, b"B" * 4096)])
    path.write_bytes(full[: len(full) - 4096 - 100])  # cut inside the first segment
    mem, info = open_elf_dump(path)
    assert info.truncated and "truncated" in mem.description
    assert mem.read(0, 1) == b"A"
    with pytest.raises(UnmappedAddress):
        mem.read(0x100000, 1)


def test_garbage_is_not_an_elf_dump(tmp_path):
    path = tmp_path / "dump.elf"
    path.write_bytes(b"\x7fELF" + b"\xff" * 100)
    with pytest.raises(CloudVMIError):
        open_elf_dump(path)

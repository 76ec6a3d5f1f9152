"""QEMU `dump-guest-memory` ELF files: RAM from PT_LOAD segments, vCPU state from notes."""

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from cloudvmi.errors import CloudVMIError
from cloudvmi.memory.base import Region
from cloudvmi.memory.mapped import MappedFileMemory

ELF_MAGIC = b"\x7fELF"
# QEMU's per-vCPU "QEMU" note (QEMUCPUState): 2 u32, 18 u64 registers, 10 segments of
# 24 bytes each, then cr[5] and kernel_gs_base (version 2+).
_QEMU_REGS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
              "r12", "r13", "r14", "r15", "rip", "rflags"]
_QEMU_SEGS = ["cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt"]


@dataclass
class DumpInfo:
    """What the dump says besides RAM: vCPU registers and VMCOREINFO, when present."""

    cpus: list[dict[str, int]] = field(default_factory=list)
    machine: str = ""  # e_machine, as pyelftools names it ("EM_X86_64", "EM_AARCH64")
    vmcoreinfo: str | None = None
    truncated: bool = False


MAX_NOTES = 4 << 20  # bytes of PT_NOTE read: QEMU writes about 1 KiB a vCPU
# What pyelftools raises on a damaged file: its own errors, and OSError for a seek to an
# absurd offset.
_BAD_ELF = (ELFError, struct.error, ValueError, OSError)


def is_elf_dump(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ELF_MAGIC


def _parse_qemu_note(desc: bytes) -> dict[str, int]:
    version, size = struct.unpack_from("<II", desc, 0)
    regs = dict(zip(_QEMU_REGS, struct.unpack_from("<18Q", desc, 8), strict=True))
    pos = 8 + 18 * 8
    for name in _QEMU_SEGS:
        selector, _limit, _flags, _pad, base = struct.unpack_from("<IIIIQ", desc, pos)
        regs[name] = selector
        regs[name + "_base"] = base
        pos += 24
    for i, value in enumerate(struct.unpack_from("<5Q", desc, pos)):
        regs[f"cr{i}"] = value
    return regs


def open_elf_dump(path: str | Path) -> tuple[MappedFileMemory, DumpInfo]:
    """Map an ELF dump; a truncated file keeps the RAM it has and says so."""
    path = Path(path)
    info = DumpInfo()
    regions = []
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            info.machine = str(elf["e_machine"])
            file_size = path.stat().st_size
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                    size = min(seg["p_filesz"], max(0, file_size - seg["p_offset"]))
                    if size < seg["p_filesz"]:
                        info.truncated = True
                    if size:
                        regions.append(Region(seg["p_paddr"], size, seg["p_offset"]))
                elif seg["p_type"] == "PT_NOTE":
                    f.seek(seg["p_offset"])
                    _read_notes(f.read(min(seg["p_filesz"], MAX_NOTES)), info)
    except _BAD_ELF as exc:
        raise CloudVMIError(f"{path} is not a readable ELF memory dump: {exc}") from exc
    if not regions:
        raise CloudVMIError(f"{path} holds no RAM (no PT_LOAD segment with data)")
    memory = MappedFileMemory(path, regions)
    memory.description = f"ELF dump {path}" + (" (truncated)" if info.truncated else "")
    return memory, info


def _read_notes(data: bytes, info: DumpInfo) -> None:
    try:
        for name, _, desc in elf_notes(data):
            if name == b"QEMU" and len(desc) >= 8 + 18 * 8 + 240 + 40 and (
                    info.machine == "EM_X86_64"):  # x86's QEMUCPUState
                info.cpus.append(_parse_qemu_note(desc))
            elif name == b"VMCOREINFO":
                info.vmcoreinfo = desc.decode("ascii", "replace")
    except ValueError:
        info.truncated = True


def elf_notes(data: bytes, endian: str = "<") -> Iterator[tuple[bytes, int, bytes]]:
    """(name, type, data) of each note in DATA, a PT_NOTE segment or SHT_NOTE section. Parsed
    here because pyelftools reads a note's name and data by the sizes the note claims,
    allocating them (4 GiB each) before it finds the file shorter. ValueError when a note
    runs past the end."""
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from(endian + "III", data, pos)
        desc_at = pos + 12 + (namesz + 3) // 4 * 4
        if desc_at + descsz > len(data):
            raise ValueError(f"ELF note at {pos} runs past the end of its notes")
        yield (data[pos + 12:pos + 12 + namesz].split(b"\0", 1)[0], kind,
               data[desc_at:desc_at + descsz])
        pos = desc_at + (descsz + 3) // 4 * 4

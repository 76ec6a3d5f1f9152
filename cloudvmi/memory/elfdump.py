"""QEMU `dump-guest-memory` ELF files: RAM from PT_LOAD segments, vCPU state from notes.

The file header and program headers are read here with struct (ELF32 and ELF64, either byte
order: QEMU writes ELF32 for a guest not in long mode): that is all a dump needs, and
pyelftools' import alone (its DWARF and construct modules) cost a fifth of a `cloudvmi ps
DUMP`."""

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
# (file header after e_ident: e_phoff and e_phnum's places; a program header: its fields)
_CLASSES = {
    1: ("HHIIIIIHHHHHH", ("type", "offset", "vaddr", "paddr", "filesz", "memsz", "flags",
                          "align"), "IIIIIIII"),
    2: ("HHIQQQIHHHHHH", ("type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz",
                          "align"), "IIQQQQQQ"),
}
_BAD_ELF = (struct.error, ValueError, OSError)


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
            info.machine = elf_machine(f)
            file_size = path.stat().st_size
            for seg in program_headers(f):
                if seg["type"] == PT_LOAD and seg["filesz"]:
                    size = min(seg["filesz"], max(0, file_size - seg["offset"]))
                    if size < seg["filesz"]:
                        info.truncated = True
                    if size:
                        regions.append(Region(seg["paddr"], size, seg["offset"]))
                elif seg["type"] == PT_NOTE:
                    f.seek(seg["offset"])
                    _read_notes(f.read(min(seg["filesz"], MAX_NOTES)), info)
    except _BAD_ELF as exc:
        raise CloudVMIError(f"{path} is not a readable ELF memory dump: {exc}") from exc
    if not regions:
        raise CloudVMIError(f"{path} holds no RAM (no PT_LOAD segment with data)")
    memory = MappedFileMemory(path, regions)
    memory.description = f"ELF dump {path}" + (" (truncated)" if info.truncated else "")
    return memory, info


MACHINES = {62: "EM_X86_64", 183: "EM_AARCH64"}  # e_machine, named as the ELF spec does


def elf_machine(f) -> str:
    """The e_machine of the ELF file F by its name ("EM_X86_64"; "EM_<n>" for others)."""
    f.seek(0)
    ident = f.read(20)
    f.seek(0)
    if len(ident) < 20 or ident[:4] != ELF_MAGIC:
        raise ValueError("no ELF magic")
    number = int.from_bytes(ident[18:20], "little" if ident[5] == 1 else "big")
    return MACHINES.get(number, f"EM_{number}")


def program_headers(f) -> list[dict[str, int]]:
    """The program headers of the ELF file F (a binary file object); ValueError (or
    struct.error, OSError) for a file that is not ELF or whose table is cut short."""
    ident = f.read(16)
    if len(ident) < 16 or ident[:4] != ELF_MAGIC:
        raise ValueError("no ELF magic")
    if ident[4] not in _CLASSES or ident[5] not in (1, 2):
        raise ValueError(f"unknown ELF class {ident[4]} or data encoding {ident[5]}")
    endian = "<" if ident[5] == 1 else ">"
    header, names, entry = _CLASSES[ident[4]]
    fields = struct.Struct(endian + header)
    (_type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     *_rest) = fields.unpack(f.read(fields.size))
    if phnum == PN_XNUM:  # too many for e_phnum: section 0's sh_info has the count
        f.seek(shoff + (28 if ident[4] == 1 else 44))
        phnum = struct.unpack(endian + "I", f.read(4))[0]
    phdr = struct.Struct(endian + entry)
    if phnum and phentsize < phdr.size:
        raise ValueError(f"program header entries of {phentsize} bytes (ELF says "
                         f"{phdr.size})")
    end = f.seek(0, 2)
    if phoff + phnum * phentsize > end:
        raise ValueError(f"program header table at {phoff} runs past the end of the file")
    f.seek(phoff)
    table = f.read(phnum * phentsize)
    if len(table) < phnum * phentsize:
        raise ValueError(f"program header table at {phoff} runs past the end of the file")
    return [dict(zip(names, phdr.unpack_from(table, i * phentsize), strict=True))
            for i in range(phnum)]


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

"""What an architecture module provides, as one object: `Arch`."""

import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class SyscallABI:
    """How user code enters the kernel: numbers, registers, the instruction, the flags and
    structures whose values differ by architecture (O_DIRECTORY, struct stat, ...)."""

    numbers: dict[str, int]
    nr_register: str
    arg_registers: tuple[str, ...]
    result_register: str
    instruction: str  # its mnemonic, as capstone prints it
    instruction_size: int
    constants: ModuleType  # AT_FDCWD, O_*, PROT_*, MAP_*, AF_*, SIOC*, IFF_*
    stat: struct.Struct
    stat_fields: tuple[str, ...]  # names of the unpacked fields ("" to skip one)
    no_return: frozenset[int]  # calls that never return to their call site (sigreturn, exec)

    def nr(self, name: str) -> int:
        try:
            return self.numbers[name]
        except KeyError:
            raise ValueError(f"no system call {name!r} in this ABI") from None

    def __getattr__(self, name: str) -> Any:
        if name.isupper():  # a constant: abi.O_CREAT
            return getattr(self.constants, name)
        raise AttributeError(name)

    @property
    def stat_size(self) -> int:
        return self.stat.size

    def parse_stat(self, raw: bytes) -> dict[str, Any]:
        """A `struct stat` as a dict: ino, mode, nlink, uid, gid, size, mtime (seconds)."""
        values = dict(zip(self.stat_fields, self.stat.unpack(raw[:self.stat.size]),
                          strict=True))
        values.pop("", None)
        values["mtime"] = values.pop("mtime_sec") + values.pop("mtime_nsec") / 1e9
        return values


@dataclass(frozen=True)
class Arch:
    name: str
    pointer_size: int
    endian: str  # struct prefix: "<" or ">"
    page_size: int
    # Kernel address-space layout (Linux on this CPU)
    kernel_window: tuple[int, int]  # where the kernel image is mapped
    kernel_align: int  # physical load-address alignment of the kernel image
    direct_map: dict[int, int]  # default direct-map base per paging depth
    thread_size: int  # kernel stack size (a pt_regs frame sits at its top)
    # (virtual - physical) of the kernel image from VMCOREINFO's numbers and symbols (a lookup
    # of NUMBER(name)); None when the note lacks what this architecture needs
    image_offset: Callable[[Callable[[str], int | None]], int | None]
    kernel_space: int  # addresses at or above this are the kernel's
    # Registers
    saved_registers: tuple[str, ...]  # those an injection may change and must put back
    pc: str
    user_mode: Callable[[dict[str, int]], bool]
    page_table_root: Callable[[dict[str, int]], int]  # from registers, flags masked
    pt_regs: dict[str, str]  # debugger register name -> struct pt_regs member
    tif_sigpending: int  # bit of TIF_SIGPENDING in thread_info.flags
    syscall_entry: str  # the kernel's system-call entry symbol
    entry_return_pc: str  # the register holding the user return address at that entry
    # Execution
    syscall: SyscallABI
    batch_code: bytes
    batch_done: int  # offset of the interpreter's final self-loop
    resume_stub: Callable[[dict[str, int]], tuple[bytes, int]]  # (code, entry) that restores
    # what the kernel overwrites on a system call's return, then jumps to the saved PC
    helper_code: bytes  # the persistent channel's helper (entered with its mailbox address)
    helper_parked: int  # offset where the hijacked thread parks once the helper is forked
    helper_register: str  # the register that carries the mailbox address
    capstone: tuple[str, str]  # capstone's architecture and mode constants, by name
    address_space: Callable[..., Any]  # AddressSpace(phys, root, levels, cache=None)
    translation_cache: Callable[..., Any]

    @property
    def pointer(self) -> struct.Struct:
        return struct.Struct(self.endian + ("Q" if self.pointer_size == 8 else "I"))

    def read_pointer(self, raw: bytes, offset: int = 0) -> int:
        return self.pointer.unpack_from(raw, offset)[0]

"""What an architecture module provides, as one object: `Arch`."""

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

# System calls from 424 on have one number on every architecture (the kernel gave them a
# single table); each architecture's table lists only what comes before.
UNIFIED_SYSCALLS = """
424 pidfd_send_signal 425 io_uring_setup
426 io_uring_enter 427 io_uring_register 428 open_tree 429 move_mount 430 fsopen 431 fsconfig
432 fsmount 433 fspick 434 pidfd_open 435 clone3 436 close_range 437 openat2 438 pidfd_getfd
439 faccessat2 440 process_madvise 441 epoll_pwait2 442 mount_setattr 443 quotactl_fd
444 landlock_create_ruleset 445 landlock_add_rule 446 landlock_restrict_self 447 memfd_secret
448 process_mrelease 449 futex_waitv 450 set_mempolicy_home_node
451 cachestat 452 fchmodat2 453 map_shadow_stack 454 futex_wake 455 futex_wait
456 futex_requeue 457 statmount 458 listmount 459 lsm_get_self_attr 460 lsm_set_self_attr
461 lsm_list_modules 462 mseal 463 setxattrat 464 getxattrat 465 listxattrat 466 removexattrat
467 open_tree_attr
"""


def syscall_numbers(table: str) -> dict[str, int]:
    """NAME -> number from "NR NAME ..." text, with the unified numbers added."""
    words = (table + UNIFIED_SYSCALLS).split()
    return {name: int(nr) for nr, name in zip(words[::2], words[1::2], strict=True)}


@dataclass(frozen=True)
class SyscallTable:
    """A table of system-call entry points in the kernel image, and how an entry is told
    right: numbers below NAMED_BELOW must be the function the ABI names for them (its
    symbol is PREFIXES[0] plus the name, or the kernel's alias of it); the others only of
    this table's kind (a symbol starting with one of PREFIXES)."""

    symbol: str
    abi: str  # a short name for reports: x64, ia32, x32, arm64, arm32
    prefixes: tuple[str, ...]
    named_below: int
    how: str  # how an entry is checked, for reports


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
    kernel_pgd_symbols: tuple[str, ...]  # the kernel's top page table, first found wins
    # Paging depth from the kernel image: read(symbol, size) -> bytes, or None without it
    paging_levels: Callable[[Callable[[str, int], bytes | None]], int]
    # The direct map as (virtual base, physical address there), from the image's variables
    # (read_u64(symbol) -> int | None) and a check that a virtual address maps a physical one
    direct_map_base: Callable[[Callable[[str], int | None], Callable[[int, int], bool],
                               int, int], tuple[int, int]]
    default_text: int  # where _text is linked before KASLR (a layout's, for the slide)
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
    # resume_stub(saved registers, its address) -> (code, entry) that restores what the
    # kernel overwrites on a system call's return, then jumps to the saved PC; None when no
    # such code can be placed at that address (out of a direct branch's reach)
    resume_stub: Callable[[dict[str, int], int], tuple[bytes, int] | None]
    helper_code: bytes  # the persistent channel's helper (entered with its mailbox address)
    helper_parked: int  # offset where the hijacked thread parks once the helper is forked
    helper_register: str  # the register that carries the mailbox address
    capstone: tuple[str, str]  # capstone's architecture and mode constants, by name
    # AddressSpace(phys, root, levels, cache=None, kernel_root=None): a process's space is
    # its root with, where the CPU has a second root for the kernel half, KERNEL_ROOT
    address_space: Callable[..., Any]
    translation_cache: Callable[..., Any]
    # The kernel image's variable holding (virtual - physical) of the image (arm64's
    # kimage_voffset): the slide read, then checked on the page tables; None: search them
    image_voffset_symbol: str | None = None
    # The kernel's system-call tables, the function names it gives some numbers instead of
    # sys_NAME, and its switch dispatchers (symbol, table abi) where it has them
    syscall_tables: tuple[SyscallTable, ...] = ()
    syscall_aliases: dict[str, str] = field(default_factory=dict)
    syscall_dispatchers: tuple[tuple[str, str], ...] = ()
    # Where module memory lies: [(start, end)] from the image's variables (read_u64(symbol)
    # -> int | None) and the image's end
    module_areas: Callable[[Callable[[str], int | None], int], list[tuple[int, int]]] = \
        lambda read_u64, image_end: []
    qemu_names: tuple[str, ...] = ()  # QMP query-target's "arch" for this CPU
    elf_machine: str = ""  # a dump's e_machine, as pyelftools names it
    writable: bool = True  # system calls can be injected (registers, batch, helper known)
    # Injection details that differ by architecture
    table_registers: tuple[str, str] = ("r12", "r13")  # the batch's first entry and its end
    # registers the gdbstub's `g` packet lacks and the injection needs (read one by one)
    system_registers: tuple[str, ...] = ()
    # the kernel's per-CPU offset of a stopped vCPU, from its registers
    per_cpu_offset: Callable[[dict[str, int]], int] = lambda regs: 0
    # per-CPU variables holding the task that runs on a CPU, first found wins
    current_task_symbols: tuple[str, ...] = ("current_task",)
    # registers set, besides PC and arguments, whenever injected code runs (from the saved)
    run_registers: Callable[[dict[str, int]], dict[str, int]] = lambda saved: {}
    stub_reach: int = 0  # how far the resume stub may sit from the saved PC (0: anywhere)
    # thread_info.flags bits of a thread with user state that a system call discards (arm64's
    # SVE and SME state): such a thread is taken only where its own system call returns
    syscall_discards: int = 0
    # at the syscall entry symbol: whether the exception taken is a system call (arm64's
    # entry takes every synchronous exception from user mode: faults too)
    entry_is_syscall: Callable[[dict[str, int]], bool] = lambda regs: True

    @property
    def pointer(self) -> struct.Struct:
        return struct.Struct(self.endian + ("Q" if self.pointer_size == 8 else "I"))

    def read_pointer(self, raw: bytes, offset: int = 0) -> int:
        return self.pointer.unpack_from(raw, offset)[0]

"""x86-64: 4- and 5-level paging, the Linux x86-64 system-call ABI, the batch interpreter and
the persistent channel's helper."""

from collections.abc import Callable

from cloudvmi.arch.base import Arch, SyscallTable
from cloudvmi.arch.x86_64 import abi, helper
from cloudvmi.arch.x86_64.batch import CODE, DONE, resume_stub
from cloudvmi.arch.x86_64.paging import PAGE, AddressSpace, Mapping, TranslationCache

START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
KERNEL_SPACE = 0xFFFF_8000_0000_0000


def _user_mode(regs: dict[str, int]) -> bool:
    return regs["cs"] & 3 == 3


def _per_cpu_offset(regs: dict[str, int]) -> int:
    """The kernel's per-CPU base is in GS_BASE or, in user mode and at syscall entry before
    swapgs, in KERNEL_GS_BASE: the one that is a kernel address."""
    base = regs.get("gs_base", 0)
    return base if base >= KERNEL_SPACE else regs.get("k_gs_base", 0)


def _root(regs: dict[str, int]) -> int:
    """CR3 without PCID bits and without the PTI user/kernel selector bit."""
    return regs["cr3"] & 0x000F_FFFF_FFFF_E000


def _image_offset(number: Callable[[str], int | None]) -> int | None:
    """__pa(x) = x - __START_KERNEL_map + phys_base for kernel-image addresses."""
    phys_base = number("phys_base")
    return None if phys_base is None else (START_KERNEL_MAP - phys_base) % (1 << 64)


def _levels(read: Callable[[str, int], bytes | None]) -> int:
    """5 when the kernel switched LA57 on (__pgtable_l5_enabled), else 4."""
    raw = read("__pgtable_l5_enabled", 4)
    return 5 if raw and int.from_bytes(raw, "little") else 4


DIRECT_MAP = {4: 0xFFFF_8880_0000_0000, 5: 0xFF11_0000_0000_0000}


def _direct_map(read_u64: Callable[[str], int | None], maps: Callable[[int, int], bool],
                levels: int, ram_start: int) -> tuple[int, int]:
    """page_offset_base (KASLR moves it), or the layout's default; physical 0 there."""
    base = read_u64("page_offset_base")
    return (DIRECT_MAP[levels] if base is None else base), 0


# MODULES_END (arch/x86/include/asm/pgtable_64_types.h); the area starts after the kernel
# image (MODULES_VADDR is the end of the image's window, 512 MiB or 1 GiB).
MODULES_END = 0xFFFF_FFFF_FF00_0000


def _module_areas(read_u64: Callable[[str], int | None], image_end: int) -> list[tuple[int, int]]:
    return [((image_end + 0xFFF) & ~0xFFF, MODULES_END)]


X32_FIRST = 512  # x32-only system calls are 512-547
SYSCALL_TABLES = (
    SyscallTable("sys_call_table", "x64", ("__x64_sys_",), 1 << 16,
                 "against the function the x86-64 ABI names for its number"),
    SyscallTable("ia32_sys_call_table", "ia32", ("__ia32_sys_", "__ia32_compat_sys_"), 0,
                 "for its kind only: an ia32 syscall entry in kernel text (no i386 table "
                 "here)"),
    SyscallTable("x32_sys_call_table", "x32",
                 ("__x64_sys_", "__x32_compat_sys_", "__x64_compat_sys_"), X32_FIRST,
                 "below 512 against the x86-64 ABI's names, x32-only ones (512-547) for "
                 "their kind"),
)
# How the kernel names the entry of some numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SYSCALL_ALIASES = {"stat": "newstat", "fstat": "newfstat", "lstat": "newlstat",
                   "sendfile": "sendfile64", "uname": "newuname", "umount2": "umount"}

ARCH = Arch(
    name="x86_64", pointer_size=8, endian="<", page_size=PAGE,
    kernel_window=(START_KERNEL_MAP, START_KERNEL_MAP + (1 << 30)),  # KERNEL_IMAGE_SIZE
    kernel_align=2 << 20,  # CONFIG_PHYSICAL_ALIGN is a multiple of 2 MiB
    direct_map=DIRECT_MAP,
    thread_size=16 * 1024,  # THREAD_SIZE_ORDER 2, no KASAN
    image_offset=_image_offset,
    kernel_space=KERNEL_SPACE,
    kernel_pgd_symbols=("init_top_pgt", "init_level4_pgt"), paging_levels=_levels,
    direct_map_base=_direct_map, default_text=0xFFFF_FFFF_8100_0000,
    saved_registers=("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9",
                     "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"),
    pc="rip", user_mode=_user_mode, page_table_root=_root,
    pt_regs={"r15": "r15", "r14": "r14", "r13": "r13", "r12": "r12", "rbp": "bp",
             "rbx": "bx", "r11": "r11", "r10": "r10", "r9": "r9", "r8": "r8", "rax": "ax",
             "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di", "rip": "ip",
             "eflags": "flags", "rsp": "sp", "cs": "cs", "ss": "ss"},
    tif_sigpending=2, syscall_entry="entry_SYSCALL_64", entry_return_pc="rcx",
    syscall=abi.ABI, batch_code=CODE, batch_done=DONE, resume_stub=resume_stub,
    helper_code=helper.CODE, helper_parked=helper.PARKED, helper_register="r14",
    capstone=("CS_ARCH_X86", "CS_MODE_64"), address_space=AddressSpace,
    translation_cache=TranslationCache, qemu_names=("x86_64",), elf_machine="EM_X86_64",
    syscall_tables=SYSCALL_TABLES, syscall_aliases=SYSCALL_ALIASES,
    syscall_dispatchers=(("x64_sys_call", "x64"), ("ia32_sys_call", "ia32"),
                         ("x32_sys_call", "x32")),
    module_areas=_module_areas,
    table_registers=("r12", "r13"), per_cpu_offset=_per_cpu_offset,
    current_task_symbols=("current_task",),
)

__all__ = ["ARCH", "AddressSpace", "Mapping", "TranslationCache", "PAGE"]

"""arm64 (AArch64): 4 KiB-granule translation with 48- and 52-bit virtual addresses, two
roots (TTBR1 for the kernel, TTBR0 for a process), Linux's arm64 kernel layout."""

from collections.abc import Callable

from cloudvmi.arch.aarch64 import abi, batch, helper
from cloudvmi.arch.aarch64.paging import AddressSpace, TranslationCache
from cloudvmi.arch.base import Arch, SyscallTable
from cloudvmi.arch.paging import PAGE

# PAGE_OFFSET, the start of the linear map, is -(1 << VA_BITS): a build constant.
PAGE_OFFSETS = {4: 0xFFFF_0000_0000_0000, 5: 0xFFF0_0000_0000_0000}
KIMAGE_VADDR = 0xFFFF_8000_0800_0000  # 48-bit, 128 MiB of modules below (to 6.x's 2 GiB)
TIF_SIGPENDING, TIF_SVE, TIF_SME = 0, 23, 27  # arch/arm64/include/asm/thread_info.h


def _image_offset(number: Callable[[str], int | None]) -> int | None:
    """VMCOREINFO's kimage_voffset: kernel-image virtual minus physical."""
    return number("kimage_voffset")


def _levels(read: Callable[[str, int], bytes | None]) -> int:
    """From vabits_actual, what the kernel chose at boot: 52 bits (FEAT_LPA2 with 4 KiB
    pages, a 52-bit build on a CPU that has it) walk 5 levels, 48 bits 4, 39 bits 3."""
    raw = read("vabits_actual", 8)
    bits = int.from_bytes(raw, "little") if raw else 48
    return {52: 5, 48: 4, 39: 3}.get(bits, 4)


def _direct_map(read_u64: Callable[[str], int | None], maps: Callable[[int, int], bool],
                levels: int, ram_start: int) -> tuple[int, int]:
    """The linear map: __va(p) = p - memstart_addr + PAGE_OFFSET. PAGE_OFFSET follows the
    build's VA_BITS, which no variable holds, so each layout's is tried and the one whose
    translation of RAM's first page the kernel's own tables confirm is taken. (A 52-bit
    build on a 48-bit CPU lowers memstart_addr instead, so the same formula holds.)"""
    memstart = read_u64("memstart_addr")
    if memstart is None:
        memstart = ram_start
    memstart = memstart - (1 << 64) if memstart >> 63 else memstart  # an s64
    for page_offset in sorted(set(PAGE_OFFSETS.values()), reverse=True):
        virt = (ram_start - memstart + page_offset) % (1 << 64)
        if maps(virt, ram_start):
            return page_offset, memstart % (1 << 64)
    return PAGE_OFFSETS[levels], memstart % (1 << 64)


def _ttbr_table(regs: dict[str, int]) -> int:
    """TTBR0_EL1's table address: BADDR[47:6], and with 52-bit output addresses BADDR[51:48]
    in bits 5:2 (RES0 otherwise); the ASID (63:48) and CnP (bit 0) dropped."""
    ttbr = regs["ttbr0_el1"]
    return (ttbr & 0x0000_FFFF_FFFF_FFC0) | ((ttbr >> 2) & 0xF) << 48


MODULES_VSIZE = 128 << 20  # where modules go first; with PLTs, anywhere 2 GiB from there


def _module_areas(read_u64: Callable[[str], int | None], image_end: int) -> list[tuple[int, int]]:
    """Module memory from the kernel's own choice at boot: 6.5 on, a direct area within
    branch range of the image and a PLT area (module_direct_base, module_plt_base, each 0
    when unused); before, one base that both grow from (module_alloc_base)."""
    areas = []
    direct, plt = read_u64("module_direct_base"), read_u64("module_plt_base")
    if direct:
        areas.append((direct, direct + MODULES_VSIZE))
    if plt:
        areas.append((plt, plt + (2 << 30)))
    base = read_u64("module_alloc_base")
    if not areas and base:
        areas.append((base, base + (2 << 30)))
    return areas


SYSCALL_TABLES = (
    SyscallTable("sys_call_table", "arm64", ("__arm64_sys_",), 1 << 16,
                 "against the function the generic table names for its number"),
    SyscallTable("compat_sys_call_table", "arm32", ("__arm64_compat_sys_", "__arm64_sys_"),
                 0, "for its kind only: a 32-bit (compat) syscall entry in kernel text"),
)
# Numbers whose function the kernel names otherwise (include/uapi/asm-generic/unistd.h,
# arch/arm64/kernel/sys.c)
SYSCALL_ALIASES = {"fstat": "newfstat", "uname": "newuname", "sendfile": "sendfile64",
                   "umount2": "umount", "fadvise64": "fadvise64_64",
                   "personality": "arm64_personality"}


def _per_cpu_offset(regs: dict[str, int]) -> int:
    """Linux keeps each CPU's __per_cpu_offset in TPIDR_EL1 (TPIDR_EL2 when it runs at EL2
    with VHE, which lab guests do not)."""
    return regs["tpidr_el1"]


def _entry_is_syscall(regs: dict[str, int]) -> bool:
    """ESR_EL1's exception class at el0t_64_sync: 0x15 is an SVC from AArch64 (the entry
    also takes faults, which return to the faulting instruction)."""
    return regs["esr_el1"] >> 26 & 0x3F == 0x15


def _run_registers(saved: dict[str, int]) -> dict[str, int]:
    """PSTATE.BTYPE (bits 11:10) cleared: the vDSO's pages are BTI-guarded, and a thread
    stopped just after an indirect branch would otherwise fault on our `svc` there."""
    return {"cpsr": saved["cpsr"] & ~0xC00}


ARCH = Arch(
    name="arm64", pointer_size=8, endian="<", page_size=PAGE,
    kernel_window=(0xFFF0_0000_0000_0000, (1 << 64) - 1),
    kernel_align=2 << 20,  # the Image is placed 2 MiB-aligned (MIN_KIMG_ALIGN)
    direct_map=PAGE_OFFSETS,
    thread_size=16 * 1024,
    image_offset=_image_offset,
    kernel_space=0xFFF0_0000_0000_0000,
    kernel_pgd_symbols=("swapper_pg_dir",), paging_levels=_levels,
    direct_map_base=_direct_map, default_text=KIMAGE_VADDR,
    saved_registers=(*(f"x{i}" for i in range(31)), "sp", "pc", "cpsr"),
    pc="pc", user_mode=lambda regs: regs["cpsr"] & 0xF == 0,
    page_table_root=_ttbr_table,
    # struct pt_regs begins with struct user_pt_regs: regs[31], sp, pc, pstate
    pt_regs={**{f"x{i}": f"regs[{i}]" for i in range(31)}, "sp": "sp", "pc": "pc",
             "cpsr": "pstate"},
    tif_sigpending=TIF_SIGPENDING, syscall_entry="el0t_64_sync", entry_return_pc="elr_el1",
    syscall=abi.ABI, batch_code=batch.CODE, batch_done=batch.DONE,
    resume_stub=batch.resume_stub,
    helper_code=helper.CODE, helper_parked=helper.PARKED, helper_register="x28",
    capstone=("CS_ARCH_ARM64", "CS_MODE_ARM"), address_space=AddressSpace,
    translation_cache=TranslationCache, image_voffset_symbol="kimage_voffset",
    qemu_names=("aarch64",), elf_machine="EM_AARCH64", writable=True,
    table_registers=batch.TABLE_REGISTERS,
    # QEMU's gdbstub sends these with `p` only (its `g` packet holds x0-x30, sp, pc, cpsr)
    system_registers=("ttbr0_el1", "tpidr_el1", "elr_el1", "esr_el1"),
    per_cpu_offset=_per_cpu_offset, current_task_symbols=("__entry_task",),
    run_registers=_run_registers, stub_reach=batch.STUB_REACH,
    # A system call discards SVE state beyond the FPSIMD registers (and streaming SVE): a
    # thread that has it live (TIF_SVE, TIF_SME) is taken only where a system call returns.
    syscall_discards=1 << TIF_SVE | 1 << TIF_SME, entry_is_syscall=_entry_is_syscall,
    syscall_tables=SYSCALL_TABLES, syscall_aliases=SYSCALL_ALIASES,
    module_areas=_module_areas,
)

__all__ = ["ARCH", "AddressSpace"]

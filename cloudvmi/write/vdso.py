"""A system-call instruction in the vDSO: code every process maps and that we may execute
without writing a byte. Found by disassembling the kernel's own copy of the image (a process
may not have faulted in every vDSO page)."""

import io
import re
import struct

from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.write.errors import InjectionError

MAX_VDSO = 64 * 1024
# The 64-bit image's name: vdso_image_64 until 6.x, vdso64_image from 7.x; vdso_image where
# there is one image only. Other kernels are probed by the pattern below.
VDSO_IMAGES = ("vdso_image_64", "vdso64_image", "vdso_image")
VDSO_PATTERN = re.compile(r"vdso_?(image_?)?64(_image)?")


def vdso_symbol(kernel: LinuxKernel) -> str:
    """The kernel's struct vdso_image of the native 64-bit vDSO (a data symbol)."""
    symbol = next((s for s in VDSO_IMAGES if kernel.symbols.get(s)), None)
    if symbol is None:
        symbol = next((n for n, t in zip(kernel.symbols.names, kernel.symbols.types,
                                         strict=True)
                       if t in "dDrR" and VDSO_PATTERN.fullmatch(n)), None)
    if symbol is None:
        raise InjectionError("the kernel has no vDSO image symbol")
    return symbol


def vdso_image(kernel: LinuxKernel) -> bytes:
    """The kernel's copy of the native vDSO: x86-64 describes it with a struct vdso_image;
    arm64 (and the other ports of the generic vDSO) link it between vdso_start and
    vdso_end."""
    start, end = kernel.symbols.get("vdso_start"), kernel.symbols.get("vdso_end")
    if start is not None and end is not None:
        data, size = start, end - start
    else:
        image = Record(kernel.btf, "vdso_image", {"data": "data", "size": "size"})
        v = image.read(kernel, kernel.symbols.lookup(vdso_symbol(kernel)))
        data, size = v["data"], v["size"]
    if not 64 <= size <= MAX_VDSO:
        raise InjectionError(f"implausible vDSO image size {size}")
    return kernel.read(data, size)


def vdso_syscall_offset(kernel: LinuxKernel) -> int:
    """Offset of a system-call instruction inside the vDSO, from the kernel's image of it."""
    return find_syscall_instruction(vdso_image(kernel), kernel.arch.capstone,
                                    kernel.arch.syscall.instruction)


def find_syscall_instruction(image: bytes, mode: tuple[str, str] = ("CS_ARCH_X86", "CS_MODE_64"),
                             mnemonic: str = "syscall") -> int:
    """Offset of a system-call instruction in a vDSO image, found by disassembling its code
    (an instruction boundary, not just matching bytes); MODE names capstone's architecture
    and mode, MNEMONIC the instruction (`syscall`, `svc`)."""
    import capstone
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(io.BytesIO(image))
        text = elf.get_section_by_name(".text")
        if text is None:
            raise InjectionError("the vDSO has no .text section")
        start, code = text["sh_offset"], text.data()
    except (ELFError, struct.error, ValueError) as exc:
        raise InjectionError(f"the vDSO image is not a readable ELF: {exc}") from exc
    md = capstone.Cs(*(getattr(capstone, name) for name in mode))
    md.skipdata = True
    for insn in md.disasm(code, 0):
        if insn.mnemonic == mnemonic:
            return start + insn.address
    raise InjectionError(f"no {mnemonic} instruction in the vDSO")

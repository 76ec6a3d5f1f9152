"""A system-call instruction in the vDSO: code every process maps and that we may execute
without writing a byte. Found by disassembling the kernel's own copy of the image (a process
may not have faulted in every vDSO page)."""

import io
import struct

from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.write.errors import InjectionError

MAX_VDSO = 64 * 1024
VDSO_IMAGES = ("vdso_image_64", "vdso_image")


def vdso_syscall_offset(kernel: LinuxKernel) -> int:
    """Offset of a system-call instruction inside the vDSO, from the kernel's image of it."""
    symbol = next((s for s in VDSO_IMAGES if kernel.symbols.get(s)), None)
    if symbol is None:
        raise InjectionError("the kernel has no vDSO image symbol")
    image = Record(kernel.btf, "vdso_image", {"data": "data", "size": "size"})
    v = image.read(kernel, kernel.symbols.lookup(symbol))
    if not 64 <= v["size"] <= MAX_VDSO:
        raise InjectionError(f"implausible vDSO image size {v['size']}")
    return find_syscall_instruction(kernel.read(v["data"], v["size"]), kernel.arch.capstone,
                                    kernel.arch.syscall.instruction)


def find_syscall_instruction(image: bytes, mode: tuple[str, str] = ("CS_ARCH_X86", "CS_MODE_64"),
                             mnemonic: str = "syscall") -> int:
    """Offset of a system-call instruction in a vDSO image, found by disassembling its code
    (an instruction boundary, not just matching bytes)."""
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

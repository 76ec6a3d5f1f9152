"""Linux guests: the kernel located from its own memory (kallsyms, BTF, page tables) and
views over it."""

from cloudvmi.memory.base import PhysicalMemory

BANNER = b"Linux version "


def detect(phys: PhysicalMemory) -> bool:
    """A Linux kernel leaves its VMCOREINFO note in RAM (kdump support: found in the first
    tens of MiB) or at least its banner (the image's rodata holds one copy)."""
    from cloudvmi.os.linux.vmcoreinfo import find_vmcoreinfo

    return (next(find_vmcoreinfo(phys), None) is not None
            or next(iter(phys.find(BANNER)), None) is not None)


def facade(vm):
    """`vm.linux`: the views, with the kernel located on first use."""
    from cloudvmi.os.linux.api import Linux

    return Linux(vm.phys, vm.profile_cache, live=vm.live, snapshot=vm.snapshot,
                 symbols=vm.symbols, arch=vm.arch)

"""Linux guests: the kernel located from its own memory (kallsyms, BTF, page tables) and
views over it."""

from cloudvmi.memory.base import PhysicalMemory

BANNER = b"Linux version "


def detect(phys: PhysicalMemory) -> bool:
    """A Linux kernel leaves its banner in RAM (the image's rodata holds one copy)."""
    return next(iter(phys.find(BANNER)), None) is not None


def facade(vm):
    """`vm.linux`: the views, with the kernel located on first use."""
    from cloudvmi.os.linux.api import Linux

    return Linux(vm.phys, vm.profile_cache, live=vm.live, snapshot=vm.snapshot,
                 symbols=vm.symbols)

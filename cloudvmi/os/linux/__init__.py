"""Linux guests: the kernel located from its own memory (kallsyms, BTF, page tables) and
views over it."""

from pathlib import Path

from cloudvmi.memory.base import PhysicalMemory

BANNER = b"Linux version "


def detect(phys: PhysicalMemory, profile_cache: Path | None = None):
    """A build whose profile is cached is known by its banner where the profile puts it (a
    read per 2 MiB slot). Otherwise a Linux kernel leaves its VMCOREINFO note in RAM (kdump
    support; kmalloc'd, so anywhere: high in a large guest) or at least its banner (the
    image's rodata holds one copy): a scan of RAM. Truthy when found: the note when that is
    what was found (a cold locate tries it first instead of scanning again)."""
    from cloudvmi.os.linux.kernel import known_build
    from cloudvmi.os.linux.vmcoreinfo import find_vmcoreinfo

    if known_build(phys, profile_cache):
        return True
    note = next(find_vmcoreinfo(phys), None)
    return note or next(iter(phys.find(BANNER)), None) is not None


def facade(vm, found=None):
    """`vm.linux`: the views, with the kernel located on first use (FOUND: what detect
    found)."""
    from cloudvmi.os.linux.api import Linux
    from cloudvmi.os.linux.vmcoreinfo import VmcoreInfo

    return Linux(vm.phys, vm.profile_cache, live=vm.live, snapshot=vm.snapshot,
                 symbols=vm.symbols, arch=vm.arch,
                 note=found if isinstance(found, VmcoreInfo) else None)

"""Guest architectures, one module each: everything that differs between CPUs (pointer size,
byte order, page-table walk, kernel address-space layout, register file, system-call ABI,
`struct stat`, the batch interpreter) sits behind `Arch`, and nothing above this layer names
a particular CPU."""

from cloudvmi.arch.base import Arch, SyscallABI

NAMES = {"x86_64": "x86_64", "x86-64": "x86_64", "amd64": "x86_64",
         "arm64": "arm64", "aarch64": "arm64"}


def get(name: str = "x86_64") -> Arch:
    """The architecture called NAME (the one a VM's memory and registers were probed as)."""
    canonical = NAMES.get(name)
    if canonical == "x86_64":
        from cloudvmi.arch.x86_64 import ARCH

        return ARCH
    if canonical == "arm64":
        from cloudvmi.arch.aarch64 import ARCH

        return ARCH
    raise ValueError(f"unsupported guest architecture {name!r}")


def from_qemu(target: str) -> Arch:
    """The architecture of a QEMU whose QMP query-target says TARGET ("x86_64", "aarch64")."""
    return get(target)


def from_elf_machine(machine: str) -> Arch:
    """The architecture of an ELF dump whose e_machine is MACHINE (pyelftools' name)."""
    for name in ("x86_64", "arm64"):
        arch = get(name)
        if arch.elf_machine == machine:
            return arch
    raise ValueError(f"unsupported guest architecture: ELF machine {machine!r}")


__all__ = ["Arch", "SyscallABI", "from_elf_machine", "from_qemu", "get"]

"""Guest architectures, one module each: everything that differs between CPUs (pointer size,
byte order, page-table walk, kernel address-space layout, register file, system-call ABI,
`struct stat`, the batch interpreter) sits behind `Arch`, and nothing above this layer names
a particular CPU."""

from cloudvmi.arch.base import Arch, SyscallABI


def get(name: str = "x86_64") -> Arch:
    """The architecture called NAME (the one a VM's memory and registers were probed as)."""
    if name in ("x86_64", "x86-64", "amd64"):
        from cloudvmi.arch.x86_64 import ARCH

        return ARCH
    raise ValueError(f"unsupported guest architecture {name!r}")


__all__ = ["Arch", "SyscallABI", "get"]

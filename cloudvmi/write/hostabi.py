"""The syscall channel speaks one user ABI whatever the guest's: x86-64 Linux's, that of the
redirected programs it serves (host programs of this x86-64 node). Where a guest's ABI
differs (arm64's open flags and `struct stat`, calls its table does not have), a list is
translated on its way in and its outputs on their way out, by the side that knows the guest:
the local VM, or the agent for a remote one. Flags and layouts are the kernels' user ABI,
stable across versions."""

from cloudvmi.arch.base import SyscallABI
from cloudvmi.arch.x86_64.abi import ABI as HOST

# The open flags whose bits differ between x86-64 and the generic ABI (the others agree)
OPEN_FLAGS = ("O_DIRECTORY", "O_NOFOLLOW", "O_DIRECT", "O_LARGEFILE")
OPEN_FLAGS_ARGUMENT = {"openat": 2}  # call -> index of its flags argument
STAT_OUTPUTS = ("newfstatat", "fstat")  # calls whose first output is a struct stat
ABSENT = 0xFFFF  # a number no kernel's table reaches: the guest answers -ENOSYS


def same(guest: SyscallABI) -> bool:
    return guest is HOST


def number(guest: SyscallABI, name: str) -> int:
    """The guest's number for NAME; ABSENT when its table has no such call (arm64 has no
    utimes or futimesat), so the program sees ENOSYS, as from a kernel without it."""
    return guest.numbers.get(name, ABSENT)


def open_flags(guest: SyscallABI, flags: int) -> int:
    """x86-64 open flags as the guest's."""
    if same(guest):
        return flags
    out = flags
    for name in OPEN_FLAGS:
        out &= ~getattr(HOST, name)
    for name in OPEN_FLAGS:
        if flags & getattr(HOST, name):
            out |= getattr(guest, name)
    return out


def host_stat(guest: SyscallABI, raw: bytes) -> bytes:
    """The guest's struct stat as x86-64's (144 bytes), field by field; too short a buffer
    (a failed call's) is passed on as it is."""
    if same(guest) or len(raw) < guest.stat.size:
        return raw
    fields = dict(zip(guest.stat_fields, guest.stat.unpack_from(raw), strict=True))
    return HOST.stat.pack(*(fields.get(name, 0) if name else 0 for name in HOST.stat_fields))

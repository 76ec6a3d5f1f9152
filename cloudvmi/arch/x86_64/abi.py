"""The Linux x86-64 system-call ABI: numbers, registers, flags, `struct stat`. The kernel's
user ABI, stable across versions."""

import struct
import sys

from cloudvmi.arch.base import SyscallABI
from cloudvmi.arch.x86_64.syscalls import NUMBERS

NR = NUMBERS

AT_FDCWD = -100
AT_REMOVEDIR = 0x200
AT_SYMLINK_NOFOLLOW = 0x100
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC = 0o200000, 0o400000, 0o2000000
O_DIRECT, O_LARGEFILE = 0o40000, 0o100000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_POPULATE = 0x01, 0x02, 0x20, 0x8000
AF_INET, SOCK_DGRAM = 2, 2
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFADDR, SIOCSIFADDR = 0x8913, 0x8914, 0x8915, 0x8916
SIOCSIFNETMASK = 0x891C
IFF_UP = 0x1
SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK = 0, 1, 2

STAT = struct.Struct("<QQQIIIIQqqqqqqqqq24x")  # struct stat (144 bytes)
STAT_FIELDS = ("dev", "ino", "nlink", "mode", "uid", "gid", "", "rdev", "size", "blksize",
               "blocks", "atime_sec", "atime_nsec", "mtime_sec", "mtime_nsec", "ctime_sec",
               "ctime_nsec")

ABI = SyscallABI(
    numbers=NR, nr_register="rax", arg_registers=("rdi", "rsi", "rdx", "r10", "r8", "r9"),
    result_register="rax", instruction="syscall", instruction_size=2,
    constants=sys.modules[__name__], stat=STAT, stat_fields=STAT_FIELDS,
    no_return=frozenset(NR[n] for n in ("rt_sigreturn", "execve", "execveat", "exit",
                                        "exit_group")),
)

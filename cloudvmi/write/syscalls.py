"""x86-64 Linux system call numbers and flags: the kernel's user ABI, stable across versions."""

NR = {
    "read": 0, "write": 1, "close": 3, "fstat": 5, "lseek": 8, "mmap": 9, "munmap": 11,
    "ioctl": 16, "pread64": 17, "pwrite64": 18, "getpid": 39, "socket": 41, "fork": 57,
    "execve": 59, "exit": 60, "wait4": 61, "kill": 62, "fsync": 74, "ftruncate": 77,
    "getdents64": 217, "exit_group": 231, "openat": 257, "mkdirat": 258, "fchownat": 260,
    "newfstatat": 262, "unlinkat": 263, "fchmodat": 268, "dup2": 33, "getuid": 102,
}

AT_FDCWD = -100
AT_REMOVEDIR = 0x200
AT_SYMLINK_NOFOLLOW = 0x100
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_DIRECTORY, O_CLOEXEC = 0o200000, 0o2000000
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_POPULATE = 0x02, 0x20, 0x8000
AF_INET, SOCK_DGRAM = 2, 2
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFADDR, SIOCSIFADDR = 0x8913, 0x8914, 0x8915, 0x8916
SIOCSIFNETMASK = 0x891C
IFF_UP = 0x1

ERRNO = {
    1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 9: "EBADF", 11: "EAGAIN",
    12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST", 19: "ENODEV",
    20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 24: "EMFILE", 27: "EFBIG", 28: "ENOSPC",
    30: "EROFS", 36: "ENAMETOOLONG", 39: "ENOTEMPTY", 95: "EOPNOTSUPP", 99: "EADDRNOTAVAIL",
}


def errno_of(result: int) -> int | None:
    """The errno of a raw syscall result (-4095..-1), or None when it succeeded."""
    signed = result - (1 << 64) if result >= 1 << 63 else result
    return -signed if -4095 <= signed < 0 else None


def errno_name(errno: int) -> str:
    import os

    return f"{ERRNO.get(errno, f'errno {errno}')} ({os.strerror(errno)})"

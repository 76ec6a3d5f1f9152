"""Errors of the write layer, and a raw system-call result's errno."""

import os

from cloudvmi.errors import CloudVMIError

ERRNO = {
    1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 9: "EBADF", 11: "EAGAIN",
    12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY", 17: "EEXIST", 19: "ENODEV",
    20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL", 24: "EMFILE", 27: "EFBIG", 28: "ENOSPC",
    30: "EROFS", 36: "ENAMETOOLONG", 39: "ENOTEMPTY", 40: "ELOOP", 95: "EOPNOTSUPP",
    99: "EADDRNOTAVAIL",
}


class InjectionError(CloudVMIError):
    """A system call could not be run in the guest; the guest was left as it was."""


class InjectionTimeout(InjectionError):
    """The guest did not reach the expected point in time."""


class TargetExited(InjectionError):
    """The hijacked process exited during the injection."""


class GuestOSError(InjectionError):
    """A system call in the guest failed; `errno` says why (the guest is intact)."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


def errno_of(result: int) -> int | None:
    """The errno of a raw syscall result (-4095..-1), or None when it succeeded."""
    signed = result - (1 << 64) if result >= 1 << 63 else result
    return -signed if -4095 <= signed < 0 else None


def errno_name(errno: int) -> str:
    return f"{ERRNO.get(errno, f'errno {errno}')} ({os.strerror(errno)})"


def check(result: int | None, what: str) -> int:
    """A call's result, or a clear error naming the call and the errno."""
    if result is None:
        raise InjectionError(f"{what}: not run (an earlier call failed)")
    errno = errno_of(result)
    if errno is not None:
        raise GuestOSError(errno, f"{what}: {errno_name(errno)}")
    return result

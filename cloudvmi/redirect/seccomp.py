"""The seccomp filter a redirected program runs under: the system calls that can touch guest
state stop in the tracer (SECCOMP_RET_TRACE); everything else (memory, signals, pipes, time,
reads of its own host files) runs natively at full speed.

Calls on file descriptors stop only for descriptors above 2: stdin, stdout and stderr stay
the host's."""

import struct

from cloudvmi.arch.x86_64.syscalls import NUMBERS

AUDIT_ARCH_X86_64 = 0xC000003E
RET_ALLOW, RET_TRACE, RET_ERRNO = 0x7FFF0000, 0x7FF00000, 0x00050000
ENOSYS = 38
X32_BIT = 0x40000000

# Paths, identity, process control and the host-changing calls (refused by the tracer).
ALWAYS = [
    "open", "openat", "openat2", "creat", "stat", "lstat", "newfstatat", "statx", "access",
    "faccessat", "faccessat2", "readlink", "readlinkat", "chdir", "getcwd", "statfs", "mkdir",
    "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2", "link",
    "linkat", "symlink", "symlinkat", "chmod", "fchmodat", "fchmodat2", "chown", "lchown",
    "fchownat", "utime", "utimes", "futimesat", "utimensat", "truncate", "mknod", "mknodat",
    "getxattr", "lgetxattr", "listxattr", "llistxattr", "setxattr", "lsetxattr", "removexattr",
    "lremovexattr", "execve", "execveat", "uname", "sethostname", "setdomainname", "sysinfo",
    "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "kill",
    "tkill", "tgkill", "rt_sigqueueinfo", "pidfd_open", "pidfd_send_signal", "socket",
    "socketpair", "inotify_add_watch", "fanotify_mark", "name_to_handle_at", "umask",
    "sendfile", "copy_file_range", "splice", "tee", "mount", "umount2", "pivot_root", "chroot",
    "swapon", "swapoff", "reboot", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "settimeofday", "clock_settime", "adjtimex",
    "clock_adjtime", "acct", "quotactl", "syslog"
]

# Calls whose first argument is a file descriptor: they stop when it is above 2.
FD_FIRST = [
    "read", "write", "writev", "pread64", "readv", "preadv", "preadv2", "lseek", "fstat",
    "fstatfs", "getdents",
    "getdents64", "fchdir", "fchmod", "fchown", "fsync", "fdatasync", "ftruncate", "fgetxattr",
    "flistxattr", "fsetxattr", "fremovexattr", "ioctl", "fcntl", "close", "dup", "dup2", "dup3",
    "bind", "connect", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    "getsockname", "getpeername", "setsockopt", "getsockopt", "shutdown", "listen", "accept",
    "accept4", "fallocate", "syncfs"
]

# struct sock_filter {u16 code; u8 jt, jf; u32 k}
_LD_W_ABS, _JEQ_K, _JGT_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x25, 0x35, 0x45, 0x06
_NR, _ARCH, _ARG = 0, 4, 16


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def build(always: list[str] = ALWAYS, fd_first: list[str] = FD_FIRST) -> bytes:
    """The filter program's instructions (struct sock_filter[])."""
    always_nrs = sorted({NUMBERS[n] for n in always if n in NUMBERS})
    fd_nrs = sorted({NUMBERS[n] for n in fd_first if n in NUMBERS} - set(always_nrs))
    mmap_nr = NUMBERS["mmap"]
    prog = [
        _insn(_LD_W_ABS, _ARCH),
        _insn(_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _insn(_RET_K, RET_ERRNO | ENOSYS),  # i386 and other entries: refused
        _insn(_LD_W_ABS, _NR),
        _insn(_JSET_K, X32_BIT, 0, 1),
        _insn(_RET_K, RET_ERRNO | ENOSYS),  # the x32 ABI: refused
    ]
    tests = [(nr, "trace") for nr in always_nrs] + [(nr, "fd0") for nr in fd_nrs] \
        + [(mmap_nr, "fd4")]
    # After the tests: ALLOW; the fd checks (negative fds run natively and fail there);
    # ALLOW; TRACE.
    n = len(tests)
    fd0_at, fd4_at, trace_at = n + 1, n + 4, n + 8
    for i, (nr, kind) in enumerate(tests):
        target = {"trace": trace_at, "fd0": fd0_at, "fd4": fd4_at}[kind]
        prog.append(_insn(_JEQ_K, nr, target - i - 1, 0))
    prog += [
        _insn(_RET_K, RET_ALLOW),
        _insn(_LD_W_ABS, _ARG), _insn(_JGE_K, 0x80000000, 4, 0), _insn(_JGT_K, 2, 4, 3),
        _insn(_LD_W_ABS, _ARG + 8 * 4), _insn(_JGE_K, 0x80000000, 1, 0),
        _insn(_JGT_K, 2, 1, 0),
        _insn(_RET_K, RET_ALLOW),
        _insn(_RET_K, RET_TRACE),
    ]
    return b"".join(prog)

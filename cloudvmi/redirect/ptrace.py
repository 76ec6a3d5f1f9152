"""The host side of redirection, through ctypes: ptrace requests, x86-64 registers, and
reading and writing a traced process's memory (process_vm_readv/writev)."""

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long

CONT, GETREGS, SETREGS, SYSCALL = 7, 12, 13, 24
SETOPTIONS, GETEVENTMSG, SEIZE, INTERRUPT, LISTEN = 0x4200, 0x4201, 0x4206, 0x4207, 0x4208

O_TRACESYSGOOD, O_TRACEFORK, O_TRACEVFORK, O_TRACECLONE = 0x1, 0x2, 0x4, 0x8
O_TRACEEXEC, O_TRACEEXIT, O_TRACESECCOMP, O_EXITKILL = 0x10, 0x40, 0x80, 0x100000
OPTIONS = (O_TRACESYSGOOD | O_TRACEFORK | O_TRACEVFORK | O_TRACECLONE | O_TRACEEXEC
           | O_TRACESECCOMP | O_EXITKILL)

EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_EXEC = 1, 2, 3, 4
EVENT_VFORK_DONE, EVENT_EXIT, EVENT_SECCOMP, EVENT_STOP = 5, 6, 7, 128
WALL = 0x40000000

_FIELDS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
           "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
           "gs_base", "ds", "es", "fs", "gs")
ARG_REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


class Regs(ctypes.Structure):
    """struct user_regs_struct (x86-64)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in _FIELDS]

    def arg(self, i: int) -> int:
        return getattr(self, ARG_REGISTERS[i])

    def sarg(self, i: int) -> int:
        """Argument I as a C int (fds, dirfds: AT_FDCWD is negative)."""
        v = getattr(self, ARG_REGISTERS[i]) & 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v

    def set_arg(self, i: int, value: int) -> None:
        setattr(self, ARG_REGISTERS[i], value & 0xFFFF_FFFF_FFFF_FFFF)


class PtraceError(OSError):
    pass


def _call(request: int, pid: int, addr: int = 0, data: int | ctypes.c_void_p | None = 0) -> int:
    result = _libc.ptrace(request, pid, ctypes.c_void_p(addr), data)
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise PtraceError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return result


def seize(pid: int, options: int = OPTIONS) -> None:
    _call(SEIZE, pid, 0, ctypes.c_void_p(options))


def resume(pid: int, sig: int = 0, syscall_exit: bool = False) -> None:
    _call(SYSCALL if syscall_exit else CONT, pid, 0, ctypes.c_void_p(sig))


def listen(pid: int) -> None:
    _call(LISTEN, pid)


def event_message(pid: int) -> int:
    value = ctypes.c_ulong()
    _call(GETEVENTMSG, pid, 0, ctypes.cast(ctypes.byref(value), ctypes.c_void_p))
    return value.value


def get_regs(pid: int) -> Regs:
    regs = Regs()
    _call(GETREGS, pid, 0, ctypes.cast(ctypes.byref(regs), ctypes.c_void_p))
    return regs


def set_regs(pid: int, regs: Regs) -> None:
    _call(SETREGS, pid, 0, ctypes.cast(ctypes.byref(regs), ctypes.c_void_p))


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IOVec), ctypes.c_ulong,
                                   ctypes.POINTER(_IOVec), ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_writev.argtypes = _libc.process_vm_readv.argtypes
_libc.process_vm_writev.restype = ctypes.c_ssize_t


def read_memory(pid: int, address: int, size: int) -> bytes:
    """SIZE bytes at ADDRESS in PID (fewer if the range ends in unmapped memory)."""
    if size <= 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    local = _IOVec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = _IOVec(ctypes.c_void_p(address), size)
    n = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        raise PtraceError(err, f"read {size} bytes at {address:#x} in {pid}")
    return buf.raw[:n]


def write_memory(pid: int, address: int, data: bytes) -> None:
    if not data:
        return
    buf = ctypes.create_string_buffer(data, len(data))
    local = _IOVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    remote = _IOVec(ctypes.c_void_p(address), len(data))
    n = _libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n != len(data):
        err = ctypes.get_errno()
        raise PtraceError(err or 14, f"write {len(data)} bytes at {address:#x} in {pid}")


def read_string(pid: int, address: int, limit: int = 4096) -> bytes | None:
    """A NUL-terminated string (without the NUL), read page by page; None if unreadable or
    longer than LIMIT."""
    out = b""
    while len(out) < limit:
        chunk = min(4096 - (address + len(out)) % 4096, limit - len(out))
        try:
            part = read_memory(pid, address + len(out), chunk)
        except PtraceError:
            return None
        end = part.find(b"\0")
        if end >= 0:
            return out + part[:end]
        if len(part) < chunk:
            return None
        out += part
    return None

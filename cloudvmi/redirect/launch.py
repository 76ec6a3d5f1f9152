"""The first process of a redirected program, started by the tracer: it waits until the
tracer has attached and sent the seccomp filter, gives up host privileges (the program's
guest work is done by the tracer; on the host it only needs its own binaries), enters the
filter and executes the program. Kept free of CloudVMI imports: it starts in milliseconds.

usage: python -S -E launch.py CONTROL_FD UID GID PROGRAM ARGV0 ARGS..."""

import ctypes
import os
import sys

PR_SET_NO_NEW_PRIVS = 38
SYS_SECCOMP, SECCOMP_SET_MODE_FILTER = 317, 1


class _FProg(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def main(argv: list[str]) -> None:
    control, uid, gid = int(argv[1]), int(argv[2]), int(argv[3])
    program, args = argv[4], argv[5:]
    filt = b""
    while chunk := os.read(control, 65536):
        filt += chunk
    os.close(control)
    if not filt:
        sys.exit(126)  # the tracer went away before attaching
    libc = ctypes.CDLL(None, use_errno=True)
    if os.getuid() == 0 and uid >= 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(126)
    buf = ctypes.create_string_buffer(filt, len(filt))
    prog = _FProg(len(filt) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)) != 0:
        sys.exit(126)
    try:
        os.execv(program, args)
    except OSError as exc:
        os.write(2, f"cloudvmi exec: {program}: {exc.strerror}\n".encode())
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv)

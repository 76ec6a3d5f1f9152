"""The launcher server: started once per process by the tracer (`spawner.py`), it forks the
first process of each redirected program. A Python start costs ~17 ms, a fork of this small
single-threaded process ~1 ms, and forking the tracer's own (threaded) process would not be
safe. Kept free of CloudVMI imports so it starts fast.

The forked process waits until the tracer has attached and sent the seccomp filter, gives up
host privileges (the program's guest work is done by the tracer; on the host it only needs its
own binaries), enters the filter and executes the program.

usage: python -S -E launch.py SOCKET_FD (a SOCK_SEQPACKET socket; it exits at end of file)
It first forks away from its parent (which exits at once), so that the tracer's process has
no child that is not traced: the tracer waits for any child, and a launcher among them would
keep that wait from ever ending. Its first message is its pid, in decimal.
request: JSON {"uid", "gid", "program", "argv", "env"} with 4 descriptors (stdin, stdout,
stderr, the control pipe); reply: the new process's pid, in decimal."""

import ctypes
import json
import os
import signal
import socket
import sys

PR_SET_NO_NEW_PRIVS = 38
SYS_SECCOMP, SECCOMP_SET_MODE_FILTER = 317, 1
CONTROL = 3  # the control pipe's number in the forked process
MAX_REQUEST = 1 << 20


class _FProg(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def serve(sock: socket.socket) -> None:
    if os.fork():
        os._exit(0)  # the parent reaps this first process; init adopts the server
    os.setsid()
    sock.send(str(os.getpid()).encode())
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps what it forked
    libc = ctypes.CDLL(None, use_errno=True)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 4)
        except OSError:
            return
        if not message:
            return  # its parent went away
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            sock.send(b"-1")
            continue
        pid = os.fork()
        if pid == 0:
            try:
                sock.close()
                _become(json.loads(message), fds, libc)
            finally:
                os._exit(127)
        for fd in fds:
            os.close(fd)
        sock.send(str(pid).encode())


def _become(request: dict, fds: list[int], libc) -> None:
    """In the forked process: take the program's stdio, wait for the filter, drop
    privileges, enter the filter, execute the program."""
    os.setpgid(0, 0)
    for number, fd in enumerate(fds[:3]):
        os.dup2(fd, number)
    os.dup2(fds[3], CONTROL)
    os.closerange(CONTROL + 1, os.sysconf("SC_OPEN_MAX"))
    for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):  # as a shell would give
        signal.signal(sig, signal.SIG_DFL)
    filt = b""
    while chunk := os.read(CONTROL, 65536):
        filt += chunk
    os.close(CONTROL)
    if not filt:
        os._exit(126)  # the tracer went away before attaching
    uid, gid = request["uid"], request["gid"]
    if os.getuid() == 0 and uid >= 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        os._exit(126)
    buf = ctypes.create_string_buffer(filt, len(filt))
    prog = _FProg(len(filt) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)) != 0:
        os._exit(126)
    program = request["program"]
    try:
        os.execve(program, request["argv"], request["env"])
    except OSError as exc:
        os.write(2, f"cloudvmi exec: {program}: {exc.strerror}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))

"""run: a program run in the guest, forked from the hijacked process; its exit status and
output (stdout and stderr, through a private file in /tmp)."""

import os
import struct
from typing import Annotated

from cloudvmi.capability import Range, Rule, operation
from cloudvmi.write.errors import check
from cloudvmi.write.recipes.common import absolute_path, guest_path

PATH = b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\0"
# How long a program may run (and hold a guest thread): from 1 ms to an hour, the agent's
# own limit for a redirected program. vm.exec and the CLI take the same bounds.
TIMEOUT = Range(0.001, 3600.0, " s")
SIGCHLD, ITIMER_REAL = 17, 0


def _itimer(timeout: float) -> bytes:
    """struct itimerval firing once after TIMEOUT: it_interval zero, it_value TIMEOUT."""
    seconds, micros = divmod(round(timeout * 1e6), 1_000_000)
    return struct.pack("<4q", 0, 0, seconds, micros)


def program(argv: object) -> None:
    """Refuse an empty argv or a program that is not an absolute path: execve does not
    search PATH, so a relative name would run whatever the hijacked process's directory
    holds under that name."""
    if not isinstance(argv, list | tuple) or not argv:
        raise ValueError("nothing to run")
    absolute_path(argv[0])


@operation()
def run(ops, argv: Annotated[list[str], Rule(program)],
        timeout: Annotated[float, TIMEOUT] = 30.0) -> tuple[int, bytes]:
    """Run a program in the guest; its exit status and output. SIGALRM (an interval timer)
    ends it after TIMEOUT seconds (exit status 128+14)."""
    out_path = f"/tmp/.cloudvmi-run-{os.urandom(6).hex()}"
    inj = ops.injector
    old_timeout = inj.timeout
    inj.timeout = max(old_timeout, timeout + 10)
    try:
        with ops.session() as s:
            abi, ptr = s.abi, inj.arch.pointer.format
            b = s.batch()
            args = [s.put(a.encode() + b"\0") for a in argv]
            argv_ptr = s.put(struct.pack(f"{ptr[0]}{len(args) + 1}{ptr[1]}", *args, 0))
            envp = s.put(struct.pack(f"{ptr[0]}2{ptr[1]}", s.put(PATH), 0))
            status = s.alloc(8)
            # The hijacked thread's signals are blocked while we hold it; the child gets the
            # process's own mask back before it runs the program (SIGALRM must reach it).
            mask = s.put(inj.arch.pointer.pack(inj.target.sigmask or 0))
            fd = b.add(abi.nr("openat"), abi.AT_FDCWD, s.put(guest_path(out_path)),
                       abi.O_RDWR | abi.O_CREAT | abi.O_TRUNC, 0o600)
            null = b.add(abi.nr("openat"), abi.AT_FDCWD, s.put(b"/dev/null\0"), abi.O_RDONLY)
            # Calls every architecture has (arm64 has no fork, dup2 or alarm): a fork is
            # clone(SIGCHLD) with no stack and no tid pointers, whose argument order
            # differs by architecture but not for zeros.
            pid = b.add(abi.nr("clone"), SIGCHLD, 0, 0, 0, 0, parent_skips=7)
            # The child's calls: none may stop the batch, or the child would spin at its end
            # instead of reaching exit_group. dup3 refuses an fd onto itself (EINVAL), which
            # leaves it where it is wanted, as dup2 would.
            b.add(abi.nr("dup3"), b.result(null), 0, 0, stop_on_error=False)
            b.add(abi.nr("dup3"), b.result(fd), 1, 0, stop_on_error=False)
            b.add(abi.nr("dup3"), b.result(fd), 2, 0, stop_on_error=False)
            b.add(abi.nr("rt_sigprocmask"), abi.SIG_SETMASK, mask, 0, 8, stop_on_error=False)
            b.add(abi.nr("setitimer"), ITIMER_REAL, s.put(_itimer(timeout)), 0,
                  stop_on_error=False)
            b.add(abi.nr("execve"), args[0], argv_ptr, envp, stop_on_error=False)
            b.add(abi.nr("exit_group"), 127, stop_on_error=False)
            wait = b.add(abi.nr("wait4"), b.result(pid), status, 0, 0)  # the parent's
            b.add(abi.nr("close"), b.result(fd), stop_on_error=False)
            b.add(abi.nr("close"), b.result(null), stop_on_error=False)
            results = s.run(b)
            check(results[fd], f"create {out_path}")
            check(results[pid], "fork")
            check(results[wait], "wait4")
            raw_status = struct.unpack("<i", s.read(status, 4))[0]
    finally:
        inj.timeout = old_timeout
    try:
        output = ops.read_file(out_path)
    finally:
        ops.remove(out_path)
    code = (raw_status >> 8) & 0xFF if raw_status & 0x7F == 0 else 128 + (raw_status & 0x7F)
    return code, output

"""Run an unmodified host program against a guest: `run_program(channel, argv)`. Its system
calls on guest state run in the guest through CHANNEL (a syscall channel held open for the
run); its memory, signals and stdio stay on the host."""

import os
import pwd
import shutil
import threading
import time
from dataclasses import dataclass

from cloudvmi.errors import CloudVMIError
from cloudvmi.redirect import hostpaths, profiles
from cloudvmi.redirect.guestfs import GuestFS
from cloudvmi.redirect.syscalls import Calls
from cloudvmi.redirect.tracer import Tracer

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Completed:
    status: int  # the exit status as a shell reports it (128+N: killed by signal N)
    stdout: bytes = b""
    stderr: bytes = b""
    resumes: int = 0  # guest runs (each stops and resumes the hijacked thread once)
    guest_calls: int = 0  # system calls made in the guest
    stops: int = 0  # system calls of the program that stopped in the tracer
    seconds: float = 0.0
    timed_out: bool = False

    def __iter__(self):
        """`status, stdout, stderr = vm.exec(argv)`."""
        return iter((self.status, self.stdout, self.stderr))


def find_program(name: str, path: str | None = None) -> str:
    """The host binary a command names."""
    found = name if "/" in name else shutil.which(name, path=path or os.environ.get(
        "PATH", DEFAULT_PATH))
    if not found or not os.access(found, os.X_OK):
        raise CloudVMIError(f"{name}: no such program on this host")
    return os.path.abspath(found)


def profile_key(argv: list[str]) -> str:
    """Programs are told apart by name (a busybox applet by its own)."""
    name = os.path.basename(argv[0])
    if name == "busybox" and len(argv) > 1:
        name += "-" + argv[1]
    return name


def unprivileged() -> tuple[int, int]:
    """The host identity a program runs as: nobody, when we are root."""
    if os.getuid() != 0:
        return -1, -1
    try:
        p = pwd.getpwnam("nobody")
        return p.pw_uid, p.pw_gid
    except KeyError:
        return 65534, 65534


def program_env(base: dict[str, str] | None, cwd: str) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PATH"] = hostpaths.tag_path_variable(env.get("PATH") or DEFAULT_PATH)
    env["PWD"] = cwd
    env.pop("OLDPWD", None)
    return env


def run_program(channel, argv: list[str], stdin: bytes | None = b"", capture: bool = True,
                timeout: float = 60.0, cwd: str = "/",
                env: dict[str, str] | None = None) -> Completed:
    """Run ARGV with its guest calls on CHANNEL (an open syscall channel). With CAPTURE, its
    stdout and stderr are returned and STDIN is its input; without, it uses ours."""
    if not argv:
        raise ValueError("nothing to run")
    program = find_program(argv[0], (env or os.environ).get("PATH"))
    fs = GuestFS(channel)
    calls = Calls(fs, channel.helper_pid(), set(), 0)
    fs.before_run = calls.flush_all
    tracer = Tracer(calls, cwd.encode())
    uid, gid = unprivileged()
    started = time.monotonic()
    resumes_before = channel.resumes
    key = profile_key(argv)
    calls.prefetch(profiles.load(key))
    if not capture:
        status = tracer.run(program, argv, program_env(env, cwd), (0, 1, 2), timeout, uid, gid)
        out = err = b""
    else:
        status, out, err = _captured(tracer, program, argv, program_env(env, cwd), stdin,
                                     timeout, uid, gid)
    profiles.save(key, fs.requests)
    return Completed(_shell_status(status), out, err, channel.resumes - resumes_before,
                     fs.calls, tracer.stops, time.monotonic() - started, tracer.timed_out)


def _captured(tracer: Tracer, program, argv, env, stdin, timeout, uid, gid):
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        while data := os.read(fd, 65536):
            chunks[fd].append(data)

    def feed() -> None:
        try:
            if stdin:
                os.write(in_w, stdin)
        except BrokenPipeError:
            pass
        finally:
            os.close(in_w)

    workers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in chunks]
    workers.append(threading.Thread(target=feed, daemon=True))
    for w in workers:
        w.start()
    try:
        status = tracer.run(program, argv, env, (in_r, out_w, err_w), timeout, uid, gid)
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        for w in workers:
            w.join(5)
        for fd in (out_r, err_r):
            os.close(fd)
    return status, b"".join(chunks[out_r]), b"".join(chunks[err_r])


def _shell_status(status: int) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return status

"""The tracer: starts a host program under ptrace and the seccomp filter, follows every
process and thread it creates, and hands each stopped system call to `Calls`.

Everything ptrace must happen on the thread that attached, so one `Tracer.run` is one thread's
whole job. The traced tree is killed if the tracer goes away (PTRACE_O_EXITKILL) and when the
run's time is up."""

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from cloudvmi.redirect import ptrace, seccomp
from cloudvmi.redirect.spawner import SPAWNER
from cloudvmi.redirect.stop import EMULATED, NATIVE, Proc, Stop, fail
from cloudvmi.redirect.syscalls import Calls

_GROUP_STOPS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


class Tracer:
    def __init__(self, calls: Calls, cwd: bytes = b"/") -> None:
        self.calls = calls
        self.cwd = cwd
        self.threads: dict[int, Proc] = {}  # tid -> its thread group
        self.after: dict[int, object] = {}  # tid -> what to do at its syscall exit
        self.root = 0
        self.status: int | None = None
        self.stops = 0
        self.timed_out = False

    def run(self, program: str, argv: list[str], env: dict[str, str], stdio: tuple[int, ...],
            timeout: float, uid: int = -1, gid: int = -1) -> int:
        """Run PROGRAM to its end (or TIMEOUT seconds); its wait status."""
        pid, wfd = SPAWNER.spawn(program, argv, env, stdio, uid, gid)
        self.root = pid
        self.calls.pgid = pid
        try:
            ptrace.seize(pid)
        except OSError:
            os.close(wfd)
            os.kill(pid, signal.SIGKILL)  # the launcher server reaps it
            raise
        self._adopt(pid, None)
        os.write(wfd, seccomp.build())
        os.close(wfd)
        timer = threading.Timer(timeout, self._time_up)
        timer.daemon = True
        timer.start()
        try:
            self._loop()
        finally:
            timer.cancel()
            self._kill_all()
            self._reap()
            self._finish()
        return self.status if self.status is not None else 128 + signal.SIGKILL

    def _time_up(self) -> None:
        self.timed_out = True
        self._kill_all()

    def _kill_all(self) -> None:
        for tid in list(self.threads):
            with contextlib.suppress(OSError):
                os.kill(tid, signal.SIGKILL)

    def _reap(self) -> None:
        """Wait for the killed tree (only the attaching thread may)."""
        deadline = time.monotonic() + 5
        while self.threads and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, ptrace.WALL)
            except ChildProcessError:
                break
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._gone(pid, status)

    def _finish(self) -> None:
        """Write back every guest file still open."""
        for f in list(self.calls.files):
            with contextlib.suppress(Exception):
                f.flush(self.calls.fs)
            f.close()
        self.calls.files.clear()
        with contextlib.suppress(Exception):
            self.calls.close_sockets()

    # -- processes --------------------------------------------------------------------------
    def _adopt(self, tid: int, parent: int | None) -> Proc:
        tgid = _tgid(tid) or tid
        for proc in self.threads.values():
            if proc.tgid == tgid:
                proc.threads.add(tid)
                self.threads[tid] = proc
                self.calls.traced.add(tid)
                return proc
        source = self.threads.get(parent) if parent else None
        if source is None and tid != self.root:
            ppid = _ppid(tid)
            source = next((p for p in self.threads.values() if p.tgid == ppid), None)
        if source is None:
            proc = Proc(tgid, cwd=self.cwd)
        else:
            proc = Proc(tgid, cwd=source.cwd, umask=source.umask, fds=source.fds.copy(),
                        started=source.started, loader=list(source.loader))
        proc.threads.add(tid)
        self.threads[tid] = proc
        self.calls.traced.add(tid)
        return proc

    def _gone(self, tid: int, status: int | None) -> None:
        proc = self.threads.pop(tid, None)
        self.after.pop(tid, None)
        self.calls.traced.discard(tid)
        if tid == self.root and status is not None:
            self.status = status
        if proc is None:
            return
        proc.threads.discard(tid)
        if not proc.threads:
            for f in proc.fds.clear():
                self.calls._release(f)

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while self.threads:
            # A traced thread can vanish without a report to its tracer (ptrace(2): the old
            # tid of a thread that execs in a multi-threaded process). Waiting for it would
            # block forever when this process has another child (a pool's helper), so the
            # threads that no longer exist are dropped before each wait.
            for gone in [t for t in self.threads if not os.path.exists(f"/proc/{t}")]:
                self.threads.pop(gone, None)
            if not self.threads:
                return
            try:
                tid, status = os.waitpid(-1, ptrace.WALL)
            except ChildProcessError:
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._gone(tid, status)
                continue
            if not os.WIFSTOPPED(status):
                continue
            if tid not in self.threads:
                self._adopt(tid, None)
            self._stopped(tid, os.WSTOPSIG(status), status >> 16)

    def _stopped(self, tid: int, sig: int, event: int) -> None:
        try:
            if sig == signal.SIGTRAP and event == ptrace.EVENT_SECCOMP:
                self.stops += 1
                return self._syscall(tid)
            if sig == signal.SIGTRAP | 0x80:
                return self._syscall_exit(tid)
            if sig == signal.SIGTRAP and event in (ptrace.EVENT_FORK, ptrace.EVENT_VFORK,
                                                   ptrace.EVENT_CLONE):
                child = ptrace.event_message(tid)
                if child not in self.threads:
                    self._adopt(child, tid)
                return ptrace.resume(tid)
            if sig == signal.SIGTRAP and event == ptrace.EVENT_EXEC:
                self._exec(tid)
                return ptrace.resume(tid)
            if event == ptrace.EVENT_STOP:
                if sig in _GROUP_STOPS:
                    return ptrace.listen(tid)
                return ptrace.resume(tid)
            if event:
                return ptrace.resume(tid)
            ptrace.resume(tid, sig)  # a signal for the program: deliver it
        except ptrace.PtraceError:
            pass  # it died meanwhile (SIGKILL); waitpid will say so

    def _exec(self, tid: int) -> None:
        proc = self.threads[tid]
        proc.started = True
        proc.loader = _loader_ranges(tid)
        for f in proc.fds.on_exec():
            self.calls._release(f)

    def _syscall(self, tid: int) -> None:
        proc = self.threads[tid]
        if not proc.started:
            return ptrace.resume(tid)  # the launcher's own calls
        regs = ptrace.get_regs(tid)
        stop = Stop(tid, proc, regs)
        if stop.nr == 0xFFFF_FFFF_FFFF_FFFF:
            return ptrace.resume(tid)
        try:
            outcome = self.calls.handle(stop)
        except OSError as exc:  # the guest channel broke: the program sees EIO
            outcome = fail(exc.errno or 5)
        if outcome.how == NATIVE:
            return ptrace.resume(tid)
        if outcome.how == EMULATED:
            regs.orig_rax = 0xFFFF_FFFF_FFFF_FFFF  # skip the call ...
            regs.rax = outcome.value & 0xFFFF_FFFF_FFFF_FFFF  # ... and answer it
            ptrace.set_regs(tid, regs)
            return ptrace.resume(tid)
        ptrace.set_regs(tid, regs)
        if outcome.after is None:
            return ptrace.resume(tid)
        self.after[tid] = outcome.after
        ptrace.resume(tid, syscall_exit=True)

    def _syscall_exit(self, tid: int) -> None:
        after = self.after.pop(tid, None)
        if after is not None:
            regs = ptrace.get_regs(tid)
            result = regs.rax - (1 << 64) if regs.rax >= 1 << 63 else regs.rax
            replace = after(result)
            if replace is not None:
                regs.rax = replace & 0xFFFF_FFFF_FFFF_FFFF
                ptrace.set_regs(tid, regs)
        ptrace.resume(tid)


def _status_field(tid: int, name: bytes) -> int | None:
    try:
        for line in Path(f"/proc/{tid}/status").read_bytes().splitlines():
            if line.startswith(name + b":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _tgid(tid: int) -> int | None:
    return _status_field(tid, b"Tgid")


def _ppid(tid: int) -> int | None:
    return _status_field(tid, b"PPid")


def _loader_ranges(tid: int) -> list[tuple[int, int]]:
    """Where the dynamic loader's code is mapped (its calls load the program's libraries)."""
    out = []
    try:
        maps = Path(f"/proc/{tid}/maps").read_text()
    except OSError:
        return out
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 6 and "x" in fields[1]:
            name = fields[5].rsplit("/", 1)[-1]
            if name.startswith(("ld-linux", "ld-musl", "ld64.so", "ld.so")):
                lo, hi = fields[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out

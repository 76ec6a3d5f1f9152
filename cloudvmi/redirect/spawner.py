"""Starting a redirected program's first process through the launcher server (`launch.py`),
one server per host process, started on first use and stopped, by pid, at exit."""

import atexit
import contextlib
import json
import os
import socket
import sys
import threading
from pathlib import Path

LAUNCHER = Path(__file__).with_name("launch.py")


class Spawner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid = 0

    def spawn(self, program: str, argv: list[str], env: dict[str, str],
              stdio: tuple[int, ...], uid: int, gid: int) -> tuple[int, int]:
        """A new process in its own process group that will run PROGRAM once the filter is
        written to the returned pipe. (pid, the pipe's write end)."""
        request = json.dumps({"uid": uid, "gid": gid, "program": program, "argv": argv,
                              "env": env}).encode()
        rfd, wfd = os.pipe()
        try:
            with self._lock:
                sock = self._server()
                try:
                    socket.send_fds(sock, [request], [*stdio, rfd])
                    reply = sock.recv(32)
                except OSError:
                    self._stop()
                    raise
            pid = int(reply or b"-1")
            if pid <= 0:
                raise OSError(f"the launcher could not start {program}")
        except BaseException:
            os.close(wfd)
            raise
        finally:
            os.close(rfd)
        return pid, wfd

    def _server(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            theirs.set_inheritable(True)
            self._pid = os.posix_spawn(
                sys.executable, [sys.executable, "-S", "-E", str(LAUNCHER),
                                 str(theirs.fileno())],
                {"PATH": os.defpath},
                file_actions=[(os.POSIX_SPAWN_DUP2, devnull, n) for n in range(3)])
        finally:
            theirs.close()
            os.close(devnull)
        self._sock = mine
        return mine

    def _stop(self) -> None:
        """Close the socket (the server exits at end of file) and reap it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._pid = 0

    def stop(self) -> None:
        with self._lock:
            self._stop()


SPAWNER = Spawner()
atexit.register(SPAWNER.stop)

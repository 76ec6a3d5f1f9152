"""Starting a redirected program's first process through the launcher server (`launch.py`),
one server per host process, started on first use and stopped, by pid, at exit. The server
is not this process's child (it forks away at start): the tracer waits for any child."""

import atexit
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
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
            first = os.posix_spawn(
                sys.executable, [sys.executable, "-S", "-E", str(LAUNCHER),
                                 str(theirs.fileno())],
                {"PATH": os.defpath},
                file_actions=[(os.POSIX_SPAWN_DUP2, devnull, n) for n in range(3)])
        finally:
            theirs.close()
            os.close(devnull)
        os.waitpid(first, 0)  # it forked the server and exited
        mine.settimeout(30)
        try:
            self._pid = int(mine.recv(32) or b"0")
        except (OSError, ValueError) as exc:
            mine.close()
            raise OSError(f"the launcher server did not start: {exc}") from exc
        mine.settimeout(None)
        self._sock = mine
        return mine

    def _stop(self) -> None:
        """Close the socket (the server exits at end of file), then make sure, by pid."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pid:
            for _ in range(100):
                if not _alive(self._pid):
                    break
                time.sleep(0.01)
            else:
                with contextlib.suppress(OSError):
                    os.kill(self._pid, signal.SIGKILL)
            self._pid = 0

    def stop(self) -> None:
        with self._lock:
            self._stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie until init reaps it: gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


SPAWNER = Spawner()
atexit.register(SPAWNER.stop)

"""Run shell commands in a lab guest over its serial console: the guest's own view, our oracle."""

import fcntl
import re
import secrets
import socket
import time
from pathlib import Path

from cloudvmi.errors import CloudVMIError


class ConsoleError(CloudVMIError):
    """The guest's console did not answer as expected."""


class Console:
    """The serial console of one guest; a lock file keeps callers from interleaving."""

    def __init__(self, serial_path: Path, lock_path: Path) -> None:
        self.serial_path = serial_path
        self.lock_path = lock_path

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run COMMAND in the guest's shell; return its exit status and output (stdout+stderr)."""
        if "\n" in command or len(command) > 3500:
            raise ConsoleError("console commands must be one line under 3500 bytes (tty limit)")
        tag = secrets.token_hex(6)
        # The quotes keep the tty's echo of our input from matching the markers.
        sep = "" if command.rstrip().endswith("&") else ";"  # `{ x & ; }` is a syntax error
        line = f"echo CVS_''{tag}; {{ {command} {sep} }} 2>&1; echo CVE_''{tag} $?\n"
        end = re.compile(rb"CVE_" + tag.encode() + rb" (\d+)\r?\n")
        start = b"CVS_" + tag.encode()
        with open(self.lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(str(self.serial_path))
                sock.sendall(line.encode())
                data = b""
                deadline = time.monotonic() + timeout
                while True:
                    match = end.search(data)
                    if match and start in data:
                        break
                    if time.monotonic() > deadline:
                        raise ConsoleError(f"guest console gave no answer to {command!r} "
                                           f"in {timeout:.0f} s")
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConsoleError("guest console closed")
                    data += chunk
            except OSError as exc:
                raise ConsoleError(f"guest console: {exc}") from exc
            finally:
                sock.close()
        body = data[data.index(start) + len(start):match.start()]
        text = body.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
        return int(match.group(1)), text.removeprefix("\n")

    def check(self, command: str, timeout: float = 60.0) -> str:
        """Like run(), but a non-zero exit status is an error."""
        status, out = self.run(command, timeout)
        if status != 0:
            raise ConsoleError(f"{command!r} exited {status}: {out[-500:]}")
        return out

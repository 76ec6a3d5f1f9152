"""The injection journal: what a hijack holds, on disk before the guest is touched, so that
a process that dies mid-injection leaves enough for the next one to put the thread back.

One file per VM under the state directory (not the cache: deleting a cache must never lose
a guest's registers); every write replaces the old one atomically (a rename). It is not
fsync'd: the journal guards against this process dying while QEMU runs on, and the page cache
outlives a process; a host crash takes the VM's memory with it, and the journal it leaves
names the host's old boot, so it is never applied. Each record names the run of the VM it
belongs to (the QEMU process and its start, the host's boot, the guest kernel's boot): a
journal left by another run (the VM was restarted, the guest rebooted) is never applied to
this one, only set aside.
"""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.write.errors import InjectionError
from cloudvmi.write.target import Target


@dataclass
class Holding:
    """The VM was stopped to look for a thread, and no thread was taken yet."""

    breakpoints: list[int]


class StaleJournal(InjectionError):
    """The journal belongs to another run of the VM: it must not be applied to this one."""


class Journal:
    def __init__(self, path: Path, run: dict | None = None) -> None:
        self.path = path
        self.run = run or {}  # what identifies this run of the VM

    def exists(self) -> bool:
        return self.path.exists()

    def write(self, target: Target) -> None:
        self._put({**dataclasses.asdict(target), "run": self.run})

    def hold(self, breakpoints: list[int]) -> None:
        """The VM is about to be stopped to look for a thread (none is held yet): a process
        that dies now leaves it stopped, with these breakpoints set."""
        self._put({"holding": True, "breakpoints": breakpoints, "run": self.run})

    def set_aside(self) -> Path:
        """Keep a stale journal for a human to read, out of recovery's way."""
        aside = self.path.with_suffix(".stale.json")
        os.replace(self.path, aside)
        return aside

    def _put(self, record: dict) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = json.dumps(record).encode()
            if os.write(fd, data) != len(data):
                raise InjectionError(f"short write of the injection journal {tmp}")
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def read(self) -> Target | Holding | None:
        """What the journal holds; StaleJournal if another run of the VM wrote it."""
        try:
            record = json.loads(self.path.read_text())
            run = record.pop("run", {})
            if self.run and run != self.run:
                raise StaleJournal(f"injection journal {self.path} is from another run of the "
                                   f"VM ({run} now {self.run})")
            if record.get("holding"):
                return Holding([int(b) for b in record.get("breakpoints", [])])
            return Target(**record)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise InjectionError(f"unreadable injection journal {self.path}: {exc}") from exc

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

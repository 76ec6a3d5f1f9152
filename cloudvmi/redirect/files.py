"""Guest files held open by a redirected program. Each is a host memfd installed at the very
descriptor number the program's kernel chose, so reads, `mmap` and `lseek` run natively; the
tracer fills it from the guest (all at open, or on demand for large files) and writes what
the program wrote back to the guest (before any other guest call, on close and at exit)."""

import os
from dataclasses import dataclass, field

from cloudvmi.redirect.guestfs import GuestFS, Opened, stat_identity, stat_size

LAZY_OVER = 1 << 20  # larger files are fetched as the program reads them
FETCH_AHEAD = 4 << 20


@dataclass(eq=False)
class GuestFile:
    path: bytes  # absolute guest path
    flags: int
    opened: Opened
    memfd: int = -1  # the tracer's own descriptor of the placeholder
    refs: int = 0  # descriptors of traced processes that name it
    kind: str = "file"  # file | dir | socket
    fetched: int = 0  # bytes [0, fetched) are in the memfd
    size: int = 0  # the guest file's size when opened
    lower: int = 0  # the program's offset is within [lower, upper]
    upper: int = 0
    dir_pos: int = 0  # directories: index of the next entry
    entries: list = field(default_factory=list)
    writable: bool = False
    append: bool = False
    flushed: tuple = (0, 0)  # (size, mtime_ns) of the memfd at the last write-back
    sock: int = -1  # sockets: the guest descriptor in the helper process
    sock_family: int = 0

    @property
    def complete(self) -> bool:
        return self.fetched >= self.size

    def attach(self, memfd: int, fs: GuestFS) -> None:
        """Fill the new placeholder with what is known of the file."""
        self.memfd = memfd
        if self.kind != "file" or self.append or not self.opened.stat:
            self.flushed = self._mark()
            return
        content = self.opened.content
        if self.opened.complete:
            self.size = len(content)
        else:
            self.size = max(stat_size(self.opened.stat), len(content))
        os.pwrite(memfd, content, 0)
        self.fetched = len(content)
        readable = self.flags & 3 != 1
        if readable and not self.opened.complete and \
                stat_size(self.opened.stat) <= len(content):
            # a pseudo-file (/proc, /sys) or a file that grew: read to its end now
            _err, rest = fs.read_rest(self.path, len(content), 256 << 20)
            os.pwrite(memfd, rest, len(content))
            self.fetched = self.size = len(content) + len(rest)
        elif self.size > self.fetched and (self.size <= LAZY_OVER or self.writable):
            self.ensure(fs, 0, self.size)
        os.ftruncate(memfd, self.size)
        self.flushed = self._mark()

    def ensure(self, fs: GuestFS, start: int, end: int) -> None:
        """Make bytes up to END present (fetched in order from the start, ahead of need)."""
        end = min(end, self.size)
        if end <= self.fetched or self.memfd < 0:
            return
        want = min(self.size, max(end, self.fetched + FETCH_AHEAD)) - self.fetched
        _err, data = fs.read_range(self.path, self.fetched, want)
        if data:
            os.pwrite(self.memfd, data, self.fetched)
        self.fetched += len(data)
        if len(data) < want:  # the file shrank: what is left reads as zeros
            self.fetched = self.size

    def _mark(self) -> tuple:
        if self.memfd < 0:
            return (0, 0)
        st = os.fstat(self.memfd)
        return (st.st_size, st.st_mtime_ns)

    def dirty(self) -> bool:
        return self.writable and self.memfd >= 0 and self._mark() != self.flushed

    def flush(self, fs: GuestFS) -> int:
        """Write the program's changes back to the guest file; 0 or -errno."""
        if not self.dirty():
            return 0
        mark = self._mark()
        if self.append:
            done = self.flushed[0]
            data = os.pread(self.memfd, mark[0] - done, done)
            err = fs.write_back(self.path, data, 0, None, append=True,
                                identity=stat_identity(self.opened.stat))
        else:
            data = os.pread(self.memfd, mark[0], 0)
            shrink = mark[0] if mark[0] < self.size else None  # (pseudo-files cannot)
            err = fs.write_back(self.path, data, 0, shrink, append=False,
                                identity=stat_identity(self.opened.stat))
            self.size = mark[0]
        self.flushed = mark
        return err

    def close(self) -> None:
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1


@dataclass
class Descriptor:
    file: GuestFile
    cloexec: bool = False


class FdTable:
    """One process's (or thread group's) guest descriptors."""

    def __init__(self, entries: dict[int, Descriptor] | None = None) -> None:
        self.entries: dict[int, Descriptor] = entries or {}

    def get(self, fd: int) -> GuestFile | None:
        d = self.entries.get(fd)
        return d.file if d else None

    def set(self, fd: int, file: GuestFile, cloexec: bool = False) -> GuestFile | None:
        """Name FILE by FD; returns the file FD named before, if any."""
        old = self.entries.get(fd)
        file.refs += 1
        self.entries[fd] = Descriptor(file, cloexec)
        return self._drop(old)

    def remove(self, fd: int) -> GuestFile | None:
        return self._drop(self.entries.pop(fd, None))

    def _drop(self, d: Descriptor | None) -> GuestFile | None:
        """The file if this was its last descriptor."""
        if d is None:
            return None
        d.file.refs -= 1
        return d.file if d.file.refs == 0 else None

    def copy(self) -> "FdTable":
        for d in self.entries.values():
            d.file.refs += 1
        return FdTable({fd: Descriptor(d.file, d.cloexec) for fd, d in self.entries.items()})

    def on_exec(self) -> list[GuestFile]:
        gone = [fd for fd, d in self.entries.items() if d.cloexec]
        return [f for f in (self.remove(fd) for fd in gone) if f]

    def clear(self) -> list[GuestFile]:
        return [f for f in (self.remove(fd) for fd in list(self.entries)) if f]

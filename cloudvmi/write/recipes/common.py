"""What several recipes share: guest paths, `struct stat`, directory entries, closing fds."""

import stat as stat_mod
from dataclasses import dataclass
from typing import Annotated

from cloudvmi.capability import Rule
from cloudvmi.write.errors import check
from cloudvmi.write.session import GuestSession

MAX_FILE = 256 << 20  # the largest file read or written in one operation


@dataclass
class FileStat:
    path: str
    mode: int
    type: str  # "file", "dir", "symlink", ...
    size: int
    uid: int
    gid: int
    nlink: int
    inode: int
    mtime: float

    @property
    def permissions(self) -> str:
        return stat_mod.filemode(self.mode)


@dataclass
class DirEntry:
    name: str
    inode: int
    type: str


def file_kind(mode: int) -> str:
    return {stat_mod.S_IFREG: "file", stat_mod.S_IFDIR: "dir", stat_mod.S_IFLNK: "symlink",
            stat_mod.S_IFCHR: "char", stat_mod.S_IFBLK: "block", stat_mod.S_IFIFO: "fifo",
            stat_mod.S_IFSOCK: "socket"}.get(stat_mod.S_IFMT(mode), "unknown")


def absolute_path(p: object) -> None:
    """Refuse a guest path that is not absolute: a relative one would resolve against the
    directory of whichever process is hijacked, not anything the caller chose."""
    if not isinstance(p, str) or not p.startswith("/"):
        raise ValueError(f"guest paths must be absolute, not {p!r} (a relative path "
                         "resolves against the hijacked process's directory)")
    if "\0" in p:
        raise ValueError(f"bad guest path {p!r}: it holds a NUL")


# The type of every path parameter of a guest operation: checked where it is declared, so
# the local facade, the remote client and the agent all refuse a relative path before any
# guest thread is touched.
GuestPath = Annotated[str, Rule(absolute_path)]


def guest_path(p: str) -> bytes:
    """A path as the guest kernel takes it: absolute, NUL-terminated, with no NUL inside
    (checked again here, where the bytes are made)."""
    absolute_path(p)
    return p.encode() + b"\0"


def close(s: GuestSession, fd: int) -> int | None:
    """Close a guest fd in a batch of its own; its raw result."""
    b = s.batch()
    i = b.add(s.abi.nr("close"), fd, stop_on_error=False)
    return s.run(b)[i]


def one_call(ops, name: str, what: str, path: str, *rest: int) -> int:
    """A single path call relative to the cwd (mkdirat, fchmodat, ...) in its own session."""
    with ops.session() as s:
        b = s.batch()
        i = b.add(s.abi.nr(name), s.abi.AT_FDCWD, s.put(guest_path(path)), *rest)
        return check(s.run(b)[i], what)


def stat_path(s: GuestSession, path: str, follow: bool = False) -> FileStat:
    abi = s.abi
    b = s.batch()
    buf = s.alloc(abi.stat_size)
    i = b.add(abi.nr("newfstatat"), abi.AT_FDCWD, s.put(guest_path(path)), buf,
              0 if follow else abi.AT_SYMLINK_NOFOLLOW)
    check(s.run(b)[i], f"stat {path}")
    f = abi.parse_stat(s.read(buf, abi.stat_size))
    return FileStat(path=path, mode=f["mode"], type=file_kind(f["mode"]), size=f["size"],
                    uid=f["uid"], gid=f["gid"], nlink=f["nlink"], inode=f["ino"],
                    mtime=f["mtime"])

"""listdir: a guest directory's entries (getdents64 in batches)."""

import struct

from cloudvmi.capability import operation
from cloudvmi.write.errors import check
from cloudvmi.write.recipes.common import DirEntry, GuestPath, close, guest_path

BUFFER = 32 * 1024
MAX_BATCHES = 4096  # bounded: 4096 batches of 32 KiB of entries
_DT = {1: "fifo", 2: "char", 4: "dir", 6: "block", 8: "file", 10: "symlink", 12: "socket"}


@operation()
def listdir(ops, path: GuestPath) -> list[DirEntry]:
    """A guest directory's entries, sorted by name."""
    entries: list[DirEntry] = []
    with ops.session() as s:
        abi = s.abi
        b = s.batch()
        fd = b.add(abi.nr("openat"), abi.AT_FDCWD, s.put(guest_path(path)),
                   abi.O_RDONLY | abi.O_DIRECTORY | abi.O_CLOEXEC)
        fd_value = check(s.run(b)[fd], f"open directory {path}")
        try:
            for _ in range(MAX_BATCHES):
                b = s.batch()
                buf = s.alloc(BUFFER)
                i = b.add(abi.nr("getdents64"), fd_value, buf, BUFFER)
                n = check(s.run(b)[i], f"list {path}")
                if n == 0:
                    break
                entries += parse_dirents(s.read(buf, n))
        finally:
            close(s, fd_value)
    return sorted((e for e in entries if e.name not in (".", "..")), key=lambda e: e.name)


def parse_dirents(raw: bytes) -> list[DirEntry]:
    """struct linux_dirent64 records (the same layout on every architecture)."""
    out = []
    pos = 0
    while pos + 19 <= len(raw):
        inode, _off, reclen, dtype = struct.unpack_from("<QqHB", raw, pos)
        if reclen < 19 or pos + reclen > len(raw):
            break
        name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
        out.append(DirEntry(name.decode("utf-8", "surrogateescape"), inode,
                            _DT.get(dtype, "unknown")))
        pos += reclen
    return out

"""read_file: a guest file's bytes, read in batches of large reads."""

from cloudvmi.capability import operation
from cloudvmi.write.errors import GuestOSError, check
from cloudvmi.write.recipes.common import MAX_FILE, GuestPath, close, guest_path
from cloudvmi.write.session import GuestSession

CHUNK = 1 << 20  # bytes per read call
READ_CALLS = 4  # read calls per batch
SMALL_READ = 128 * 1024  # files up to this size are read in the session's own data area
PAGE = 4096


@operation()
def read_file(ops, path: GuestPath, limit: int = MAX_FILE) -> bytes:
    """Read a guest file (at most LIMIT bytes, or an EFBIG error)."""
    limit = min(limit, MAX_FILE)
    with ops.session(SMALL_READ + 2 * PAGE) as s:
        abi = s.abi
        b = s.batch()
        st = s.alloc(abi.stat_size)
        fd = b.add(abi.nr("openat"), abi.AT_FDCWD, s.put(guest_path(path)),
                   abi.O_RDONLY | abi.O_CLOEXEC)
        fstat = b.add(abi.nr("fstat"), b.result(fd), st)
        results = s.run(b)
        fd_value = check(results[fd], f"open {path}")
        try:
            check(results[fstat], f"fstat {path}")
            size = abi.parse_stat(s.read(st, abi.stat_size))["size"]
            if size > limit:
                raise GuestOSError(27, f"{path} is {size} bytes, over the {limit} limit")
            if size + PAGE <= SMALL_READ:  # one call; /proc files (size 0) read in pages
                return _read_fd(s, fd_value, size, limit, path,
                                size + PAGE if size else 8 * PAGE, 1 if size else 4)
            # Larger files get a buffer mapping of their own for the time of the read, so
            # small reads do not pay for populating megabytes.
            area = s.injector.map_scratch(READ_CALLS * CHUNK)
            try:
                return _read_fd(s, fd_value, size, limit, path, CHUNK, READ_CALLS, area)
            finally:
                if s.injector.target is not None and s.injector.target.usable:
                    s.injector.unmap_scratch(area, READ_CALLS * CHUNK)
        finally:
            close(s, fd_value)


def _read_fd(s: GuestSession, fd: int, size: int, limit: int, path: str, chunk: int,
             calls: int, area: int | None = None) -> bytes:
    """Read to EOF in batches of CALLS reads of CHUNK bytes (into AREA, or the session's data
    area). Files that report a size take pread at offsets (a short read is EOF); files that
    report 0 (/proc) take plain reads until one returns 0."""
    out = bytearray()
    sized = size > 0
    nr = s.abi.nr("pread64" if sized else "read")
    while len(out) < limit:
        b = s.batch()
        reads = []
        for k in range(calls):
            buf = area + k * chunk if area is not None else s.alloc(chunk)
            args = (fd, buf, chunk, len(out) + k * chunk) if sized else (fd, buf, chunk)
            reads.append((b.add(nr, *args), buf))
        results = s.run(b)
        for index, buf in reads:
            got = check(results[index], f"read {path}")
            out += s.read(buf, got) if got else b""
            if got == 0 or (sized and got < chunk):
                return bytes(out)
    raise GuestOSError(27, f"{path} is over the {limit}-byte limit")

"""write_file: create, replace or append to a guest file."""

from cloudvmi.capability import operation
from cloudvmi.stream import ByteStream
from cloudvmi.write.errors import GuestOSError, check
from cloudvmi.write.recipes.common import MAX_FILE, GuestPath, close, guest_path

CHUNK = 1 << 20  # bytes per write call
WRITE_CALLS = 8  # write calls per batch


@operation()
def write_file(ops, path: GuestPath, data: bytes | ByteStream, append: bool = False,
               mode: int = 0o644, nofollow: bool = False) -> None:
    """Write DATA to a guest file (replacing it, or appended with APPEND). With NOFOLLOW a
    symbolic link as the last component fails with ELOOP instead of being written through
    (a guest user's link must not redirect a root write).

    DATA may be a ByteStream: it is read a batch at a time as it is written, so an upload
    is never held whole. If the stream fails part way, the file keeps what was written."""
    stream = data if isinstance(data, ByteStream) else ByteStream.of_bytes(data)
    if stream.size > MAX_FILE:
        raise ValueError(f"{stream.size} bytes is over the {MAX_FILE}-byte limit")
    with ops.session(min(stream.size, WRITE_CALLS * CHUNK) + 2 * 4096) as s:
        abi = s.abi
        flags = (abi.O_WRONLY | abi.O_CREAT | abi.O_CLOEXEC
                 | (abi.O_APPEND if append else abi.O_TRUNC)
                 | (abi.O_NOFOLLOW if nofollow else 0))
        b = s.batch()
        fd = b.add(abi.nr("openat"), abi.AT_FDCWD, s.put(guest_path(path)), flags, mode)
        fd_value = check(s.run(b)[fd], f"open {path} for writing")
        closed = None
        try:
            while stream.consumed < stream.size:
                b = s.batch()
                calls = []
                while stream.consumed < stream.size and len(calls) < WRITE_CALLS:
                    piece = stream.read(CHUNK)
                    calls.append((b.add(abi.nr("write"), fd_value, s.put(piece), len(piece)),
                                  len(piece)))
                results = s.run(b)
                for index, n in calls:
                    if check(results[index], f"write {path}") != n:
                        raise GuestOSError(28, f"short write to {path}")
        finally:
            closed = close(s, fd_value)
        check(closed, f"close {path}")

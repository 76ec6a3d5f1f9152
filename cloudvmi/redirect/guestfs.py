"""The guest side of a redirected program: every call it makes on guest state becomes a list of
guest system calls on a syscall channel, with a session cache and prefetching so that a
command costs a handful of guest resumes, not one per call.

Prefetching is speculative and generic: the first stat of one entry of a listed directory
stats every entry; the first read of `D/ENTRY/REST` reads `REST` under every entry of D (a
`/proc` tree for `ps`); small regular files of a listed directory are read together. The
cache lives for one program run and is dropped whole on any call that changes the guest."""

import os
import posixpath
import struct
import sys
from dataclasses import dataclass, field

from cloudvmi.write.channel import (
    Arg,
    CallResult,
    GuestCall,
    buffer_out,
    cost,
    data_in,
    result_of,
    value,
)

AT_FDCWD, AT_SYMLINK_NOFOLLOW = -100, 0x100
O_RDONLY, O_ACCMODE, O_DIRECTORY, O_CLOEXEC = 0, 3, 0o200000, 0o2000000
O_CREAT, O_TRUNC, O_APPEND, O_PATH, O_NOFOLLOW = 0o100, 0o1000, 0o2000, 0o10000000, 0o400000
SEEK_SET = 0
EIO, ESTALE = 5, 116
S_IFMT, S_IFDIR, S_IFREG = 0o170000, 0o040000, 0o100000
STAT_SIZE, STATX_SIZE = 144, 256
FIRST_READ = 64 * 1024  # read at open; more follows on demand
CHUNK = 1 << 20  # a fetch of a larger file
READ_STEP = 64 * 1024  # one read() of a chunk
EOF_PROBE = 4096  # the read after the first, at open: 0 at the end of the file
DIR_BUFFER = 64 * 1024
DIR_READS = 2  # getdents64 calls made at open (more follow if the listing is longer)
PREFETCH_FILE = 64 * 1024  # siblings read together must be this small
SIBLING_READ = 8 * 1024  # what is read of a file fetched on speculation (more on demand)
MAX_LISTING = 1 << 20  # entries of one directory
MAX_LINK = 4096


TRACE = bool(os.environ.get("CLOUDVMI_EXEC_TRACE"))


def _show(call: GuestCall) -> str:
    return ",".join(repr(a.data[:60]) if a.kind == "input" else str(a.value)
                    for a in call.args)


def stat_mode(raw: bytes) -> int:
    return struct.unpack_from("<I", raw, 24)[0] if len(raw) >= STAT_SIZE else 0


def stat_identity(raw: bytes) -> tuple[int, int] | None:
    """(st_dev, st_ino): the first two fields of struct stat on every 64-bit Linux."""
    return struct.unpack_from("<QQ", raw, 0) if len(raw) >= 16 else None


def stat_size(raw: bytes) -> int:
    return struct.unpack_from("<q", raw, 48)[0] if len(raw) >= STAT_SIZE else 0


@dataclass
class Entry:
    name: bytes
    dtype: int
    record: bytes  # the linux_dirent64 record as the guest returned it
    offset: int  # its d_off


@dataclass
class Listing:
    result: int  # 0 or -errno
    entries: list[Entry] = field(default_factory=list)


@dataclass
class Opened:
    """A guest file as a program opened it: its stat and what was read of it."""

    result: int  # 0 or -errno
    stat: bytes = b""
    content: bytes = b""
    complete: bool = False  # content is the whole file

    @property
    def is_dir(self) -> bool:
        return stat_mode(self.stat) & S_IFMT == S_IFDIR


def parse_dirents(raw: bytes) -> list[Entry]:
    out, pos = [], 0
    while pos + 19 <= len(raw):
        _ino, off, reclen, dtype = struct.unpack_from("<QqHB", raw, pos)
        if reclen < 19 or pos + reclen > len(raw):
            break
        name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
        out.append(Entry(name, dtype, raw[pos:pos + reclen], off))
        pos += reclen
    return out


def path_in(path: bytes) -> list:
    return [data_in(path + b"\0")]


PATH = Arg("path")  # where a template takes its path
LINK_TEMPLATE = [value(AT_FDCWD), PATH, buffer_out(MAX_LINK), value(MAX_LINK)]
LINK_KEY = ("readlinkat", tuple((a.kind, a.value, a.data) for a in LINK_TEMPLATE), True)


def _fill(name: str, template: list[Arg], path: bytes, trim: bool) -> GuestCall:
    return GuestCall(name, [data_in(path + b"\0") if a.kind == "path" else a
                            for a in template], trim=trim)


def _chunk_end(group: list[GuestCall]) -> int:
    """Where a chunk group's reads would end if every one were full."""
    return group[1].args[1].value + sum(c.args[2].value for c in group if c.name == "read")


def _chunk_result(group: list[GuestCall],
                  results: list[CallResult]) -> tuple[int, bytes, bool]:
    """(error, bytes read, whether the end of the file was reached) of a chunk group."""
    for r in results[:2]:
        if r.value is None or r.value < 0:
            return (r.value or -5), b"", True
    data = bytearray()
    for call, r in zip(group[2:-1], results[2:-1], strict=True):
        if r.value is None or r.value < 0:
            return (r.value or -5), bytes(data), True
        if r.value == 0:
            return 0, bytes(data), True
        data += r.outputs[0]
        if r.value < call.args[2].value:
            return 0, bytes(data), False  # short: the rest from a new group
    return 0, bytes(data), False


def _first(r: CallResult) -> tuple[int, bytes]:
    return (r.value if r.value is not None else -5, r.outputs[0] if r.outputs else b"")


def normalize(path: bytes) -> bytes:
    """Drop empty and '.' components; keep '..' (the guest kernel resolves it) and a
    trailing slash (it means 'a directory')."""
    trailing = path.endswith((b"/", b"/.")) and path not in (b"/", b"/.")
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    out = b"/" + b"/".join(parts)
    return out + b"/" if trailing and parts else out


def join(base: bytes, path: bytes) -> bytes:
    return normalize(path if path.startswith(b"/") else base.rstrip(b"/") + b"/" + path)


def lexical(path: bytes) -> bytes:
    """The path with '..' folded (for the cwd a program reads back, and host checks)."""
    return posixpath.normpath(path) if path.startswith(b"/") else path


class GuestFS:
    def __init__(self, channel) -> None:
        self.channel = channel
        self.calls = 0
        self.cache: dict[tuple, tuple[int, bytes]] = {}
        self.requests: list[tuple] = []  # each read-only request, first use, in order
        self._noted: set = set()
        self._speculative: set = set()  # fetched because a sibling was asked for
        self.listings: dict[bytes, Listing] = {}
        self.files: dict[bytes, Opened] = {}
        self._prefetched: set[tuple] = set()
        self.before_run = None  # called before each guest run (pending write-backs)
        self._in_before = False

    # -- running lists of calls -------------------------------------------------------------
    def run(self, calls: list[GuestCall]) -> list[CallResult]:
        if self.before_run is not None and not self._in_before:
            self._in_before = True
            try:
                self.before_run()
            finally:
                self._in_before = False
        self.calls += len(calls)
        if TRACE:
            names = ", ".join(f"{c.name}({_show(c)})" for c in calls[:6])
            print(f"cloudvmi exec: guest run of {len(calls)}: {names}", file=sys.stderr)
        return self.channel.run(calls)

    def run_groups(self, groups: list[list[GuestCall]]) -> list[list[CallResult]]:
        """Groups of calls (results referenced within a group), packed into as few runs as
        the channel takes."""
        out: list[list[CallResult]] = []
        pending: list[list[GuestCall]] = []
        size = count = 0
        for group in groups:
            g_cost, g_count = cost(group), len(group)
            if pending and (count + g_count > self.channel.max_calls
                            or size + g_cost > self.channel.max_bytes):
                out += self._run_packed(pending)
                pending, size, count = [], 0, 0
            pending.append(group)
            size += g_cost
            count += g_count
        if pending:
            out += self._run_packed(pending)
        return out

    def _run_packed(self, groups: list[list[GuestCall]]) -> list[list[CallResult]]:
        flat: list[GuestCall] = []
        for group in groups:
            base = len(flat)
            for call in group:
                args = [result_of(a.value + base) if a.kind == "result" else a
                        for a in call.args]
                flat.append(GuestCall(call.name, args, call.stop_on_error, call.trim))
        results = self.run(flat)
        out, pos = [], 0
        for group in groups:
            out.append(results[pos:pos + len(group)])
            pos += len(group)
        return out

    def one(self, name: str, *args, trim: bool = False) -> CallResult:
        return self.run([GuestCall(name, list(args), trim=trim)])[0]

    def changed(self) -> None:
        """The guest was changed: nothing read before can be trusted."""
        self.cache.clear()
        self.listings.clear()
        self.files.clear()
        self._prefetched.clear()

    # -- calls on one path, cached ----------------------------------------------------------
    def path_call(self, name: str, template: list[Arg], path: bytes,
                  trim: bool = False) -> tuple[int, bytes]:
        """(result, first output) of NAME with PATH in the template's PATH slot. Cached; the
        first miss on an entry of a listed directory makes the same call for every entry."""
        key = (name, tuple((a.kind, a.value, a.data) for a in template), trim)
        self._note(("call", name, template, trim), (key, path), path)
        hit = self.cache.get((key, path))
        if hit is not None:
            return hit
        paths = [path] + [p for p in self._siblings(key, path) if (key, p) not in self.cache]
        extra: list[bytes] = []
        if len(paths) > 1 and name in ("newfstatat", "statx"):  # ls -l reads links too
            extra = [p for p in self._sibling_links(path)
                     if (LINK_KEY, p) not in self.cache]
        groups = [[_fill(name, template, p, trim)] for p in paths]
        groups += [[_fill("readlinkat", LINK_TEMPLATE, p, True)] for p in extra]
        results = self.run_groups(groups)
        for p, r in zip(paths, results, strict=False):
            self.cache[(key, p)] = _first(r[0])
            if p != path:
                self._speculative.add((key, p))
        for p, r in zip(extra, results[len(paths):], strict=True):
            self.cache[(LINK_KEY, p)] = _first(r[0])
        return self.cache[(key, path)]

    def stat(self, path: bytes, kind: str = "newfstatat", flags: int = 0,
             mask: int = 0) -> tuple[int, bytes]:
        """(result, struct stat or statx bytes) of a guest path."""
        if kind == "statx":
            return self.path_call("statx", [value(AT_FDCWD), PATH, value(flags), value(mask),
                                            buffer_out(STATX_SIZE)], path)
        return self.path_call("newfstatat", [value(AT_FDCWD), PATH, buffer_out(STAT_SIZE),
                                             value(flags)], path)

    def readlink(self, path: bytes) -> tuple[int, bytes]:
        return self.path_call("readlinkat", LINK_TEMPLATE, path, trim=True)

    def _siblings(self, key: tuple, path: bytes) -> list[bytes]:
        parent, name = posixpath.split(path)
        listing = self.listings.get(parent)
        if listing is None or (key, parent) in self._prefetched or not name:
            return []
        if not any(e.name == name for e in listing.entries):
            return []
        self._prefetched.add((key, parent))
        return [normalize(parent + b"/" + e.name) for e in listing.entries if e.name != name]

    def known_stat(self, path: bytes) -> tuple[int, bytes] | None:
        for flags in (AT_SYMLINK_NOFOLLOW, 0):
            key = ("newfstatat", tuple((a.kind, a.value, a.data) for a in [
                value(AT_FDCWD), PATH, buffer_out(STAT_SIZE), value(flags)]), False)
            hit = self.cache.get((key, path))
            if hit is not None:
                return hit
        return None

    def _sibling_links(self, path: bytes) -> list[bytes]:
        parent = posixpath.dirname(path)
        listing = self.listings.get(parent)
        return [posixpath.join(parent, e.name) for e in listing.entries if e.dtype == 10] \
            if listing else []

    # -- directories ------------------------------------------------------------------------
    def listdir(self, path: bytes) -> Listing:
        hit = self.listings.get(path)
        if hit is not None:
            return hit
        entries: list[Entry] = []
        offset = 0
        while len(entries) < MAX_LISTING:
            group = [GuestCall("openat", [value(AT_FDCWD), *path_in(path),
                                          value(O_RDONLY | O_DIRECTORY | O_CLOEXEC)],
                               stop_on_error=True)]
            if offset:
                group.append(GuestCall("lseek", [result_of(0), value(offset),
                                                 value(SEEK_SET)], stop_on_error=True))
            reads = []
            for _ in range(4):
                reads.append(len(group))
                group.append(GuestCall("getdents64", [result_of(0), buffer_out(DIR_BUFFER),
                                                      value(DIR_BUFFER)], trim=True))
            group.append(GuestCall("close", [result_of(0)]))
            results = self.run(group)
            if results[0].value is None or results[0].value < 0:
                listing = Listing(results[0].value or -5)
                self.listings[path] = listing
                return listing
            done = False
            for i in reads:
                r = results[i]
                if r.value is None or r.value < 0:
                    listing = Listing(r.value or -5)
                    self.listings[path] = listing
                    return listing
                if r.value == 0:
                    done = True
                    break
                batch = parse_dirents(r.outputs[0])
                entries += batch
                if batch:
                    offset = batch[-1].offset
            if done:
                break
        listing = Listing(0, entries)
        self.listings[path] = listing
        return listing

    # -- files ------------------------------------------------------------------------------
    def _open_group(self, path: bytes, flags: int, mode: int, umask: int | None,
                    read: int) -> list[GuestCall]:
        group = []
        if umask is not None:
            group.append(GuestCall("umask", [value(umask)]))
        group.append(GuestCall("openat", [value(AT_FDCWD), *path_in(path),
                                          value(flags | O_CLOEXEC), value(mode)]))
        fd = len(group) - 1
        group.append(GuestCall("fstat", [result_of(fd), buffer_out(STAT_SIZE)]))
        if read:  # a second read tells the end (0) from a pseudo-file's short read (a page)
            for size in (read, EOF_PROBE):
                group.append(GuestCall("read", [result_of(fd), buffer_out(size), value(size)],
                                       trim=True))
        elif flags & O_DIRECTORY and not flags & O_PATH:  # its listing, in the same run
            for _ in range(DIR_READS):
                group.append(GuestCall("getdents64", [result_of(fd), buffer_out(DIR_BUFFER),
                                                      value(DIR_BUFFER)], trim=True))
        group.append(GuestCall("close", [result_of(fd)]))
        if umask is not None:
            group.append(GuestCall("umask", [result_of(0)]))
        return group

    def _opened(self, group: list[GuestCall], results: list[CallResult], read: int) -> Opened:
        fd = next(i for i, c in enumerate(group) if c.name == "openat")
        r = results[fd]
        if r.value is None or r.value < 0:
            return Opened(r.value if r.value is not None else -5)
        st = results[fd + 1].outputs[0]
        content, complete = b"", False
        if read:
            first, probe = results[fd + 2], results[fd + 3]
            if first.value is not None and first.value >= 0:
                content = first.outputs[0]
                if probe.value is not None and probe.value >= 0:
                    content += probe.outputs[0]
                    complete = probe.value == 0
            if stat_mode(st) & S_IFMT == S_IFDIR:
                content, complete = b"", True
        dents = [r for c, r in zip(group, results, strict=True) if c.name == "getdents64"]
        if dents and all(r.value is not None and r.value >= 0 for r in dents) \
                and any(r.value == 0 for r in dents):
            path = group[fd].args[1].data[:-1]
            self.listings[path] = Listing(0, [e for r in dents
                                              for e in parse_dirents(r.outputs[0])])
        return Opened(0, st, content, complete)

    def open(self, path: bytes, flags: int, mode: int = 0, umask: int | None = None) -> Opened:
        """Open PATH in the guest as the program asked (creating or truncating it there),
        take its stat, read its start if it is read, close it."""
        readable = flags & O_ACCMODE != 1 and not flags & O_PATH
        writes = flags & (O_CREAT | O_TRUNC) or flags & O_ACCMODE
        if not writes:
            self._note(("open", flags), ("open", flags, path), path)
            hit = self.files.get(path)
            if hit is not None and not (flags & O_DIRECTORY and not hit.is_dir):
                return hit
        read = FIRST_READ if readable and not flags & O_DIRECTORY else 0
        if writes:
            self.changed()
            group = self._open_group(path, flags & ~O_CLOEXEC, mode, umask, read)
            return self._opened(group, self.run(group), read)
        paths = [path] + self._prefetch_candidates(path)
        sizes = [read] + [min(read, SIBLING_READ)] * (len(paths) - 1)
        groups = [self._open_group(p, flags & ~O_CLOEXEC & ~O_NOFOLLOW
                                   if p != path else flags & ~O_CLOEXEC, 0, None, n)
                  for p, n in zip(paths, sizes, strict=True)]
        results = self.run_groups(groups)
        for p, g, r, n in zip(paths, groups, results, sizes, strict=True):
            self.files[p] = self._opened(g, r, n)
            if p != path:
                self._speculative.add(("open", flags, p))
        return self.files[path]

    # -- what a program asks first ------------------------------------------------------------
    def _note(self, request: tuple, key: tuple, path: bytes) -> None:
        if key not in self._noted and key not in self._speculative:
            self._noted.add(key)
            self.requests.append((*request, path))

    def warm(self, requests: list[tuple], extra: list[list[GuestCall]] = ()) -> list:
        """Make the read-only requests a program made last time, all in one run (and then
        what they imply: the same file under every entry of a directory they listed).
        EXTRA groups ride along; their results are returned."""
        groups: list[list[GuestCall]] = list(extra)
        kinds: list[tuple] = [("extra",)] * len(groups)
        opened = []
        for request in requests:
            if request[0] == "call":
                _, name, template, trim, path = request
                key = (name, tuple((a.kind, a.value, a.data) for a in template), trim)
                if (key, path) not in self.cache:
                    groups.append([_fill(name, template, path, trim)])
                    kinds.append(("call", (key, path)))
            elif request[0] == "open" and request[2] not in self.files:
                _, flags, path = request
                read = SIBLING_READ if not flags & (O_DIRECTORY | O_PATH) else 0
                groups.append(self._open_group(path, flags & ~O_CLOEXEC, 0, None, read))
                kinds.append(("open", path, read))
                opened.append((path, flags))
        out = []
        for group, kind, results in zip(groups, kinds, self.run_groups(groups), strict=True):
            if kind[0] == "extra":
                out.append(results)
            elif kind[0] == "call":
                self.cache[kind[1]] = _first(results[0])
            else:
                self.files[kind[1]] = self._opened(group, results, kind[2])
        # Then what those imply, in one more run: the same call or file under every entry
        # of a directory they listed (/proc/PID/stat for every PID).
        groups, kinds = [], []
        for request in requests:
            if request[0] == "call":
                _, name, template, trim, path = request
                key = (name, tuple((a.kind, a.value, a.data) for a in template), trim)
                for p in self._siblings(key, path):
                    if (key, p) not in self.cache:
                        groups.append([_fill(name, template, p, trim)])
                        kinds.append(("call", (key, p)))
        for path, flags in opened:
            for p in self._prefetch_candidates(path):
                groups.append(self._open_group(p, flags & ~O_CLOEXEC & ~O_NOFOLLOW, 0, None,
                                               SIBLING_READ))
                kinds.append(("open", p, flags))
        for group, kind, results in zip(groups, kinds, self.run_groups(groups), strict=True):
            if kind[0] == "call":
                self.cache[kind[1]] = _first(results[0])
                self._speculative.add(kind[1])
            else:
                self.files[kind[1]] = self._opened(group, results, SIBLING_READ)
                self._speculative.add(("open", kind[2], kind[1]))
        return out

    def _prefetch_candidates(self, path: bytes) -> list[bytes]:
        """Files a program that opened PATH is likely to open next."""
        out: list[bytes] = []
        parts = path.split(b"/")
        # D/ENTRY/REST for every entry of a listed D (/proc/PID/stat for every PID)
        for cut in range(len(parts) - 2, 1, -1):
            d, entry, rest = b"/".join(parts[:cut]) or b"/", parts[cut], parts[cut + 1:]
            listing = self.listings.get(d)
            if listing is None or not any(e.name == entry for e in listing.entries):
                continue
            key = ("tree", d, b"/".join(rest))
            if key in self._prefetched:
                return []
            self._prefetched.add(key)
            sub = b"/".join(rest)
            out = [posixpath.join(d, e.name, sub) for e in listing.entries
                   if e.name not in (b".", b"..", entry) and e.dtype in (0, 4)]
            return [p for p in out if p not in self.files][:2048]
        # small regular siblings whose size we know
        parent, name = posixpath.split(path)
        listing = self.listings.get(parent)
        if listing and ("files", parent) not in self._prefetched:
            self._prefetched.add(("files", parent))
            for e in listing.entries:
                p = posixpath.join(parent, e.name)
                st = self.known_stat(p)
                if e.dtype == 8 and e.name != name and p not in self.files and st \
                        and st[0] == 0 and stat_size(st[1]) <= PREFETCH_FILE:
                    out.append(p)
        return out[:256]

    def read_range(self, path: bytes, offset: int, size: int) -> tuple[int, bytes]:
        """Bytes [OFFSET, OFFSET+SIZE) of a guest file, or up to its end. The file is read
        with read() in steps: a pseudo-file (/proc, /sys) answers a page or a record at a
        time, so only a read of 0 is its end. Steps of a regular file are full, and several
        of its chunks travel in one run."""
        out = bytearray()
        per_run = max(1, self.channel.max_bytes // (CHUNK + READ_STEP)) * CHUNK
        while len(out) < size:
            start = offset + len(out)
            stop = min(offset + size, start + per_run)
            groups = [self._chunk_group(path, at, min(CHUNK, stop - at))
                      for at in range(start, stop, CHUNK)]
            for group, results in zip(groups, self.run_groups(groups), strict=True):
                err, data, ended = _chunk_result(group, results)
                if err:
                    return err, bytes(out)
                out += data
                if ended:
                    return 0, bytes(out[:size])
                if len(out) != _chunk_end(group) - offset:
                    break  # a short step: go on from where it stopped
        return 0, bytes(out[:size])

    def _chunk_group(self, path: bytes, at: int, size: int) -> list[GuestCall]:
        group = [GuestCall("openat", [value(AT_FDCWD), *path_in(path),
                                      value(O_RDONLY | O_CLOEXEC)], stop_on_error=True),
                 GuestCall("lseek", [result_of(0), value(at), value(SEEK_SET)],
                           stop_on_error=True)]
        for step in range(0, size, READ_STEP):
            n = min(READ_STEP, size - step)
            group.append(GuestCall("read", [result_of(0), buffer_out(n), value(n)], trim=True))
        group.append(GuestCall("close", [result_of(0)]))
        return group

    def read_rest(self, path: bytes, start: int, limit: int) -> tuple[int, bytes]:
        """The rest of a file read from START to its end (pseudo-files: /proc, /sys), a
        chunk at a time (read_range comes back short only at the end)."""
        out = bytearray()
        while len(out) < limit:
            err, part = self.read_range(path, start + len(out), min(CHUNK, limit - len(out)))
            if err:
                return err, bytes(out)
            out += part
            if len(part) < CHUNK:
                break
        return 0, bytes(out)

    def write_back(self, path: bytes, data: bytes, offset: int, truncate: int | None,
                   append: bool, identity: tuple[int, int] | None = None) -> int:
        """Write DATA at OFFSET (or at the end) of a guest file; 0 or -errno. With IDENTITY
        (the (dev, ino) the program opened), the file PATH names now must still be that one:
        a guest user who swapped the path for a link or another file since (to turn a
        root write elsewhere) gets nothing written (-ESTALE)."""
        self.changed()
        flags = 1 | O_CLOEXEC | (O_APPEND if append else 0)
        opened = self.run([GuestCall("openat", [value(AT_FDCWD), *path_in(path), value(flags)],
                                     stop_on_error=True),
                           GuestCall("fstat", [result_of(0), buffer_out(STAT_SIZE)])])
        fd = opened[0].value
        if fd is None or fd < 0:
            return fd if fd is not None else -EIO
        err = 0
        if opened[1].value != 0:
            err = opened[1].value if opened[1].value is not None else -EIO
        elif identity is not None and stat_identity(opened[1].outputs[0]) != identity:
            err = -ESTALE
        step = max(4096, self.channel.max_bytes // 2)
        pieces = [data[i:i + step] for i in range(0, len(data), step)] if not err else []
        for k, piece in enumerate(pieces or [b""]):
            group = []
            if piece:
                group.append(GuestCall("write", [value(fd), data_in(piece), value(len(piece))])
                             if append else
                             GuestCall("pwrite64", [value(fd), data_in(piece),
                                                    value(len(piece)),
                                                    value(offset + k * step)]))
            last = k == max(len(pieces), 1) - 1
            if last and not err and truncate is not None:
                group.append(GuestCall("ftruncate", [value(fd), value(truncate)]))
            if last or err:
                group.append(GuestCall("close", [value(fd)]))
            results = self.run(group)
            for r in results[:-1] if group[-1].name == "close" else results:
                if r.value is None or r.value < 0:
                    err = err or (r.value if r.value is not None else -EIO)
            if err and not last:  # a write failed: close, and say why
                self.run([GuestCall("close", [value(fd)])])
                break
        return err

"""Guest operations, each a short recipe of system calls over the injection engine."""

import ipaddress
import os
import stat as stat_mod
import struct
from dataclasses import dataclass

from cloudvmi.write.injector import PAGE, Injector
from cloudvmi.write.session import GuestOSError, GuestSession, check
from cloudvmi.write.syscalls import (
    AF_INET,
    AT_FDCWD,
    AT_REMOVEDIR,
    AT_SYMLINK_NOFOLLOW,
    IFF_UP,
    NR,
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_RDONLY,
    O_RDWR,
    O_TRUNC,
    O_WRONLY,
    SIOCGIFFLAGS,
    SIOCSIFADDR,
    SIOCSIFFLAGS,
    SIOCSIFNETMASK,
    SOCK_DGRAM,
    errno_of,
)

CHUNK = 1 << 20  # bytes per read/write call
READ_CALLS = 4  # read calls per batch
SMALL_READ = 128 * 1024  # files up to this size are read in the session's own data area
STAT = struct.Struct("<QQQIIIIQqqqqqqqqq24x")  # struct stat on x86-64 (144 bytes)
MAX_FILE = 256 << 20
NR_ALARM = 37


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


_DT = {1: "fifo", 2: "char", 4: "dir", 6: "block", 8: "file", 10: "symlink", 12: "socket"}


def _kind(mode: int) -> str:
    return {stat_mod.S_IFREG: "file", stat_mod.S_IFDIR: "dir", stat_mod.S_IFLNK: "symlink",
            stat_mod.S_IFCHR: "char", stat_mod.S_IFBLK: "block", stat_mod.S_IFIFO: "fifo",
            stat_mod.S_IFSOCK: "socket"}.get(stat_mod.S_IFMT(mode), "unknown")


def _path(p: str) -> bytes:
    raw = p.encode()
    if b"\0" in raw or not raw:
        raise ValueError(f"bad guest path {p!r}")
    return raw + b"\0"


class GuestOps:
    """What can be changed in a guest from outside, with no agent inside."""

    def __init__(self, injector: Injector, pid: int | None = None) -> None:
        self.injector = injector
        self.pid = pid  # the process whose thread is hijacked; None: any suitable root one

    def as_process(self, pid: int) -> "GuestOps":
        """The same operations, run in process PID (with its identity and permissions)."""
        return GuestOps(self.injector, pid)

    def _session(self, data_size: int = 64 * PAGE) -> GuestSession:
        return GuestSession(self.injector, data_size, self.pid)

    # -- processes --------------------------------------------------------------------------
    def kill(self, pid: int, sig: int = 15) -> None:
        inj = self.injector
        inj.hijack(self.pid)
        try:
            check(inj.syscall(NR["kill"], pid, sig), f"kill({pid}, {sig})")
        finally:
            inj.release()

    # -- files ------------------------------------------------------------------------------
    def stat(self, path: str, follow: bool = False) -> FileStat:
        with self._session() as s:
            return self._stat(s, path, follow)

    def _stat(self, s: GuestSession, path: str, follow: bool = False) -> FileStat:
        b = s.batch()
        buf = s.alloc(STAT.size)
        i = b.add(NR["newfstatat"], AT_FDCWD, s.put(_path(path)), buf,
                  0 if follow else AT_SYMLINK_NOFOLLOW)
        check(s.run(b)[i], f"stat {path}")
        f = STAT.unpack(s.read(buf, STAT.size))
        return FileStat(path=path, mode=f[3], type=_kind(f[3]), size=f[8], uid=f[4], gid=f[5],
                        nlink=f[2], inode=f[1], mtime=f[13] + f[14] / 1e9)

    def read_file(self, path: str, limit: int = MAX_FILE) -> bytes:
        with self._session(SMALL_READ + 2 * PAGE) as s:
            b = s.batch()
            st = s.alloc(STAT.size)
            fd = b.add(NR["openat"], AT_FDCWD, s.put(_path(path)), O_RDONLY | O_CLOEXEC)
            b.add(NR["fstat"], b.result(fd), st)
            results = s.run(b)
            fd_value = check(results[fd], f"open {path}")
            try:
                check(results[1], f"fstat {path}")
                size = STAT.unpack(s.read(st, STAT.size))[8]
                if size > limit:
                    raise GuestOSError(27, f"{path} is {size} bytes, over the {limit} limit")
                if size + PAGE <= SMALL_READ:  # one call; /proc files (size 0) read in pages
                    return self._read_fd(s, fd_value, size, limit, path,
                                         size + PAGE if size else 8 * PAGE, 1 if size else 4)
                # Larger files get a buffer mapping of their own for the time of the read, so
                # small reads do not pay for populating megabytes.
                area = s.injector.map_scratch(READ_CALLS * CHUNK)
                try:
                    return self._read_fd(s, fd_value, size, limit, path, CHUNK, READ_CALLS,
                                         area)
                finally:
                    if s.injector.target is not None and s.injector.target.usable:
                        s.injector.unmap_scratch(area, READ_CALLS * CHUNK)
            finally:
                b = s.batch()
                b.add(NR["close"], fd_value, stop_on_error=False)
                s.run(b)

    def _read_fd(self, s: GuestSession, fd: int, size: int, limit: int, path: str,
                 chunk: int, calls: int, area: int | None = None) -> bytes:
        """Read to EOF in batches of CALLS reads of CHUNK bytes (into AREA, or the session's
        data area). Files that report a size take pread at offsets (a short read is EOF);
        files that report 0 (/proc) take plain reads until one returns 0."""
        out = bytearray()
        sized = size > 0
        while len(out) < limit:
            b = s.batch()
            reads = []
            for k in range(calls):
                buf = area + k * chunk if area is not None else s.alloc(chunk)
                args = (fd, buf, chunk, len(out) + k * chunk) if sized else (fd, buf, chunk)
                reads.append((b.add(NR["pread64" if sized else "read"], *args), buf))
            results = s.run(b)
            for index, buf in reads:
                got = check(results[index], f"read {path}")
                out += s.read(buf, got) if got else b""
                if got == 0 or (sized and got < chunk):
                    return bytes(out)
        raise GuestOSError(27, f"{path} is over the {limit}-byte limit")

    def write_file(self, path: str, data: bytes, append: bool = False,
                   mode: int = 0o644) -> None:
        flags = O_WRONLY | O_CREAT | O_CLOEXEC | (O_APPEND if append else O_TRUNC)
        with self._session(min(len(data), 8 * CHUNK) + 2 * PAGE) as s:
            b = s.batch()
            fd = b.add(NR["openat"], AT_FDCWD, s.put(_path(path)), flags, mode)
            fd_value = check(s.run(b)[fd], f"open {path} for writing")
            try:
                pos = 0
                while pos < len(data):
                    b = s.batch()
                    calls = []
                    while pos < len(data) and len(calls) < 8:
                        piece = data[pos:pos + CHUNK]
                        calls.append((b.add(NR["write"], fd_value, s.put(piece), len(piece)),
                                      len(piece)))
                        pos += len(piece)
                    results = s.run(b)
                    for index, n in calls:
                        if check(results[index], f"write {path}") != n:
                            raise GuestOSError(28, f"short write to {path}")
            finally:
                b = s.batch()
                close = b.add(NR["close"], fd_value, stop_on_error=False)
                results = s.run(b)
            check(results[close], f"close {path}")

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._one(NR["mkdirat"], f"mkdir {path}", AT_FDCWD, path, mode)

    def remove(self, path: str) -> None:
        """Delete a file or an empty directory."""
        with self._session() as s:
            st = self._stat(s, path)
            b = s.batch()
            i = b.add(NR["unlinkat"], AT_FDCWD, s.put(_path(path)),
                      AT_REMOVEDIR if st.type == "dir" else 0)
            check(s.run(b)[i], f"remove {path}")

    def chmod(self, path: str, mode: int) -> None:
        self._one(NR["fchmodat"], f"chmod {path}", AT_FDCWD, path, mode, 0)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self._one(NR["fchownat"], f"chown {path}", AT_FDCWD, path, uid, gid,
                  AT_SYMLINK_NOFOLLOW)

    def _one(self, nr: int, what: str, dirfd: int, path: str, *rest: int) -> int:
        with self._session() as s:
            b = s.batch()
            i = b.add(nr, dirfd, s.put(_path(path)), *rest)
            return check(s.run(b)[i], what)

    def listdir(self, path: str) -> list[DirEntry]:
        entries: list[DirEntry] = []
        with self._session() as s:
            b = s.batch()
            fd = b.add(NR["openat"], AT_FDCWD, s.put(_path(path)),
                       O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            fd_value = check(s.run(b)[fd], f"open directory {path}")
            try:
                for _ in range(4096):  # bounded: 4096 batches of 32 KiB of entries
                    b = s.batch()
                    buf = s.alloc(32 * 1024)
                    i = b.add(NR["getdents64"], fd_value, buf, 32 * 1024)
                    n = check(s.run(b)[i], f"list {path}")
                    if n == 0:
                        break
                    entries += _parse_dirents(s.read(buf, n))
            finally:
                b = s.batch()
                b.add(NR["close"], fd_value, stop_on_error=False)
                s.run(b)
        return sorted((e for e in entries if e.name not in (".", "..")), key=lambda e: e.name)

    # -- kernel settings ----------------------------------------------------------------------
    def sysctl_get(self, key: str) -> str:
        return self.read_file(_sysctl_path(key)).decode(errors="replace").strip()

    def sysctl_set(self, key: str, value: str) -> None:
        self.write_file(_sysctl_path(key), value.encode() + b"\n")

    # -- network ------------------------------------------------------------------------------
    def link_set(self, iface: str, up: bool) -> None:
        with self._session() as s:
            sock, ifreq = self._ifreq_socket(s, iface)
            try:
                b = s.batch()
                i = b.add(NR["ioctl"], sock, SIOCGIFFLAGS, ifreq)
                check(s.run(b)[i], f"get flags of {iface}")
                flags = struct.unpack("<H", s.read(ifreq + 16, 2))[0]
                flags = flags | IFF_UP if up else flags & ~IFF_UP
                s.injector.write_user(ifreq + 16, struct.pack("<H", flags))
                b = s.batch()
                i = b.add(NR["ioctl"], sock, SIOCSIFFLAGS, ifreq)
                check(s.run(b)[i], f"set {iface} {'up' if up else 'down'}")
            finally:
                self._close(s, sock)

    def set_address(self, iface: str, cidr: str) -> None:
        net = ipaddress.IPv4Interface(cidr)
        with self._session() as s:
            sock, _ = self._ifreq_socket(s, iface)
            try:
                b = s.batch()
                calls = []
                for request, address in ((SIOCSIFADDR, net.ip),
                                         (SIOCSIFNETMASK, net.network.netmask)):
                    req = s.put(_ifreq(iface, struct.pack("<HH4s8x", AF_INET, 0,
                                                          address.packed)))
                    calls.append(b.add(NR["ioctl"], sock, request, req))
                results = s.run(b)
                check(results[calls[0]], f"set address of {iface}")
                check(results[calls[1]], f"set netmask of {iface}")
            finally:
                self._close(s, sock)

    def _ifreq_socket(self, s: GuestSession, iface: str) -> tuple[int, int]:
        b = s.batch()
        sock = b.add(NR["socket"], AF_INET, SOCK_DGRAM | O_CLOEXEC, 0)
        ifreq = s.put(_ifreq(iface, b""))
        return check(s.run(b)[sock], "socket"), ifreq

    def _close(self, s: GuestSession, fd: int) -> None:
        b = s.batch()
        b.add(NR["close"], fd, stop_on_error=False)
        s.run(b)

    # -- programs -----------------------------------------------------------------------------
    def run(self, argv: list[str], timeout: float = 30.0) -> tuple[int, bytes]:
        """Run a program in the guest (forked from the hijacked process) and collect its exit
        status and output. SIGALRM ends it after TIMEOUT seconds (exit status 128+14)."""
        if not argv:
            raise ValueError("nothing to run")
        out_path = f"/tmp/.cloudvmi-run-{os.urandom(6).hex()}"
        old_timeout = self.injector.timeout
        self.injector.timeout = max(old_timeout, timeout + 10)
        try:
            with self._session() as s:
                b = s.batch()
                args = [s.put(a.encode() + b"\0") for a in argv]
                argv_ptr = s.put(struct.pack(f"<{len(args) + 1}Q", *args, 0))
                env = s.put(b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\0")
                envp = s.put(struct.pack("<2Q", env, 0))
                status = s.alloc(8)
                fd = b.add(NR["openat"], AT_FDCWD, s.put(_path(out_path)),
                           O_RDWR | O_CREAT | O_TRUNC, 0o600)
                null = b.add(NR["openat"], AT_FDCWD, s.put(b"/dev/null\0"), O_RDONLY)
                pid = b.add(NR["fork"], parent_skips=6)
                # The child's calls: none may stop the batch, or the child would spin at its
                # end instead of reaching exit_group.
                b.add(NR["dup2"], b.result(null), 0, stop_on_error=False)
                b.add(NR["dup2"], b.result(fd), 1, stop_on_error=False)
                b.add(NR["dup2"], b.result(fd), 2, stop_on_error=False)
                b.add(NR_ALARM, max(1, int(timeout)), stop_on_error=False)
                b.add(NR["execve"], args[0], argv_ptr, envp, stop_on_error=False)
                b.add(NR["exit_group"], 127, stop_on_error=False)
                wait = b.add(NR["wait4"], b.result(pid), status, 0, 0)  # the parent's
                b.add(NR["close"], b.result(fd), stop_on_error=False)
                b.add(NR["close"], b.result(null), stop_on_error=False)
                results = s.run(b)
                check(results[fd], f"create {out_path}")
                check(results[pid], "fork")
                check(results[wait], "wait4")
                raw_status = struct.unpack("<i", s.read(status, 4))[0]
        finally:
            self.injector.timeout = old_timeout
        try:
            output = self.read_file(out_path)
        finally:
            self.remove(out_path)
        code = (raw_status >> 8) & 0xFF if raw_status & 0x7F == 0 else 128 + (raw_status & 0x7F)
        return code, output


def _sysctl_path(key: str) -> str:
    if not key or ".." in key or key.startswith("/"):
        raise ValueError(f"bad sysctl key {key!r}")
    return "/proc/sys/" + key.replace(".", "/")


def _ifreq(iface: str, union: bytes) -> bytes:
    name = iface.encode()
    if not 0 < len(name) < 16:
        raise ValueError(f"bad interface name {iface!r}")
    return name.ljust(16, b"\0") + union.ljust(24, b"\0")


def _parse_dirents(raw: bytes) -> list[DirEntry]:
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


__all__ = ["GuestOps", "FileStat", "DirEntry", "GuestOSError", "errno_of"]

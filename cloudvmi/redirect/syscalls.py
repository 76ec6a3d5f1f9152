"""What each redirected system call means: answered from the guest, run natively, or run
natively on a placeholder the tracer prepared. One method per call, named after it; the
tracer finds them by the call's number.

Paths resolve against the process's guest cwd (or a guest directory descriptor); guest calls
are made with absolute paths, so the helper thread's own cwd and fds never matter."""

import errno
import os
import struct

from cloudvmi.arch.x86_64.syscalls import NUMBERS
from cloudvmi.redirect import hostpaths
from cloudvmi.redirect.files import GuestFile
from cloudvmi.redirect.guestfs import (
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    O_CREAT,
    O_PATH,
    PATH,
    S_IFDIR,
    S_IFMT,
    STAT_SIZE,
    GuestFS,
    Opened,
    path_in,
    stat_mode,
)
from cloudvmi.redirect.stop import (
    Outcome,
    Stop,
    answer,
    fail,
    join,
    lexical,
    native,
    normalize,
    rewritten,
)
from cloudvmi.write.channel import GuestCall, buffer_out, data_in, data_inout, result_of, value

AT_EMPTY_PATH, AT_REMOVEDIR = 0x1000, 0x200
O_CLOEXEC, O_APPEND = 0o2000000, 0o2000
MFD_CLOEXEC = 1
F_DUPFD, F_SETFD, F_DUPFD_CLOEXEC = 0, 2, 1030
SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2
UTSNAME, SYSINFO, STATFS = 390, 112, 120
MAX_IOV = 1024
AF_UNIX, SOCK_CLOEXEC, SOL_SOCKET, SO_RCVTIMEO = 1, 0o2000000, 1, 20
RECV_TIMEOUT = 2  # seconds a guest socket waits for data (the guest runs meanwhile)
MAX_SOCK_DATA = 1 << 20
MSG_TRUNC = 0x20
SIOC_FIRST, SIOC_LAST, SIOCGIFCONF, IFREQ = 0x8910, 0x89FF, 0x8912, 40
REFUSED = [
    "mount", "umount2", "pivot_root", "chroot", "swapon", "swapoff", "reboot", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "settimeofday",
    "clock_settime", "adjtimex", "clock_adjtime", "acct", "quotactl"
]


class Calls:
    def __init__(self, fs: GuestFS, helper_pid: int, traced: set[int], pgid: int) -> None:
        self.fs = fs
        self.helper_pid = helper_pid
        self.traced = traced  # thread ids of the traced tree (kill() of these stays here)
        self.pgid = pgid
        self.files: set[GuestFile] = set()  # every open guest file (for write-back)
        self.creds: dict[str, int] | None = None
        self.sockets: set[int] = set()  # guest descriptors of the program's sockets
        self.groups: list[int] = []
        self.utsname: bytes | None = None
        self.by_nr = {NUMBERS[name[4:]]: getattr(self, name) for name in dir(self)
                      if name.startswith("sys_") and name[4:] in NUMBERS}
        for name in REFUSED:
            self.by_nr[NUMBERS[name]] = self._refuse

    def handle(self, stop: Stop) -> Outcome:
        handler = self.by_nr.get(stop.nr)
        return handler(stop) if handler else native()

    # -- paths ------------------------------------------------------------------------------
    def where(self, stop: Stop, dirfd: int, path: bytes | None,
              empty_ok: bool = False) -> tuple[str, object]:
        """('host', None) to run natively, ('tag', offset) to run natively past the host
        tag, ('guest', absolute path), ('file', GuestFile) for an empty path on a guest
        descriptor, or ('error', errno)."""
        if path is None:
            return "error", errno.EFAULT
        if hostpaths.untag(path) is not None:
            return "tag", len(hostpaths.HOST_TAG)
        if stop.from_loader():
            return "host", None
        if path == b"":
            if not empty_ok:
                return "error", errno.ENOENT
            if dirfd == AT_FDCWD:
                return "guest", stop.proc.cwd
            f = stop.proc.fds.get(dirfd)
            return ("file", f) if f else ("host", None)
        if path.startswith(b"/"):
            absolute = normalize(path)
        elif dirfd == AT_FDCWD:
            absolute = join(stop.proc.cwd, path)
        else:
            f = stop.proc.fds.get(dirfd)
            if f is None:
                return "host", None
            if f.kind != "dir":
                return "error", errno.ENOTDIR
            absolute = join(f.path, path)
        if hostpaths.is_host(lexical(absolute)) or self._own_proc(absolute):
            return ("host", None) if path.startswith(b"/") else ("place", absolute)
        return "guest", absolute

    def _own_proc(self, path: bytes) -> bool:
        """/proc/PID of a traced process: the program looking at itself (procps does)."""
        if not path.startswith(b"/proc/"):
            return False
        pid = path[6:].split(b"/", 1)[0]
        return pid.isdigit() and int(pid) in self.traced

    def _path_call(self, stop: Stop, dirfd: int, path_arg: int, guest, empty_ok=False,
                   file_ok=None) -> Outcome:
        """The common shape: host paths run natively, guest ones go to GUEST(path)."""
        kind, what = self.where(stop, dirfd, stop.string(path_arg), empty_ok)
        if kind == "host":
            return native()
        if kind == "tag":
            stop.regs.set_arg(path_arg, stop.arg(path_arg) + what)
            return rewritten()
        if kind == "place":  # a host path named relative to a guest directory
            address = stop.place(what + b"\0")
            if address is None:
                return fail(errno.EFAULT)
            stop.regs.set_arg(path_arg, address)
            return rewritten()
        if kind == "error":
            return fail(what)
        if kind == "file":
            return file_ok(what) if file_ok else fail(errno.EBADF)
        return guest(what)

    def _result(self, stop: Stop, r, out_arg: int | None = None, limit: int | None = None,
                mutation: bool = False) -> Outcome:
        """Copy a guest call's first output to the program and answer its result."""
        if mutation:
            self.fs.changed()
        if r.value is None:
            return fail(errno.EIO)
        if r.value >= 0 and out_arg is not None and r.outputs:
            data = r.outputs[0] if limit is None else r.outputs[0][:limit]
            if stop.arg(out_arg) and not stop.put(stop.arg(out_arg), data):
                return fail(errno.EFAULT)
        return answer(r.value)

    def _copy_out(self, stop: Stop, out_arg: int | None, result: tuple[int, bytes]) -> Outcome:
        """Answer a cached (result, output): the output goes to the program's buffer."""
        err, data = result
        if err >= 0 and out_arg is not None and data and not stop.put(stop.arg(out_arg), data):
            return fail(errno.EFAULT)
        return answer(err)

    def _mutate(self, stop: Stop, name: str, *args, umask: bool = False) -> Outcome:
        """A call that changes the guest (with the program's umask where it creates)."""
        self.fs.changed()
        call = GuestCall(name, list(args))
        if not umask:
            return self._result(stop, self.fs.run([call])[0], mutation=True)
        results = self.fs.run([GuestCall("umask", [value(stop.proc.umask)]), call,
                               GuestCall("umask", [result_of(0)])])
        return self._result(stop, results[1], mutation=True)

    # -- opening ----------------------------------------------------------------------------
    def sys_open(self, stop: Stop) -> Outcome:
        return self._open(stop, AT_FDCWD, 0, stop.arg(1), stop.arg(2))

    def sys_creat(self, stop: Stop) -> Outcome:
        return self._open(stop, AT_FDCWD, 0, os.O_WRONLY | O_CREAT | os.O_TRUNC, stop.arg(1))

    def sys_openat(self, stop: Stop) -> Outcome:
        return self._open(stop, stop.sarg(0), 1, stop.arg(2), stop.arg(3))

    def sys_openat2(self, stop: Stop) -> Outcome:
        how = stop.read(stop.arg(2), 24)
        if how is None:
            return fail(errno.EFAULT)
        flags, mode, resolve = struct.unpack("<QQQ", how)
        if resolve:
            return fail(errno.ENOSYS)  # callers fall back to openat
        return self._open(stop, stop.sarg(0), 1, flags, mode)

    def _open(self, stop: Stop, dirfd: int, path_arg: int, flags: int, mode: int) -> Outcome:
        flags &= 0xFFFFFFFF
        return self._path_call(stop, dirfd, path_arg,
                               lambda p: self._open_guest(stop, p, path_arg, flags, mode))

    def _open_guest(self, stop: Stop, path: bytes, path_arg: int, flags: int,
                    mode: int) -> Outcome:
        umask = stop.proc.umask if flags & O_CREAT else None
        opened = self.fs.open(path, flags, mode & 0o7777, umask)
        if opened.result < 0:
            return answer(opened.result)
        is_dir = opened.is_dir
        f = GuestFile(path, flags, opened, kind="dir" if is_dir else "file",
                      writable=not is_dir and flags & 3 != 0 and not flags & O_PATH,
                      append=bool(flags & O_APPEND))
        if is_dir and not flags & O_PATH:
            listing = self.fs.listdir(path)
            if listing.result < 0:
                return answer(listing.result)
            f.entries = listing.entries
        return self._install(stop, f, path_arg, bool(flags & O_CLOEXEC))

    def _install(self, stop: Stop, f: GuestFile, name_arg: int | None, cloexec: bool,
                 name_address: int = 0) -> Outcome:
        """Turn the call into memfd_create(name, flags): the placeholder gets the very
        descriptor number the program's kernel picks."""
        regs = stop.regs
        if name_arg is not None:
            name = stop.string(name_arg) or b""
            name_address = stop.arg(name_arg) + max(0, len(name) - 200)  # at most 249
        regs.orig_rax = NUMBERS["memfd_create"]
        regs.rdi = name_address
        regs.rsi = MFD_CLOEXEC if cloexec else 0
        pid, proc = stop.pid, stop.proc

        def after(fd: int) -> int | None:
            if fd < 0:
                return None
            try:
                memfd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
                f.attach(memfd, self.fs)
            except OSError as exc:
                f.close()
                return -(exc.errno or errno.EIO)
            self.files.add(f)
            self._release(proc.fds.set(fd, f, cloexec))
            return None

        return rewritten(after)

    def _release(self, f: GuestFile | None) -> int:
        """A file no descriptor names any more: write it back and let it go."""
        if f is None:
            return 0
        if f.kind == "socket" and f.sock in self.sockets:
            self.sockets.discard(f.sock)
            self.fs.run([GuestCall("close", [value(f.sock)])])
        err = f.flush(self.fs)
        f.close()
        self.files.discard(f)
        return err

    def flush_all(self) -> None:
        for f in list(self.files):
            if f.dirty():
                f.flush(self.fs)

    # -- descriptors ------------------------------------------------------------------------
    def sys_close(self, stop: Stop) -> Outcome:
        fds = stop.proc.fds
        fd = stop.sarg(0)
        if fds.get(fd) is None:
            return native()
        err = self._release(fds.remove(fd))
        return rewritten(lambda r: err if err and r == 0 else None)

    def sys_dup(self, stop: Stop) -> Outcome:
        return self._dup(stop, stop.sarg(0), None, False)

    def sys_dup2(self, stop: Stop) -> Outcome:
        return self._dup(stop, stop.sarg(0), stop.sarg(1), False)

    def sys_dup3(self, stop: Stop) -> Outcome:
        return self._dup(stop, stop.sarg(0), stop.sarg(1), bool(stop.arg(2) & O_CLOEXEC))

    def _dup(self, stop: Stop, old: int, new: int | None, cloexec: bool) -> Outcome:
        fds = stop.proc.fds
        f = fds.get(old)
        if f is None and (new is None or fds.get(new) is None):
            return native()

        def after(fd: int) -> None:
            if fd < 0:
                return
            if f is not None:
                self._release(fds.set(fd, f, cloexec))
            else:
                self._release(fds.remove(fd))

        return rewritten(after)

    def sys_fcntl(self, stop: Stop) -> Outcome:
        fds = stop.proc.fds
        f = fds.get(stop.sarg(0))
        cmd = stop.sarg(1)
        if f is None:
            return native()
        if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
            def after(fd: int) -> None:
                if fd >= 0:
                    self._release(fds.set(fd, f, cmd == F_DUPFD_CLOEXEC))
            return rewritten(after)
        if cmd == F_SETFD:
            d = fds.entries.get(stop.sarg(0))
            if d:
                d.cloexec = bool(stop.arg(2) & 1)
        return native()

    def sys_read(self, stop: Stop) -> Outcome:
        return self._read(stop, stop.arg(2), None)

    def sys_pread64(self, stop: Stop) -> Outcome:
        return self._read(stop, stop.arg(2), stop.arg(3))

    def sys_readv(self, stop: Stop) -> Outcome:
        return self._read(stop, self._iov_size(stop), None)

    def sys_preadv(self, stop: Stop) -> Outcome:
        return self._read(stop, self._iov_size(stop), stop.arg(3))

    def sys_preadv2(self, stop: Stop) -> Outcome:
        offset = stop.arg(3)
        return self._read(stop, self._iov_size(stop), None if offset == 2**64 - 1 else offset)

    def _iov_size(self, stop: Stop) -> int:
        count = min(stop.arg(2), MAX_IOV)
        raw = stop.read(stop.arg(1), 16 * count) or b""
        return sum(struct.unpack_from("<QQ", raw, 16 * i)[1] for i in range(len(raw) // 16))

    def _read(self, stop: Stop, count: int, offset: int | None) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        if f is None:
            return native()
        if f.kind == "socket":
            if stop.nr != NUMBERS["read"]:
                return fail(errno.EINVAL)
            n, data, _ = self._recv(stop, count, 0, 0)
            if n >= 0 and not stop.put(stop.arg(1), data[:count]):
                return fail(errno.EFAULT)
            return answer(n)
        if f.kind == "dir":
            return fail(errno.EISDIR)
        if not f.complete:
            if offset is None:
                f.ensure(self.fs, f.lower, f.upper + count)
                f.upper += count
            else:
                f.ensure(self.fs, offset, offset + count)
        return native()

    def sys_lseek(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        if f is None:
            return native()
        offset, whence = _signed64(stop.arg(1)), stop.sarg(2)
        if f.kind == "dir":
            return self._seek_dir(f, offset, whence)
        if whence == SEEK_SET:
            f.lower = f.upper = offset
        elif whence == SEEK_CUR:
            f.lower, f.upper = max(0, f.lower + offset), f.upper + offset
        elif whence == SEEK_END:
            f.lower = f.upper = f.size + offset
        else:
            f.ensure(self.fs, 0, f.size)
        return native()

    def _seek_dir(self, f: GuestFile, offset: int, whence: int) -> Outcome:
        if whence == SEEK_CUR and offset == 0:
            return answer(f.entries[f.dir_pos - 1].offset if f.dir_pos else 0)
        if whence != SEEK_SET:
            return fail(errno.EINVAL)
        if offset == 0:
            f.dir_pos = 0
            return answer(0)
        for i, e in enumerate(f.entries):
            if e.offset == offset:
                f.dir_pos = i + 1
                return answer(offset)
        f.dir_pos = len(f.entries)
        return answer(offset)

    def sys_getdents64(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        if f is None:
            return native()
        if f.kind != "dir":
            return fail(errno.ENOTDIR)
        count = stop.arg(2)
        out = bytearray()
        while f.dir_pos < len(f.entries):
            record = f.entries[f.dir_pos].record
            if len(out) + len(record) > count:
                break
            out += record
            f.dir_pos += 1
        if not out and f.dir_pos < len(f.entries):
            return fail(errno.EINVAL)
        if out and not stop.put(stop.arg(1), bytes(out)):
            return fail(errno.EFAULT)
        return answer(len(out))

    def sys_getdents(self, stop: Stop) -> Outcome:
        return fail(errno.ENOSYS) if stop.proc.fds.get(stop.sarg(0)) else native()

    def sys_mmap(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(4))
        if f is None:
            return native()
        if f.kind == "dir":
            return fail(errno.ENODEV)
        f.ensure(self.fs, stop.arg(5), stop.arg(5) + stop.arg(1))
        return native()

    def _whole_inputs(self, stop: Stop, *fd_args: int) -> Outcome:
        for i in fd_args:
            f = stop.proc.fds.get(stop.sarg(i))
            if f is not None:
                if f.kind == "dir":
                    return fail(errno.EISDIR)
                f.ensure(self.fs, 0, f.size)
        return native()

    def sys_sendfile(self, stop: Stop) -> Outcome:
        return self._whole_inputs(stop, 1)

    def sys_copy_file_range(self, stop: Stop) -> Outcome:
        return self._whole_inputs(stop, 0)

    def sys_splice(self, stop: Stop) -> Outcome:
        return self._whole_inputs(stop, 0)

    def sys_tee(self, stop: Stop) -> Outcome:
        return self._whole_inputs(stop, 0)

    def sys_ioctl(self, stop: Stop) -> Outcome:
        """Interface ioctls (struct ifreq) on guest sockets; nothing else on guest files."""
        f = stop.proc.fds.get(stop.sarg(0))
        if f is None:
            return native()
        request = stop.arg(1) & 0xFFFFFFFF
        if f.kind != "socket" or not SIOC_FIRST <= request <= SIOC_LAST \
                or request == SIOCGIFCONF:
            return fail(errno.ENOTTY if f.kind != "socket" else errno.EINVAL)
        ifreq = stop.read(stop.arg(2), IFREQ)
        if ifreq is None:
            return fail(errno.EFAULT)
        r = self._sock_call(stop, "ioctl", value(request), data_inout(ifreq))
        if r.value == 0 and not stop.put(stop.arg(2), r.outputs[0]):
            return fail(errno.EFAULT)
        return answer(r.value if r.value is not None else -errno.EIO)

    def sys_fsync(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        return answer(f.flush(self.fs)) if f else native()

    sys_fdatasync = sys_fsync

    def sys_syncfs(self, stop: Stop) -> Outcome:
        self.flush_all()
        return answer(0) if stop.proc.fds.get(stop.sarg(0)) else native()

    def sys_ftruncate(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        if f is None:
            return native()
        return native() if f.writable else fail(errno.EINVAL)

    def sys_fchdir(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        if f is None:
            return native()
        if f.kind != "dir":
            return fail(errno.ENOTDIR)
        stop.proc.cwd = lexical(f.path)
        return answer(0)

    # -- stat -------------------------------------------------------------------------------
    def _fresh(self, f: GuestFile) -> None:
        if f.dirty():
            f.flush(self.fs)

    def _stat_out(self, stop: Stop, out_arg: int, result: tuple[int, bytes]) -> Outcome:
        err, raw = result
        if err < 0:
            return answer(err)
        return answer(0) if stop.put(stop.arg(out_arg), raw) else fail(errno.EFAULT)

    def _fstat_file(self, stop: Stop, f: GuestFile, out_arg: int, kind="newfstatat",
                    flags=0, mask=0) -> Outcome:
        if f.writable or kind == "statx":
            self._fresh(f)
            return self._stat_out(stop, out_arg, self.fs.stat(f.path, kind, flags, mask))
        return self._stat_out(stop, out_arg, (0, f.opened.stat[:STAT_SIZE]))

    def sys_stat(self, stop: Stop) -> Outcome:
        return self._path_call(stop, AT_FDCWD, 0,
                               lambda p: self._stat_out(stop, 1, self.fs.stat(p)))

    def sys_lstat(self, stop: Stop) -> Outcome:
        return self._path_call(stop, AT_FDCWD, 0, lambda p: self._stat_out(
            stop, 1, self.fs.stat(p, flags=AT_SYMLINK_NOFOLLOW)))

    def sys_fstat(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        return self._fstat_file(stop, f, 1) if f else native()

    def sys_newfstatat(self, stop: Stop) -> Outcome:
        flags = stop.arg(3) & 0xFFFFFFFF
        guest_flags = flags & ~AT_EMPTY_PATH
        return self._path_call(
            stop, stop.sarg(0), 1,
            lambda p: self._stat_out(stop, 2, self.fs.stat(p, flags=guest_flags)),
            empty_ok=bool(flags & AT_EMPTY_PATH),
            file_ok=lambda f: self._fstat_file(stop, f, 2))

    def sys_statx(self, stop: Stop) -> Outcome:
        flags, mask = stop.arg(2) & 0xFFFFFFFF, stop.arg(3) & 0xFFFFFFFF
        guest_flags = flags & ~AT_EMPTY_PATH
        return self._path_call(
            stop, stop.sarg(0), 1,
            lambda p: self._stat_out(stop, 4, self.fs.stat(p, "statx", guest_flags, mask)),
            empty_ok=bool(flags & AT_EMPTY_PATH),
            file_ok=lambda f: self._fstat_file(stop, f, 4, "statx", guest_flags, mask))

    def _statfs(self, stop: Stop, path: bytes, out_arg: int) -> Outcome:
        return self._stat_out(stop, out_arg,
                              self.fs.path_call("statfs", [PATH, buffer_out(STATFS)], path))

    def sys_statfs(self, stop: Stop) -> Outcome:
        return self._path_call(stop, AT_FDCWD, 0, lambda p: self._statfs(stop, p, 1))

    def sys_fstatfs(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        return self._statfs(stop, f.path, 1) if f else native()

    def _access(self, stop: Stop, dirfd: int, path_arg: int, mode: int, flags: int):
        name = "faccessat2" if flags else "faccessat"
        extra = [value(flags)] if flags else []
        return self._path_call(stop, dirfd, path_arg, lambda p: answer(self.fs.path_call(
            name, [value(AT_FDCWD), PATH, value(mode), *extra], p)[0]))

    def sys_access(self, stop: Stop) -> Outcome:
        return self._access(stop, AT_FDCWD, 0, stop.arg(1), 0)

    def sys_faccessat(self, stop: Stop) -> Outcome:
        return self._access(stop, stop.sarg(0), 1, stop.arg(2), 0)

    def sys_faccessat2(self, stop: Stop) -> Outcome:
        return self._access(stop, stop.sarg(0), 1, stop.arg(2), stop.arg(3) & 0xFFFFFFFF)

    def _readlink(self, stop: Stop, dirfd: int, path_arg: int, buf_arg: int, size: int):
        def guest(p: bytes) -> Outcome:
            err, target = self.fs.readlink(p)
            if err < 0:
                return answer(err)
            if size <= 0:
                return fail(errno.EINVAL)
            data = target[:size]
            return answer(len(data)) if stop.put(stop.arg(buf_arg), data) \
                else fail(errno.EFAULT)
        return self._path_call(stop, dirfd, path_arg, guest)

    def sys_readlink(self, stop: Stop) -> Outcome:
        return self._readlink(stop, AT_FDCWD, 0, 1, stop.sarg(2))

    def sys_readlinkat(self, stop: Stop) -> Outcome:
        return self._readlink(stop, stop.sarg(0), 1, 2, stop.sarg(3))

    # -- the working directory --------------------------------------------------------------
    def sys_getcwd(self, stop: Stop) -> Outcome:
        cwd = stop.proc.cwd + b"\0"
        if stop.arg(1) < len(cwd):
            return fail(errno.ERANGE)
        return answer(len(cwd)) if stop.put(stop.arg(0), cwd) else fail(errno.EFAULT)

    def sys_chdir(self, stop: Stop) -> Outcome:
        def guest(p: bytes) -> Outcome:
            err, raw = self.fs.stat(p)
            if err < 0:
                return answer(err)
            if stat_mode(raw) & S_IFMT != S_IFDIR:
                return fail(errno.ENOTDIR)
            r = self.fs.one("faccessat", value(AT_FDCWD), *path_in(p), value(1))
            if r.value:
                return answer(r.value or -errno.EIO)
            stop.proc.cwd = lexical(p)
            return answer(0)
        return self._path_call(stop, AT_FDCWD, 0, guest)

    # -- changes ----------------------------------------------------------------------------
    def _at(self, stop: Stop, dirfd: int, path_arg: int, name: str, *rest, umask=False,
            empty_ok=False, file_ok=None) -> Outcome:
        return self._path_call(stop, dirfd, path_arg, lambda p: self._mutate(
            stop, name, value(AT_FDCWD), *path_in(p), *rest, umask=umask),
            empty_ok=empty_ok, file_ok=file_ok)

    def sys_mkdir(self, stop: Stop) -> Outcome:
        return self._at(stop, AT_FDCWD, 0, "mkdirat", value(stop.arg(1)), umask=True)

    def sys_mkdirat(self, stop: Stop) -> Outcome:
        return self._at(stop, stop.sarg(0), 1, "mkdirat", value(stop.arg(2)), umask=True)

    def sys_mknod(self, stop: Stop) -> Outcome:
        return self._at(stop, AT_FDCWD, 0, "mknodat", value(stop.arg(1)), value(stop.arg(2)),
                        umask=True)

    def sys_mknodat(self, stop: Stop) -> Outcome:
        return self._at(stop, stop.sarg(0), 1, "mknodat", value(stop.arg(2)),
                        value(stop.arg(3)), umask=True)

    def sys_rmdir(self, stop: Stop) -> Outcome:
        return self._at(stop, AT_FDCWD, 0, "unlinkat", value(AT_REMOVEDIR))

    def sys_unlink(self, stop: Stop) -> Outcome:
        return self._at(stop, AT_FDCWD, 0, "unlinkat", value(0))

    def sys_unlinkat(self, stop: Stop) -> Outcome:
        return self._at(stop, stop.sarg(0), 1, "unlinkat", value(stop.arg(2)))

    def sys_chmod(self, stop: Stop) -> Outcome:
        return self._at(stop, AT_FDCWD, 0, "fchmodat", value(stop.arg(1)))

    def sys_fchmodat(self, stop: Stop) -> Outcome:
        return self._at(stop, stop.sarg(0), 1, "fchmodat", value(stop.arg(2)))

    def sys_fchmodat2(self, stop: Stop) -> Outcome:
        flags = stop.arg(3) & 0xFFFFFFFF
        return self._at(stop, stop.sarg(0), 1, "fchmodat2", value(stop.arg(2)), value(flags),
                        empty_ok=bool(flags & AT_EMPTY_PATH),
                        file_ok=lambda f: self._mutate(stop, "fchmodat", value(AT_FDCWD),
                                                       *path_in(f.path), value(stop.arg(2))))

    def sys_fchmod(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        return self._mutate(stop, "fchmodat", value(AT_FDCWD), *path_in(f.path),
                            value(stop.arg(1))) if f else native()

    def _chown(self, stop, dirfd, path_arg, uid, gid, flags) -> Outcome:
        return self._at(stop, dirfd, path_arg, "fchownat", value(uid), value(gid),
                        value(flags & ~AT_EMPTY_PATH), empty_ok=bool(flags & AT_EMPTY_PATH),
                        file_ok=lambda f: self._mutate(stop, "fchownat", value(AT_FDCWD),
                                                       *path_in(f.path), value(uid),
                                                       value(gid), value(0)))

    def sys_chown(self, stop: Stop) -> Outcome:
        return self._chown(stop, AT_FDCWD, 0, stop.arg(1), stop.arg(2), 0)

    def sys_lchown(self, stop: Stop) -> Outcome:
        return self._chown(stop, AT_FDCWD, 0, stop.arg(1), stop.arg(2), AT_SYMLINK_NOFOLLOW)

    def sys_fchownat(self, stop: Stop) -> Outcome:
        return self._chown(stop, stop.sarg(0), 1, stop.arg(2), stop.arg(3),
                           stop.arg(4) & 0xFFFFFFFF)

    def sys_fchown(self, stop: Stop) -> Outcome:
        f = stop.proc.fds.get(stop.sarg(0))
        return self._mutate(stop, "fchownat", value(AT_FDCWD), *path_in(f.path),
                            value(stop.arg(1)), value(stop.arg(2)), value(0)) if f else native()

    def sys_truncate(self, stop: Stop) -> Outcome:
        return self._path_call(stop, AT_FDCWD, 0, lambda p: self._mutate(
            stop, "truncate", *path_in(p), value(stop.arg(1))))

    def _times(self, stop: Stop, arg: int, size: int):
        if stop.arg(arg) == 0:
            return value(0)
        raw = stop.read(stop.arg(arg), size)
        return None if raw is None else data_in(raw)

    def sys_utimensat(self, stop: Stop) -> Outcome:
        times = self._times(stop, 2, 32)
        if times is None:
            return fail(errno.EFAULT)
        flags = stop.arg(3) & 0xFFFFFFFF
        if stop.arg(1) == 0:  # futimens(fd)
            f = stop.proc.fds.get(stop.sarg(0))
            if f is None:
                return native()
            self._fresh(f)
            return self._mutate(stop, "utimensat", value(AT_FDCWD), *path_in(f.path), times,
                                value(0))
        return self._at(stop, stop.sarg(0), 1, "utimensat", times, value(flags))

    def sys_utimes(self, stop: Stop) -> Outcome:
        times = self._times(stop, 1, 32)
        if times is None:
            return fail(errno.EFAULT)
        return self._path_call(stop, AT_FDCWD, 0,
                               lambda p: self._mutate(stop, "utimes", *path_in(p), times))

    def sys_utime(self, stop: Stop) -> Outcome:
        times = self._times(stop, 1, 16)
        if times is None:
            return fail(errno.EFAULT)
        return self._path_call(stop, AT_FDCWD, 0,
                               lambda p: self._mutate(stop, "utime", *path_in(p), times))

    def sys_futimesat(self, stop: Stop) -> Outcome:
        times = self._times(stop, 2, 32)
        if times is None:
            return fail(errno.EFAULT)
        return self._at(stop, stop.sarg(0), 1, "futimesat", times)

    def _two_paths(self, stop: Stop, d1: int, a1: int, d2: int, a2: int, name: str,
                   *rest, first_is_text: bool = False) -> Outcome:
        """rename, link, symlink: both paths must be the guest's (or EXDEV)."""
        if first_is_text:
            first = stop.string(a1)
            if first is None:
                return fail(errno.EFAULT)
            kind1, p1 = "guest", first
        else:
            kind1, p1 = self.where(stop, d1, stop.string(a1))
        kind2, p2 = self.where(stop, d2, stop.string(a2))
        for kind, what in ((kind1, p1), (kind2, p2)):
            if kind == "error":
                return fail(what)
        if kind1 == kind2 == "host":
            return native()
        if kind1 != "guest" or kind2 != "guest":
            return fail(errno.EXDEV)
        args = ([data_in(p1 + b"\0")] if first_is_text else [value(AT_FDCWD), *path_in(p1)])
        return self._mutate(stop, name, *args, value(AT_FDCWD), *path_in(p2), *rest)

    def sys_rename(self, stop: Stop) -> Outcome:
        return self._two_paths(stop, AT_FDCWD, 0, AT_FDCWD, 1, "renameat")

    def sys_renameat(self, stop: Stop) -> Outcome:
        return self._two_paths(stop, stop.sarg(0), 1, stop.sarg(2), 3, "renameat")

    def sys_renameat2(self, stop: Stop) -> Outcome:
        flags = stop.arg(4) & 0xFFFFFFFF
        if not flags:
            return self.sys_renameat(stop)
        return self._two_paths(stop, stop.sarg(0), 1, stop.sarg(2), 3, "renameat2",
                               value(flags))

    def sys_link(self, stop: Stop) -> Outcome:
        return self._two_paths(stop, AT_FDCWD, 0, AT_FDCWD, 1, "linkat", value(0))

    def sys_linkat(self, stop: Stop) -> Outcome:
        return self._two_paths(stop, stop.sarg(0), 1, stop.sarg(2), 3, "linkat",
                               value(stop.arg(4) & 0xFFFFFFFF))

    def sys_symlink(self, stop: Stop) -> Outcome:
        return self._two_paths(stop, 0, 0, AT_FDCWD, 1, "symlinkat", first_is_text=True)

    def sys_symlinkat(self, stop: Stop) -> Outcome:
        return self._two_paths(stop, 0, 0, stop.sarg(1), 2, "symlinkat", first_is_text=True)

    # -- extended attributes ----------------------------------------------------------------
    def _xattr_get(self, stop, path_arg, name_arg, buf_arg, size, follow, fd=None):
        call = "getxattr" if follow else "lgetxattr"
        attr = stop.string(name_arg, 256)
        if attr is None:
            return fail(errno.EFAULT)
        size = min(size, 1 << 16)

        def guest(p: bytes) -> Outcome:
            return self._copy_out(stop, buf_arg if size else None, self.fs.path_call(
                call, [PATH, data_in(attr + b"\0"), buffer_out(size), value(size)], p,
                trim=True))
        if fd is not None:
            f = stop.proc.fds.get(fd)
            return guest(f.path) if f else native()
        return self._path_call(stop, AT_FDCWD, path_arg, guest)

    def sys_getxattr(self, stop: Stop) -> Outcome:
        return self._xattr_get(stop, 0, 1, 2, stop.arg(3), True)

    def sys_lgetxattr(self, stop: Stop) -> Outcome:
        return self._xattr_get(stop, 0, 1, 2, stop.arg(3), False)

    def sys_fgetxattr(self, stop: Stop) -> Outcome:
        return self._xattr_get(stop, 0, 1, 2, stop.arg(3), True, fd=stop.sarg(0))

    def _xattr_list(self, stop, path_arg, follow, fd=None):
        call = "listxattr" if follow else "llistxattr"
        size = min(stop.arg(2), 1 << 16)

        def guest(p: bytes) -> Outcome:
            return self._copy_out(stop, 1 if size else None, self.fs.path_call(
                call, [PATH, buffer_out(size), value(size)], p, trim=True))
        if fd is not None:
            f = stop.proc.fds.get(fd)
            return guest(f.path) if f else native()
        return self._path_call(stop, AT_FDCWD, path_arg, guest)

    def sys_listxattr(self, stop: Stop) -> Outcome:
        return self._xattr_list(stop, 0, True)

    def sys_llistxattr(self, stop: Stop) -> Outcome:
        return self._xattr_list(stop, 0, False)

    def sys_flistxattr(self, stop: Stop) -> Outcome:
        return self._xattr_list(stop, 0, True, fd=stop.sarg(0))

    def _xattr_set(self, stop, call, fd=None):
        attr = stop.string(1, 256)
        size = min(stop.arg(3), 1 << 16)
        data = stop.read(stop.arg(2), size) if size else b""
        if attr is None or data is None:
            return fail(errno.EFAULT)
        args = [data_in(attr + b"\0"), data_in(data), value(size), value(stop.arg(4))]
        if fd is not None:
            f = stop.proc.fds.get(fd)
            return self._mutate(stop, "setxattr", *path_in(f.path), *args) if f else native()
        return self._path_call(stop, AT_FDCWD, 0,
                               lambda p: self._mutate(stop, call, *path_in(p), *args))

    def sys_setxattr(self, stop: Stop) -> Outcome:
        return self._xattr_set(stop, "setxattr")

    def sys_lsetxattr(self, stop: Stop) -> Outcome:
        return self._xattr_set(stop, "lsetxattr")

    def sys_fsetxattr(self, stop: Stop) -> Outcome:
        return self._xattr_set(stop, "setxattr", fd=stop.sarg(0))

    def _xattr_remove(self, stop, call, fd=None):
        attr = stop.string(1, 256)
        if attr is None:
            return fail(errno.EFAULT)
        if fd is not None:
            f = stop.proc.fds.get(fd)
            return self._mutate(stop, "removexattr", *path_in(f.path),
                                data_in(attr + b"\0")) if f else native()
        return self._path_call(stop, AT_FDCWD, 0, lambda p: self._mutate(
            stop, call, *path_in(p), data_in(attr + b"\0")))

    def sys_removexattr(self, stop: Stop) -> Outcome:
        return self._xattr_remove(stop, "removexattr")

    def sys_lremovexattr(self, stop: Stop) -> Outcome:
        return self._xattr_remove(stop, "lremovexattr")

    def sys_fremovexattr(self, stop: Stop) -> Outcome:
        return self._xattr_remove(stop, "removexattr", fd=stop.sarg(0))

    # -- programs ---------------------------------------------------------------------------
    def sys_execve(self, stop: Stop) -> Outcome:
        """Programs are always the host's; a host-tagged path loses its tag."""
        path = stop.string(0)
        if path is not None and hostpaths.untag(path) is not None:
            stop.regs.set_arg(0, stop.arg(0) + len(hostpaths.HOST_TAG))
            return rewritten()
        return native()

    def sys_execveat(self, stop: Stop) -> Outcome:
        path = stop.string(1)
        if path is not None and hostpaths.untag(path) is not None:
            stop.regs.set_arg(1, stop.arg(1) + len(hostpaths.HOST_TAG))
            return rewritten()
        return native()

    def sys_umask(self, stop: Stop) -> Outcome:
        old, stop.proc.umask = stop.proc.umask, stop.arg(0) & 0o777
        return answer(old)

    # -- identity ---------------------------------------------------------------------------
    IDENTITY = ("getuid", "geteuid", "getgid", "getegid")

    def _identity_calls(self) -> list[GuestCall]:
        calls = [GuestCall(n) for n in self.IDENTITY]
        calls.append(GuestCall("getgroups", [value(256), buffer_out(1024)]))
        calls.append(GuestCall("uname", [buffer_out(UTSNAME)]))
        return calls

    def _identity_results(self, results) -> None:
        self.creds = {n: results[i].value or 0 for i, n in enumerate(self.IDENTITY)}
        count = max(0, min(256, results[4].value or 0))
        self.groups = list(struct.unpack(f"<{count}I", results[4].outputs[0][:4 * count]))
        self.utsname = results[5].outputs[0]

    def _identity(self) -> dict[str, int]:
        if self.creds is None:
            self._identity_results(self.fs.run(self._identity_calls()))
        return self.creds

    def prefetch(self, requests: list[tuple]) -> None:
        """What the program asked first last time, and who we are in the guest: one run."""
        self._identity_results(self.fs.warm(requests, [self._identity_calls()])[0])

    def sys_getuid(self, stop: Stop) -> Outcome:
        return answer(self._identity()["getuid"])

    def sys_geteuid(self, stop: Stop) -> Outcome:
        return answer(self._identity()["geteuid"])

    def sys_getgid(self, stop: Stop) -> Outcome:
        return answer(self._identity()["getgid"])

    def sys_getegid(self, stop: Stop) -> Outcome:
        return answer(self._identity()["getegid"])

    def sys_getgroups(self, stop: Stop) -> Outcome:
        self._identity()
        size = stop.sarg(0)
        if size == 0:
            return answer(len(self.groups))
        if size < len(self.groups):
            return fail(errno.EINVAL)
        raw = struct.pack(f"<{len(self.groups)}I", *self.groups)
        return answer(len(self.groups)) if stop.put(stop.arg(1), raw) else fail(errno.EFAULT)

    def _resid(self, stop: Stop, real: str, effective: str) -> Outcome:
        ids = self._identity()
        for i, name in enumerate((real, effective, effective)):
            if not stop.put(stop.arg(i), struct.pack("<I", ids[name])):
                return fail(errno.EFAULT)
        return answer(0)

    def sys_getresuid(self, stop: Stop) -> Outcome:
        return self._resid(stop, "getuid", "geteuid")

    def sys_getresgid(self, stop: Stop) -> Outcome:
        return self._resid(stop, "getgid", "getegid")

    def sys_uname(self, stop: Stop) -> Outcome:
        self._identity()
        return answer(0) if stop.put(stop.arg(0), self.utsname or b"") else fail(errno.EFAULT)

    def sys_sysinfo(self, stop: Stop) -> Outcome:
        return self._result(stop, self.fs.one("sysinfo", buffer_out(SYSINFO)), 0)

    def _set_name(self, stop: Stop, call: str) -> Outcome:
        size = min(stop.arg(1), 64)
        name = stop.read(stop.arg(0), size)
        if name is None:
            return fail(errno.EFAULT)
        self.utsname = None
        self.creds = None
        return self._mutate(stop, call, data_in(name), value(size))

    def sys_sethostname(self, stop: Stop) -> Outcome:
        return self._set_name(stop, "sethostname")

    def sys_setdomainname(self, stop: Stop) -> Outcome:
        return self._set_name(stop, "setdomainname")

    def sys_syslog(self, stop: Stop) -> Outcome:
        kind, size = stop.sarg(0), max(0, min(stop.sarg(2), 1 << 20))
        if kind in (2, 3, 4):  # the reading actions
            r = self.fs.one("syslog", value(kind), buffer_out(size), value(size), trim=True)
            return self._result(stop, r, 1)
        return self._mutate(stop, "syslog", value(kind), value(0), value(size))

    # -- signals ----------------------------------------------------------------------------
    def _signal(self, stop: Stop, target: int, call: str, *args) -> Outcome:
        if target in self.traced or target == 0 or (target < -1 and -target == self.pgid):
            return native()
        if target == -1 or abs(target) == self.helper_pid:
            return fail(errno.EPERM)  # it would end the guest thread that does our work
        return self._mutate(stop, call, *args)

    def sys_kill(self, stop: Stop) -> Outcome:
        pid = stop.sarg(0)
        return self._signal(stop, pid, "kill", value(pid), value(stop.arg(1)))

    def sys_tkill(self, stop: Stop) -> Outcome:
        tid = stop.sarg(0)
        return self._signal(stop, tid, "tkill", value(tid), value(stop.arg(1)))

    def sys_tgkill(self, stop: Stop) -> Outcome:
        tgid = stop.sarg(0)
        return self._signal(stop, tgid, "tgkill", value(tgid), value(stop.arg(1)),
                            value(stop.arg(2)))

    def sys_rt_sigqueueinfo(self, stop: Stop) -> Outcome:
        pid = stop.sarg(0)
        info = stop.read(stop.arg(2), 128)
        if info is None:
            return fail(errno.EFAULT)
        return self._signal(stop, pid, "rt_sigqueueinfo", value(pid), value(stop.arg(1)),
                            data_in(info))

    def sys_pidfd_open(self, stop: Stop) -> Outcome:
        return native() if stop.sarg(0) in self.traced else fail(errno.ENOSYS)

    def sys_pidfd_send_signal(self, stop: Stop) -> Outcome:
        return native()

    # -- what is not redirected -------------------------------------------------------------
    # -- sockets: created in the guest, each call marshalled --------------------------------
    def sys_socket(self, stop: Stop) -> Outcome:
        """Sockets are the guest's (netlink for `ip` and `ss`, datagram ioctls); local
        (AF_UNIX) ones would reach host daemons, and are refused."""
        domain, kind, proto = stop.sarg(0), stop.sarg(1), stop.sarg(2)
        if domain == AF_UNIX:
            return fail(errno.EAFNOSUPPORT)
        self.fs.changed()
        results = self.fs.run([
            GuestCall("socket", [value(domain), value(kind | SOCK_CLOEXEC), value(proto)],
                      stop_on_error=True),
            GuestCall("setsockopt", [result_of(0), value(SOL_SOCKET), value(SO_RCVTIMEO),
                                     data_in(struct.pack("<qq", RECV_TIMEOUT, 0)), value(16)]),
        ])
        sock = results[0].value
        if sock is None or sock < 0:
            return answer(sock if sock is not None else -errno.EIO)
        self.sockets.add(sock)
        f = GuestFile(b"socket:[guest]", 2, Opened(0), kind="socket", sock=sock,
                      sock_family=domain)
        name = stop.place(b"cloudvmi-socket\0")
        if name is None:
            return fail(errno.EFAULT)
        return self._install(stop, f, None, bool(kind & SOCK_CLOEXEC), name)

    def _socket(self, stop: Stop) -> GuestFile | None:
        f = stop.proc.fds.get(stop.sarg(0))
        return f if f is not None and f.kind == "socket" else None

    def _sock_call(self, stop: Stop, name: str, *args, trim: bool = False):
        f = self._socket(stop)
        self.fs.changed()
        return self.fs.run([GuestCall(name, [value(f.sock), *args], trim=trim)])[0]

    def _bytes_at(self, stop: Stop, arg: int, size: int):
        if not stop.arg(arg) or not size:
            return value(0)
        raw = stop.read(stop.arg(arg), min(size, MAX_SOCK_DATA))
        return None if raw is None else data_in(raw)

    def _address_call(self, stop: Stop, name: str) -> Outcome:
        if self._socket(stop) is None:
            return native()
        addr = self._bytes_at(stop, 1, stop.arg(2) & 0xFFFFFFFF)
        if addr is None:
            return fail(errno.EFAULT)
        return self._result(stop, self._sock_call(stop, name, addr, value(stop.arg(2))))

    def sys_bind(self, stop: Stop) -> Outcome:
        return self._address_call(stop, "bind")

    def sys_connect(self, stop: Stop) -> Outcome:
        return self._address_call(stop, "connect")

    def _name_call(self, stop: Stop, name: str) -> Outcome:
        """getsockname, getpeername: an address and its in/out length."""
        if self._socket(stop) is None:
            return native()
        size_raw = stop.read(stop.arg(2), 4)
        if size_raw is None:
            return fail(errno.EFAULT)
        size = min(struct.unpack("<I", size_raw)[0], 256)
        r = self._sock_call(stop, name, buffer_out(size), data_inout(size_raw))
        if r.value == 0:
            got = struct.unpack("<I", r.outputs[1])[0]
            if not (stop.put(stop.arg(1), r.outputs[0][:min(size, got)])
                    and stop.put(stop.arg(2), r.outputs[1])):
                return fail(errno.EFAULT)
        return answer(r.value if r.value is not None else -errno.EIO)

    def sys_getsockname(self, stop: Stop) -> Outcome:
        return self._name_call(stop, "getsockname")

    def sys_getpeername(self, stop: Stop) -> Outcome:
        return self._name_call(stop, "getpeername")

    def sys_setsockopt(self, stop: Stop) -> Outcome:
        if self._socket(stop) is None:
            return native()
        data = self._bytes_at(stop, 3, stop.arg(4) & 0xFFFFFFFF)
        if data is None:
            return fail(errno.EFAULT)
        return self._result(stop, self._sock_call(stop, "setsockopt", value(stop.arg(1)),
                                                  value(stop.arg(2)), data,
                                                  value(stop.arg(4))))

    def sys_getsockopt(self, stop: Stop) -> Outcome:
        if self._socket(stop) is None:
            return native()
        size_raw = stop.read(stop.arg(4), 4)
        if size_raw is None:
            return fail(errno.EFAULT)
        size = min(struct.unpack("<I", size_raw)[0], 4096)
        r = self._sock_call(stop, "getsockopt", value(stop.arg(1)), value(stop.arg(2)),
                            buffer_out(size), data_inout(size_raw))
        if r.value == 0:
            got = struct.unpack("<I", r.outputs[1])[0]
            if not (stop.put(stop.arg(3), r.outputs[0][:min(size, got)])
                    and stop.put(stop.arg(4), r.outputs[1])):
                return fail(errno.EFAULT)
        return answer(r.value if r.value is not None else -errno.EIO)

    def sys_shutdown(self, stop: Stop) -> Outcome:
        if self._socket(stop) is None:
            return native()
        return self._result(stop, self._sock_call(stop, "shutdown", value(stop.arg(1))))

    def sys_sendto(self, stop: Stop) -> Outcome:
        if self._socket(stop) is None:
            return native()
        data = self._bytes_at(stop, 1, stop.arg(2))
        addr = self._bytes_at(stop, 4, stop.arg(5) & 0xFFFFFFFF)
        if data is None or addr is None:
            return fail(errno.EFAULT)
        length = len(data.data) if data.kind == "input" else 0
        return self._result(stop, self._sock_call(stop, "sendto", data, value(length),
                                                  value(stop.arg(3)), addr,
                                                  value(stop.arg(5) if addr.kind == "input"
                                                        else 0)))

    def sys_write(self, stop: Stop) -> Outcome:
        if self._socket(stop) is None:
            return native()  # a guest file's placeholder takes it; written back later
        data = self._bytes_at(stop, 1, stop.arg(2))
        if data is None:
            return fail(errno.EFAULT)
        return self._result(stop, self._sock_call(stop, "sendto", data, value(stop.arg(2)),
                                                  value(0), value(0), value(0)))

    def sys_writev(self, stop: Stop) -> Outcome:
        if self._socket(stop) is None:
            return native()
        data = self._gather(stop, stop.arg(1), stop.arg(2))
        if data is None:
            return fail(errno.EFAULT)
        return self._result(stop, self._sock_call(stop, "sendto", data_in(data),
                                                  value(len(data)), value(0), value(0),
                                                  value(0)))

    def sys_sendmsg(self, stop: Stop) -> Outcome:
        """The message's pieces, gathered into one sendto (control data is not carried)."""
        if self._socket(stop) is None:
            return native()
        msg = stop.read(stop.arg(1), 56)
        if msg is None:
            return fail(errno.EFAULT)
        name, namelen, iov, iovlen = struct.unpack_from("<QI4xQQ", msg)
        data = self._gather(stop, iov, iovlen)
        if data is None:
            return fail(errno.EFAULT)
        addr = value(0)
        if name and namelen:
            raw = stop.read(name, min(namelen, 128))
            if raw is None:
                return fail(errno.EFAULT)
            addr = data_in(raw)
        return self._result(stop, self._sock_call(
            stop, "sendto", data_in(data), value(len(data)), value(stop.arg(2)), addr,
            value(len(addr.data) if addr.kind == "input" else 0)))

    def _iovecs(self, stop: Stop, iov: int, count: int) -> list[tuple[int, int]] | None:
        raw = stop.read(iov, 16 * min(count, MAX_IOV)) if count else b""
        if raw is None:
            return None
        return [struct.unpack_from("<QQ", raw, 16 * i) for i in range(len(raw) // 16)]

    def _gather(self, stop: Stop, iov: int, count: int) -> bytes | None:
        out = bytearray()
        for base, length in self._iovecs(stop, iov, count) or []:
            part = stop.read(base, min(length, MAX_SOCK_DATA - len(out)))
            if part is None:
                return None
            out += part
        return bytes(out)

    def _recv(self, stop: Stop, size: int, flags: int, want_name: int):
        """recvfrom in the guest: (result, data, address bytes)."""
        size = min(size, MAX_SOCK_DATA)
        name_args = [buffer_out(want_name), data_inout(struct.pack("<I", want_name))] \
            if want_name else [value(0), value(0)]
        r = self._sock_call(stop, "recvfrom", buffer_out(size), value(size), value(flags),
                            *name_args, trim=True)
        if r.value is None or r.value < 0:
            return (r.value if r.value is not None else -errno.EIO), b"", b""
        name = b""
        if want_name:
            got = struct.unpack("<I", r.outputs[2])[0]
            name = r.outputs[1][:min(got, want_name)]
        return r.value, r.outputs[0], name

    def sys_recvfrom(self, stop: Stop) -> Outcome:
        if self._socket(stop) is None:
            return native()
        want = 0
        if stop.arg(4) and stop.arg(5):
            raw = stop.read(stop.arg(5), 4)
            if raw is None:
                return fail(errno.EFAULT)
            want = min(struct.unpack("<I", raw)[0], 128)
        n, data, name = self._recv(stop, stop.arg(2), stop.sarg(3), want)
        if n < 0:
            return answer(n)
        if not stop.put(stop.arg(1), data[:stop.arg(2)]):
            return fail(errno.EFAULT)
        if want and not (stop.put(stop.arg(4), name)
                         and stop.put(stop.arg(5), struct.pack("<I", len(name)))):
            return fail(errno.EFAULT)
        return answer(n)

    def sys_recvmsg(self, stop: Stop) -> Outcome:
        """One recvfrom into the guest, scattered over the program's iovecs."""
        if self._socket(stop) is None:
            return native()
        msg = stop.read(stop.arg(1), 56)
        if msg is None:
            return fail(errno.EFAULT)
        name, namelen, iov, iovlen = struct.unpack_from("<QI4xQQ", msg)
        vecs = self._iovecs(stop, iov, iovlen)
        if vecs is None:
            return fail(errno.EFAULT)
        total = sum(length for _, length in vecs)
        n, data, addr = self._recv(stop, total, stop.sarg(2),
                                   min(namelen, 128) if name else 0)
        if n < 0:
            return answer(n)
        pos = 0
        for base, length in vecs:
            part = data[pos:pos + length]
            if part and not stop.put(base, part):
                return fail(errno.EFAULT)
            pos += len(part)
        flags = MSG_TRUNC if n > total else 0
        if name and not stop.put(name, addr):
            return fail(errno.EFAULT)
        # msg_namelen, msg_controllen = 0, msg_flags
        if not (stop.put(stop.arg(1) + 8, struct.pack("<I", len(addr) if name else 0))
                and stop.put(stop.arg(1) + 40, struct.pack("<Q", 0))
                and stop.put(stop.arg(1) + 48, struct.pack("<I", flags))):
            return fail(errno.EFAULT)
        return answer(n)

    def close_sockets(self) -> None:
        """The guest sockets the program left open (the helper must not keep them)."""
        if self.sockets:
            self.fs.run([GuestCall("close", [value(s)]) for s in sorted(self.sockets)])
            self.sockets.clear()

    def sys_socketpair(self, stop: Stop) -> Outcome:
        return native()

    def sys_inotify_add_watch(self, stop: Stop) -> Outcome:
        return fail(errno.ENOSYS)  # programs fall back to polling

    def sys_fanotify_mark(self, stop: Stop) -> Outcome:
        return fail(errno.ENOSYS)

    def sys_name_to_handle_at(self, stop: Stop) -> Outcome:
        return fail(errno.EOPNOTSUPP)

    def _refuse(self, stop: Stop) -> Outcome:
        """Calls that would change the host itself."""
        return fail(errno.EPERM)


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


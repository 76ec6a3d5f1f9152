"""Open file descriptors of every process, as /proc/PID/fd and /proc/PID/fdinfo show them,
rebuilt from each thread-group leader's descriptor table (task->files->fdt).

Paths follow the kernel's d_path(): a dentry whose operations name it (d_dname: sockets,
pipes, anonymous inodes, memfds, namespaces) gets that name, any other is the path from its
mount's root up across mount points, with " (deleted)" for an unlinked file. The d_dname
function is recognised by its address in kallsyms, so no version of the kernel is assumed.
"""

import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.btf import MemberNotFound
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.os.linux.views.common import Problems, ViewResult
from cloudvmi.os.linux.views.processes import (
    PF_KTHREAD,
    PathCache,
    TaskReader,
    find_task,
    task_addresses,
)

# Bounds on hostile descriptor tables (far above a real guest's).
MAX_FDS = 1 << 20  # slots of one table read at most: the kernel's default fs.nr_open
MAX_BAD_FDS = 64  # slots of one table that lead to no struct file before the rest is skipped
MAX_BAD_FILES = 1024  # such slots in one view call before the walk stops
MAX_OPEN_FILES = 1 << 21  # descriptors in one result
MAX_SLOTS = 1 << 24  # slots read in one call: tables that all claim MAX_FDS cannot add up
MAX_DENTRIES = 1 << 20  # dentries read in one call (paths share directories: far fewer)
MAX_NS_NAME = 32  # a namespace type's name ("net", "mnt", "pid_for_children", ...)
MAX_DMABUF_NAME = 64  # DMA_BUF_NAME_LEN
FD_CHUNK = 512  # descriptor slots read at once: one page of pointers
MAX_REASONS = 8  # reasons kept in a partial result's message

KIND_BY_MODE = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFSOCK: "socket",
                stat.S_IFIFO: "fifo", stat.S_IFCHR: "char", stat.S_IFBLK: "block",
                stat.S_IFLNK: "link"}


@dataclass
class OpenFile:
    pid: int
    fd: int
    path: str  # as `readlink /proc/PID/fd/FD` shows it
    flags: int  # as /proc/PID/fdinfo/FD "flags:" (octal there): f_flags, plus O_CLOEXEC
    pos: int  # f_pos
    inode: int  # i_ino (fdinfo "ino:"; the number in socket:[N] and pipe:[N])
    kind: str  # file, dir, socket, pipe, fifo, char, block, link, anon, ns, unknown
    mnt_id: int  # fdinfo "mnt_id:"
    address: int  # struct file
    private_data: int  # file->private_data: for a socket, its struct socket
    error: str | None = None  # what could not be read; the fields before it may be empty


# What one struct file gives every descriptor that holds it (processes share them after
# fork): path, f_flags, pos, inode, kind, mnt_id, private_data, error.
_Info = tuple[str, int, int, int, str, int, int, str | None]


def _socket_name(reader: "FileReader", d: dict, dentry: int, inode: dict) -> tuple[str, str]:
    return f"socket:[{inode['ino']}]", "socket"  # sockfs_dname


def _pipe_name(reader: "FileReader", d: dict, dentry: int, inode: dict) -> tuple[str, str]:
    return f"pipe:[{inode['ino']}]", "pipe"  # pipefs_dname


def _anon_name(reader: "FileReader", d: dict, dentry: int, inode: dict) -> tuple[str, str]:
    return "anon_inode:" + _decode(reader.tasks.name(d, dentry)), "anon"  # anon_inodefs_dname


def _pidfd_name(reader: "FileReader", d: dict, dentry: int, inode: dict) -> tuple[str, str]:
    return "anon_inode:[pidfd]", "anon"  # pidfs_dname keeps the old anon_inode name


def _simple_name(reader: "FileReader", d: dict, dentry: int, inode: dict) -> tuple[str, str]:
    # simple_dname: pseudo files never linked anywhere (memfd, aio rings)
    kind = KIND_BY_MODE.get(stat.S_IFMT(inode["mode"]), "unknown")
    return "/" + _decode(reader.tasks.name(d, dentry)) + " (deleted)", kind


def _ns_name(reader: "FileReader", d: dict, dentry: int, inode: dict) -> tuple[str, str]:
    # ns_dname: "<type>:[ino]", the type from inode->i_private (a struct ns_common)
    kernel = reader.tasks.kernel
    ops = reader.ns_common.read(kernel, inode["private"])["ops"]
    name = kernel.read_cstring(reader.ns_ops.read(kernel, ops)["name"], MAX_NS_NAME)
    return f"{_decode(name)}:[{inode['ino']}]", "ns"


def _dmabuf_name(reader: "FileReader", d: dict, dentry: int, inode: dict) -> tuple[str, str]:
    # dmabuffs_dname: "/<dentry name>:<buffer name>", the buffer is dentry->d_fsdata
    kernel = reader.tasks.kernel
    label = b""
    if reader.dma_buf is not None and d.get("fsdata"):
        pointer = reader.dma_buf.read(kernel, d["fsdata"])["name"]
        label = kernel.read_cstring(pointer, MAX_DMABUF_NAME) if pointer else b""
    return "/" + _decode(reader.tasks.name(d, dentry)) + ":" + _decode(label), "anon"


NAMERS: dict[str, Callable[..., tuple[str, str]]] = {
    "sockfs_dname": _socket_name, "pipefs_dname": _pipe_name,
    "anon_inodefs_dname": _anon_name, "pidfs_dname": _pidfd_name,
    "simple_dname": _simple_name, "ns_dname": _ns_name, "dmabuffs_dname": _dmabuf_name,
}


class _NotAFile(Exception):
    """A descriptor slot that leads to no consistent struct file (a wild pointer, garbage):
    counted against the table's budget, unlike a file whose path alone fails."""


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class FileReader:
    """Layouts of the descriptor table, inode and dentry operations for one kernel, built
    once; the file, dentry and mount layouts are TaskReader's (shared with `exe`)."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.tasks = kernel.helper(TaskReader)
        for record, needed in ((self.tasks.file, ("flags", "pos", "inode", "private", "fop")),
                               (self.tasks.dentry, ("op", "inode", "hash_pprev")),
                               (self.tasks.task, ("files",))):
            missing = [n for n in needed if n not in record]
            if missing:
                raise MemberNotFound(f"struct {record.struct.name} has no {missing}")
        # A small table lives inside files_struct (fdtab, fd_array, close_on_exec_init):
        # reading those too makes most processes' whole table one read.
        self.files = Record(btf, "files_struct", {
            "fdt": "fdt", "max_fds": "fdtab.max_fds", "fd": "fdtab.fd",
            "cloexec": "fdtab.close_on_exec", "fd_array": "fd_array",
            "cloexec_init": "close_on_exec_init",
        }, optional=("max_fds", "fd", "cloexec", "fd_array", "cloexec_init"))
        self.embedded = {name: self.files.offset(name)
                         for name in ("fd_array", "cloexec_init") if name in self.files}
        self.fdtab = (self.files.struct.offset("fdtab")
                      if {"max_fds", "fd", "cloexec"} <= self.files.names else None)
        self.fdtable = Record(btf, "fdtable", {"max_fds": "max_fds", "fd": "fd",
                                               "cloexec": "close_on_exec"})
        self.inode = Record(btf, "inode", {"ino": "i_ino", "mode": "i_mode",
                                           "private": "i_private"})
        self.d_dname = btf.struct("dentry_operations").offset("d_dname")
        self.ns_common = Record(btf, "ns_common", {"ops": "ops"})
        self.ns_ops = Record(btf, "proc_ns_operations", {"name": "name"})
        try:
            self.dma_buf: Record | None = Record(btf, "dma_buf", {"name": "name"})
        except (MemberNotFound, LookupError):
            self.dma_buf = None  # a kernel built without DMA buffers
        # d_dname functions by address: the kernel's own choice of name for a pseudo file.
        self.namers = {a: fn for sym, fn in NAMERS.items()
                       if (a := kernel.symbols.get(sym)) is not None}
        self.pointer_size = kernel.arch.pointer_size
        self.endian = kernel.arch.endian
        # fd[] is an array of pointers, close_on_exec one of unsigned longs (the same size)
        self.word = "Q" if self.pointer_size == 8 else "I"
        # The direct map over RAM, where slab objects (files, dentries, inodes) live.
        regions = kernel.phys.regions()
        self.direct_map = (kernel.direct_virt(min(r.start for r in regions)),
                           kernel.direct_virt(max(r.end for r in regions)))
        self.kernel_space = kernel.arch.kernel_space
        self.o_cloexec = kernel.arch.syscall.O_CLOEXEC

    def static(self, address: int) -> bool:
        """Operations tables (f_op) are constant data of the kernel image or a module: a
        kernel address outside the direct map, never a heap object."""
        return address >= self.kernel_space and not (
            self.direct_map[0] <= address < self.direct_map[1])

    def plausible(self, address: int) -> bool:
        """Slab objects (struct file, dentry, inode, mount) sit at aligned addresses of the
        direct map over RAM: a cheap check that keeps a table of garbage from costing a
        read per slot."""
        return self.direct_map[0] <= address < self.direct_map[1] and not address & 7


class _Scan(Problems):
    """One view call: what processes share (struct files after fork, directories, mounts,
    d_dname functions) is read once, and the problems met are collected."""

    def __init__(self, reader: FileReader, sockets_only: bool = False) -> None:
        super().__init__(MAX_REASONS)
        self.reader = reader
        self.kernel = reader.tasks.kernel
        self.paths = PathCache(reader.tasks)
        self.infos: dict[int, _Info] = {}
        self.dnames: dict[int, int] = {}
        self.sockets_only = sockets_only
        self.bad = 0
        self.count = 0
        self.slots = 0
        self.stopped = False  # a whole-call bound was hit

    # -- descriptor tables -------------------------------------------------------------------
    def table(self, pid: int, files: int) -> Iterator[tuple[int, int, bool]]:
        """(fd, struct file, close-on-exec) of each used slot, as /proc lists them: every
        non-NULL slot below max_fds (bounded, read a page of slots at a time)."""
        kernel, reader = self.kernel, self.reader
        fs = reader.files.read(kernel, files)
        if reader.fdtab is not None and fs["fdt"] == files + reader.fdtab:
            fdt = fs  # the table embedded in files_struct: no second read
        else:
            fdt = reader.fdtable.read(kernel, fs["fdt"])
        slots = fdt["max_fds"]
        if slots > MAX_FDS:
            self.problem(f"pid {pid}: fd table claims {slots} slots, read the first {MAX_FDS}")
            slots = MAX_FDS
        if self.slots + slots > MAX_SLOTS:
            self.problem(f"more than {MAX_SLOTS} descriptor slots: stopped at pid {pid}")
            self.stopped = True
            return
        self.slots += slots
        cloexec = self.bitmap(pid, fs, files, fdt["cloexec"], slots)
        size = reader.pointer_size
        per_word = 8 * size
        for first in range(0, slots, FD_CHUNK):
            n = min(FD_CHUNK, slots - first)
            try:
                raw = self.read(fs, files, fdt["fd"] + first * size, n * size)
            except GuestMemoryError as exc:
                self.problem(f"pid {pid}: fd array at slot {first}: {exc}")
                return
            for i, address in enumerate(struct.unpack(f"{reader.endian}{n}{reader.word}",
                                                      raw)):
                if address:
                    fd = first + i
                    yield fd, address, bool(cloexec and cloexec[fd // per_word]
                                            >> fd % per_word & 1)

    def read(self, fs: dict, files: int, address: int, size: int) -> bytes:
        """SIZE bytes at ADDRESS, sliced from the files_struct record FS (at FILES) when they
        are one of its embedded arrays, else read."""
        for name, offset in self.reader.embedded.items():
            if address == files + offset and size <= len(fs[name]):
                return fs[name][:size]
        return self.kernel.read(address, size)

    def bitmap(self, pid: int, fs: dict, files: int, address: int,
               bits: int) -> tuple[int, ...]:
        """The close_on_exec bitmap, as unsigned longs (none if it is unreadable: then no
        O_CLOEXEC is shown, and the result says why)."""
        reader = self.reader
        words = (bits + 8 * reader.pointer_size - 1) // (8 * reader.pointer_size)
        try:
            raw = self.read(fs, files, address, words * reader.pointer_size)
        except GuestMemoryError as exc:
            self.problem(f"pid {pid}: close_on_exec bitmap: {exc}")
            return ()
        return struct.unpack(f"{reader.endian}{words}{reader.word}", raw)

    def process(self, pid: int, files: int) -> Iterator[OpenFile]:
        """The descriptors of one process; a table that fails part way gives what it had,
        and one whose slots keep leading nowhere is given up (a hostile or torn table)."""
        bad = 0
        try:
            for fd, address, cloexec in self.table(pid, files):
                if self.count >= MAX_OPEN_FILES or len(self.paths.dentries) > MAX_DENTRIES:
                    self.problem(f"more than {MAX_OPEN_FILES} descriptors or {MAX_DENTRIES} "
                                 "dentries: stopped")
                    self.stopped = True
                    return
                info = self.infos.get(address)
                if info is None:
                    info, not_a_file = self.describe(address)
                    self.infos[address] = info
                    bad += not_a_file
                    self.bad += not_a_file
                if not self.sockets_only or info[4] == "socket":
                    path, flags, pos, ino, kind, mnt_id, private, error = info
                    if cloexec:
                        flags |= self.reader.o_cloexec
                    self.count += 1
                    yield OpenFile(pid, fd, path, flags, pos, ino, kind, mnt_id, address,
                                   private, error)
                if bad >= MAX_BAD_FDS:
                    self.problem(f"pid {pid}: {bad} slots are not files, rest of table skipped")
                    return
                if self.bad >= MAX_BAD_FILES:
                    self.problem(f"more than {MAX_BAD_FILES} slots are not files: stopped")
                    self.stopped = True
                    return
        except GuestMemoryError as exc:
            self.problem(f"pid {pid}: fd table: {exc}")

    # -- one struct file -----------------------------------------------------------------------
    def objects(self, address: int) -> tuple[dict, dict, dict, dict]:
        """The struct file at ADDRESS, its inode, dentry and mount, checked to hang together
        (f_inode is the dentry's inode, as the kernel sets it at open), else _NotAFile."""
        reader, kernel = self.reader, self.kernel
        if not reader.plausible(address):
            raise _NotAFile(f"file pointer {address:#x} is not an aligned address in the "
                            "direct map")
        try:
            f = reader.tasks.file.read(kernel, address)
            if not (all(map(reader.plausible, (f["inode"], f["dentry"], f["mnt"])))
                    and reader.static(f["fop"])):
                raise _NotAFile(f"file {address:#x}: its inode, dentry, mount or operations "
                                "pointer is not where the kernel keeps those")
            inode = reader.inode.read(kernel, f["inode"])
            d = self.paths.dentry(f["dentry"])
            mount = self.paths.mount(f["mnt"] - reader.tasks.mount_mnt)
        except GuestMemoryError as exc:
            raise _NotAFile(f"file {address:#x}: {exc}") from exc
        if d["inode"] != f["inode"]:
            raise _NotAFile(f"file {address:#x}: f_inode is not its dentry's inode")
        return f, inode, d, mount

    def describe(self, address: int) -> tuple[_Info, bool]:
        """What a struct file shows in /proc/PID/fd and fdinfo, and whether the slot led to
        no struct file at all. Never raises: what could not be read becomes the error."""
        try:
            f, inode, d, mount = self.objects(address)
        except _NotAFile as exc:
            return ("", 0, 0, 0, "unknown", 0, 0, str(exc)), True
        kind = KIND_BY_MODE.get(stat.S_IFMT(inode["mode"]), "unknown")
        path, error = "", None
        if not self.sockets_only or kind == "socket":  # the sockets helper needs no paths
            try:
                path, kind, error = self.path(f, d, inode, mount, kind)
            except GuestMemoryError as exc:
                error = f"path of file {address:#x}: {exc}"
        return (path, f["flags"], f["pos"], inode["ino"], kind, mount.get("id", 0),
                f["private"], error), False

    def path(self, f: dict, d: dict, inode: dict, mount: dict,
             kind: str) -> tuple[str, str, str | None]:
        """d_path(): the dentry's own name when its operations give one (unless it is a
        mounted pseudo root), else the path across mounts, " (deleted)" when unlinked.
        A d_dname this module does not know gives d_path's answer and says so."""
        dentry = f["dentry"]
        is_root = d["parent"] == dentry
        dname = self.dname(d["op"])
        unknown = None
        if dname and not (is_root and dentry == mount["root"]):
            namer = self.reader.namers.get(dname)
            if namer is not None:
                return (*namer(self.reader, d, dentry, inode), None)
            symbol = self.kernel.symbols.symbolize(dname)
            unknown = f"unknown d_dname {symbol[0] if symbol else hex(dname)}: path from d_path"
        path = self.reader.tasks.d_path(f["mnt"], dentry, self.paths)
        if not d["hash_pprev"] and not is_root:  # d_unlinked()
            path += " (deleted)"
        return path, kind, unknown

    def dname(self, d_op: int) -> int:
        """dentry->d_op->d_dname, read once per operations table."""
        if not d_op:
            return 0
        function = self.dnames.get(d_op)
        if function is None:
            function = self.dnames[d_op] = self.kernel.read_u64(d_op + self.reader.d_dname)
        return function


def _leaders(kernel: LinuxKernel, pid: int | None) -> tuple[list[dict], str | None]:
    """The task records of the processes to list (thread-group leaders: threads share their
    leader's table); kernel threads have no descriptors of their own."""
    reader = kernel.helper(TaskReader)
    if pid is not None:
        t = find_task(kernel, pid)
        if t is None:
            raise GuestMemoryError(f"no process {pid}")
        return [t], None
    addresses, partial = task_addresses(reader)
    tasks = []
    for address in addresses:
        try:
            tasks.append(reader.task.read(kernel, address))
        except GuestMemoryError as exc:
            partial = partial or f"task {address:#x}: {exc}"
    return tasks, partial


def open_files(kernel: LinuxKernel, pid: int | None = None,
               sockets_only: bool = False) -> ViewResult[OpenFile]:
    """The open descriptors of every process (or of PID), as the `files` view lists them;
    SOCKETS_ONLY keeps socket descriptors and skips rebuilding the paths of other files."""
    try:
        reader = kernel.helper(FileReader)
    except MemberNotFound as exc:
        return ViewResult(partial=f"descriptor tables not understood: {exc}")
    tasks, partial = _leaders(kernel, pid)
    scan = _Scan(reader, sockets_only)
    result: ViewResult[OpenFile] = ViewResult()
    for t in tasks:
        if t["pid"] == 0 or t["flags"] & PF_KTHREAD or not t["files"]:
            continue  # the idle task, kernel threads, and processes past exit_files()
        result.items.extend(scan.process(t["pid"], t["files"]))
        if scan.stopped:
            break
    reasons = [r for r in (partial, scan.partial) if r]
    result.partial = "; ".join(reasons) or None
    return result


def sockets_by_inode(kernel: LinuxKernel, pid: int | None = None) -> dict[int, list[OpenFile]]:
    """The descriptors of every socket, by inode number (the "inode" column of /proc/net/*
    and the N of socket:[N]): who holds a socket, for the sockets view. Each item has .pid,
    .fd, .path ('socket:[INODE]'), .inode, and .private_data (the struct socket)."""
    owners: dict[int, list[OpenFile]] = {}
    for item in open_files(kernel, pid, sockets_only=True).items:
        owners.setdefault(item.inode, []).append(item)
    return owners


@view(title="Open files of {vm}", columns=(
    Column("PID", "pid", True), Column("FD", "fd", True), Column("KIND", "kind"),
    Column("FLAGS", lambda f: f"0{f.flags:o}"), Column("POS", "pos", True),
    Column("INODE", "inode", True), Column("PATH", lambda f: f.path or f"({f.error})")),
    pid="Only this process.")
def files(kernel: LinuxKernel, pid: int | None = None) -> ViewResult[OpenFile]:
    """List the open file descriptors of every process (or of one), as /proc/PID/fd shows."""
    return open_files(kernel, pid)

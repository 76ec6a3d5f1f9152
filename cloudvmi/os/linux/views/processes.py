"""Processes and threads, rebuilt from the kernel's task list (init_task.tasks)."""

from dataclasses import dataclass, field

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record, cstring
from cloudvmi.os.linux.views.common import (
    MAX_CMDLINE,
    MAX_PATH_DEPTH,
    MAX_TASKS,
    ListWalkError,
    ViewResult,
    list_nodes,
)

PF_WQ_WORKER = 0x00000020
PF_KTHREAD = 0x00200000
STATE_LETTERS = "RSDTtXZPI"  # fs/proc/array.c task_state_array, by fls(state)
TASK_REPORT = 0x7F
TASK_IDLE = 0x402  # TASK_UNINTERRUPTIBLE | TASK_NOLOAD
# Shown as D although not reported bits: waiting on a PREEMPT_RT sleeping spinlock
# (TASK_RTLOCK_WAIT, 5.15+) or frozen (TASK_FROZEN, 6.1+); neither bit is used otherwise.
TASK_SHOWN_UNINTERRUPTIBLE = 0x1000 | 0x8000
NAME_MAX = 255  # longest name of one path component


@dataclass
class Thread:
    tid: int
    tgid: int
    comm: str
    state: str
    address: int


@dataclass
class Process:
    pid: int
    ppid: int
    uid: int
    gid: int
    euid: int
    comm: str  # as /proc shows it (kernel threads' full names, workqueue descriptions)
    state: str
    start_time: float  # seconds since boot
    kernel_thread: bool
    cmdline: list[str]  # empty for kernel threads
    exe: str | None
    threads: int
    address: int  # task_struct
    errors: list[str] = field(default_factory=list)  # parts that could not be read


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def state_letter(state: int, exit_state: int) -> str:
    """The one-letter state /proc shows, from __state and exit_state."""
    value = (state | exit_state) & TASK_REPORT
    if (state & TASK_IDLE) == TASK_IDLE:
        return "I"
    if state & TASK_SHOWN_UNINTERRUPTIBLE:
        return "D"
    return STATE_LETTERS[value.bit_length()] if value.bit_length() < len(STATE_LETTERS) else "?"


class TaskReader:
    """Compiled layouts of task_struct and friends for one kernel, built once."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        self.task = Record(btf, "task_struct", {
            "pid": "pid", "tgid": "tgid", "comm": "comm", "flags": "flags",
            "state": "__state", "state_old": "state", "exit_state": "exit_state",
            "tasks_next": "tasks.next", "real_parent": "real_parent", "real_cred": "real_cred",
            "mm": "mm", "signal": "signal", "thread_node": "thread_node.next",
            "start_boottime": "start_boottime", "real_start_time": "real_start_time",
            "worker_private": "worker_private", "set_child_tid": "set_child_tid",
            "files": "files",
        }, optional=("state", "state_old", "start_boottime", "real_start_time",
                     "worker_private", "set_child_tid", "files"))
        self.tasks_offset = self.task.struct.offset("tasks")
        self.thread_node_offset = self.task.struct.offset("thread_node")
        self.tgid_offset = self.task.struct.offset("tgid")
        self.cred = Record(btf, "cred", {"uid": "uid.val", "gid": "gid.val", "euid": "euid.val"})
        self.mm = Record(btf, "mm_struct", {
            "pgd": "pgd", "arg_start": "arg_start", "arg_end": "arg_end",
            "env_start": "env_start", "env_end": "env_end", "exe_file": "exe_file",
        })
        self.signal = Record(btf, "signal_struct", {"nr_threads": "nr_threads",
                                                    "thread_head": "thread_head"})
        self.thread_head_offset = self.signal.offset("thread_head")
        self.kthread = Record(btf, "kthread", {"full_name": "full_name", "data": "data"},
                              optional=("full_name",))
        self.worker = Record(btf, "worker", {"desc": "desc", "current_work": "current_work"})
        # The fields past the path serve the files view (fdinfo, d_dname); optional, so
        # that a kernel which moved one still gives every process its executable.
        self.file = Record(btf, "file", {
            "mnt": "f_path.mnt", "dentry": "f_path.dentry", "flags": "f_flags", "pos": "f_pos",
            "inode": "f_inode", "private": "private_data", "fop": "f_op",
        }, optional=("flags", "pos", "inode", "private", "fop"))
        self.dentry = Record(btf, "dentry", {
            "parent": "d_parent", "name": "d_name.name", "len": "d_name.len",
            "op": "d_op", "inode": "d_inode", "hash_pprev": "d_hash.pprev",
            "fsdata": "d_fsdata", "iname": "d_iname", "shortname": "d_shortname.string",
        }, optional=("op", "inode", "hash_pprev", "fsdata", "iname", "shortname"))
        inline = next((n for n in ("iname", "shortname") if n in self.dentry), None)
        # Short names live inside the dentry: (offset, size) of that array, to slice them
        # out of the record already read instead of reading them again.
        self.inline_name = ((self.dentry.offset(inline), self.dentry.size_of(inline), inline)
                            if inline else None)
        self.mount_mnt = btf.struct("mount").offset("mnt")
        self.mount = Record(btf, "mount", {"parent": "mnt_parent",
                                           "mountpoint": "mnt_mountpoint",
                                           "root": "mnt.mnt_root", "id": "mnt_id"},
                            optional=("id",))

    def read_u64(self, address: int) -> int:
        return self.kernel.read_u64(address)

    def comm(self, t: dict) -> str:
        """The name /proc/PID/stat shows (fs/proc/array.c proc_task_name)."""
        comm = cstring(t["comm"])
        kthread_ptr = t.get("worker_private", t.get("set_child_tid", 0))
        try:
            if t["flags"] & PF_WQ_WORKER and kthread_ptr:
                k = self.kthread.read(self.kernel, kthread_ptr)
                if comm.startswith(b"kworker/R-") and k.get("full_name"):
                    # Kernels that name rescuers "kworker/R-<wq>" show that whole name.
                    comm = self.kernel.read_cstring(k["full_name"], 64)
                w = self.worker.read(self.kernel, k["data"])
                desc = cstring(w["desc"])
                if desc:
                    comm += (b"+" if w["current_work"] else b"-") + desc
            elif t["flags"] & PF_KTHREAD and kthread_ptr and "full_name" in self.kthread:
                full = self.kthread.read(self.kernel, kthread_ptr)["full_name"]
                if full:
                    comm = self.kernel.read_cstring(full, 64)
        except GuestMemoryError:
            pass  # fall back to task->comm, as the kernel would show at worst
        return _decode(comm[:63])

    def state(self, t: dict) -> str:
        return state_letter(t.get("state", t.get("state_old", 0)), t["exit_state"])

    def user_bytes(self, mm: dict, start: int, end: int, limit: int) -> bytes:
        """Bytes [START, END) of the process's own memory, at most LIMIT: how /proc reads
        cmdline and environ (mm->arg_*, mm->env_*), shared by both views."""
        if not mm["pgd"] or end <= start:
            return b""
        return self.kernel.user_space(mm["pgd"]).read(start, min(end - start, limit))

    def cmdline(self, mm: dict) -> list[str]:
        end = mm["arg_end"]
        raw = self.user_bytes(mm, mm["arg_start"], end, MAX_CMDLINE)
        if raw and raw[-1] != 0 and mm["env_end"] > mm["env_start"] == end:
            # setproctitle() may run the title on into the environment (proc_pid_cmdline)
            more = self.user_bytes(mm, end, mm["env_end"], MAX_CMDLINE - len(raw))
            raw += more.split(b"\0", 1)[0]
        return split_strings(raw)

    def exe(self, mm: dict, cache: "PathCache | None" = None) -> str | None:
        """The path of the process's executable; CACHE: one per view call (the processes of
        a guest share a few executables and their directories)."""
        if not mm["exe_file"]:
            return None
        f = self.file.read(self.kernel, mm["exe_file"])
        return self.d_path(f["mnt"], f["dentry"], cache)

    def name(self, d: dict, address: int) -> bytes:
        """A dentry's name (d_name), sliced from the record when it is one of the short
        names kept inside the dentry, else read (NAME_MAX bytes at most)."""
        size = min(d["len"], NAME_MAX)
        if self.inline_name:
            offset, room, field_name = self.inline_name
            start = d["name"] - address - offset
            if start >= 0 and start + size <= room:
                return d[field_name][start:start + size]
        return self.kernel.read(d["name"], size)

    def d_path(self, vfsmount: int, dentry: int, cache: "PathCache | None" = None) -> str:
        """Rebuild a path from a dentry and its mount, crossing mount points (bounded).
        With a CACHE (one per view call), directories already rebuilt are not read again."""
        cache = cache if cache is not None else PathCache(self)
        mnt = vfsmount - self.mount_mnt
        parts: list[bytes] = []
        walked: list[tuple[tuple[int, int], int]] = []  # (mount, dentry) and its depth
        base = ""
        for _ in range(MAX_PATH_DEPTH):
            known = cache.paths.get((mnt, dentry))
            if known is not None:
                base = known
                break
            walked.append(((mnt, dentry), len(parts)))
            m = cache.mount(mnt)
            if dentry == m["root"]:
                parent = m["parent"]
                if parent == mnt or not parent:
                    break
                dentry, mnt = m["mountpoint"], parent
                continue
            d = cache.dentry(dentry)
            if d["parent"] == dentry:
                break
            parts.append(self.name(d, dentry))
            dentry = d["parent"]
        else:
            raise GuestMemoryError("path deeper than the walk bound")
        for key, depth in walked:
            cache.paths[key] = _join_path(base, parts[depth:])
        return _join_path(base, parts)


class PathCache:
    """Mounts, dentries and paths already read during one view call: the open files of a
    guest share their directories and mounts, so each is read once. Never kept across calls
    (a running guest changes)."""

    def __init__(self, reader: TaskReader) -> None:
        self.reader = reader
        self.paths: dict[tuple[int, int], str] = {}
        self.mounts: dict[int, dict] = {}
        self.dentries: dict[int, dict] = {}

    def mount(self, address: int) -> dict:
        m = self.mounts.get(address)
        if m is None:
            m = self.mounts[address] = self.reader.mount.read(self.reader.kernel, address)
        return m

    def dentry(self, address: int) -> dict:
        d = self.dentries.get(address)
        if d is None:
            d = self.dentries[address] = self.reader.dentry.read(self.reader.kernel, address)
        return d


def _join_path(base: str, parts: list[bytes]) -> str:
    """BASE (a path already rebuilt, or "" for the root) followed by PARTS, leaf first."""
    tail = "".join("/" + _decode(p) for p in reversed(parts))
    return (base.rstrip("/") + tail) or "/"


def split_strings(raw: bytes) -> list[str]:
    """NUL-terminated strings as /proc/PID/cmdline and environ hold them: each ends with a
    NUL (the last one may not), and an empty string is kept."""
    if not raw:
        return []
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [_decode(a) for a in raw.split(b"\0")]


def task_addresses(reader: TaskReader) -> tuple[list[int], str | None]:
    """Every process's task_struct (thread-group leaders, from init_task.tasks), init_task
    first, and why the walk stopped early if it did (views that visit processes share it)."""
    init = reader.kernel.symbols.lookup("init_task")
    head = init + reader.tasks_offset
    addresses = [init]
    try:
        for node in list_nodes(reader.read_u64, head, MAX_TASKS):
            addresses.append(node - reader.tasks_offset)
    except ListWalkError as exc:
        return addresses, f"task list: {exc.reason}"
    return addresses, None


def _command(p: Process) -> str:
    return " ".join(p.cmdline) if p.cmdline else f"[{p.comm}]"


@view(command="ps", title="Processes of {vm}", columns=(
    Column("PID", "pid", True), Column("PPID", "ppid", True), Column("UID", "uid", True),
    Column("S", "state"), Column("THR", "threads", True), Column("COMM", "comm"),
    Column("COMMAND", _command)))
def processes(kernel: LinuxKernel) -> ViewResult[Process]:
    """List the guest's processes: pid, ppid, uid, state, threads, command line."""
    reader = kernel.helper(TaskReader)
    addresses, partial = task_addresses(reader)
    result: ViewResult[Process] = ViewResult(partial=partial)
    paths = PathCache(reader)
    for address in addresses:
        try:
            t = reader.task.read(kernel, address)
        except GuestMemoryError as exc:
            result.partial = result.partial or f"task {address:#x}: {exc}"
            continue
        if t["pid"] == 0:
            continue
        result.items.append(_process(reader, address, t, paths))
    return result


def _process(reader: TaskReader, address: int, t: dict, paths: PathCache) -> Process:
    kernel = reader.kernel
    errors: list[str] = []
    ppid = uid = gid = euid = 0
    try:
        parent = reader.kernel.read(t["real_parent"] + reader.tgid_offset, 4)
        ppid = int.from_bytes(parent, "little" if kernel.arch.endian == "<" else "big",
                              signed=True)
    except GuestMemoryError as exc:
        errors.append(f"parent: {exc}")
    try:
        c = reader.cred.read(kernel, t["real_cred"])
        uid, gid, euid = c["uid"], c["gid"], c["euid"]
    except GuestMemoryError as exc:
        errors.append(f"cred: {exc}")
    threads = 1
    try:
        threads = reader.signal.read(kernel, t["signal"])["nr_threads"]
    except GuestMemoryError as exc:
        errors.append(f"signal: {exc}")
    cmdline: list[str] = []
    exe = None
    is_kthread = bool(t["flags"] & PF_KTHREAD) or not t["mm"]
    if t["mm"] and not t["flags"] & PF_KTHREAD:
        try:
            mm = reader.mm.read(kernel, t["mm"])
            cmdline = reader.cmdline(mm)
            exe = reader.exe(mm, paths)
        except GuestMemoryError as exc:
            errors.append(f"mm: {exc}")
    start_ns = t.get("start_boottime", t.get("real_start_time", 0))
    return Process(
        pid=t["pid"], ppid=ppid, uid=uid, gid=gid, euid=euid, comm=reader.comm(t),
        state=reader.state(t), start_time=start_ns / 1e9, kernel_thread=is_kthread,
        cmdline=cmdline, exe=exe, threads=threads, address=address, errors=errors,
    )


@view(title="Threads of {vm}", columns=(
    Column("TGID", "tgid", True), Column("TID", "tid", True), Column("S", "state"),
    Column("COMM", "comm")))
def threads(kernel: LinuxKernel) -> ViewResult[Thread]:
    """List every thread of every process (from each process's signal->thread_head list)."""
    reader = kernel.helper(TaskReader)
    addresses, partial = task_addresses(reader)
    result: ViewResult[Thread] = ViewResult(partial=partial)
    for address in addresses:
        try:
            leader = reader.task.read(kernel, address)
            if leader["pid"] == 0:
                continue
            head = leader["signal"] + reader.thread_head_offset
            members = [n - reader.thread_node_offset
                       for n in list_nodes(reader.read_u64, head, MAX_TASKS)]
        except (GuestMemoryError, ListWalkError) as exc:
            result.partial = result.partial or f"threads of task {address:#x}: {exc}"
            continue
        for member in members:
            try:
                t = reader.task.read(kernel, member)
            except GuestMemoryError as exc:
                result.partial = result.partial or f"thread {member:#x}: {exc}"
                continue
            result.items.append(Thread(tid=t["pid"], tgid=t["tgid"], comm=reader.comm(t),
                                       state=reader.state(t), address=member))
    return result


def find_task(kernel: LinuxKernel, pid: int) -> dict | None:
    """The task_struct fields of process PID (a thread-group leader), found by walking the
    task list reading one record per task: no command lines, paths or credentials."""
    reader = kernel.helper(TaskReader)
    addresses, _ = task_addresses(reader)
    for address in addresses:
        try:
            t = reader.task.read(kernel, address)
        except GuestMemoryError:
            continue
        if t["pid"] == pid and t["tgid"] == pid:
            return {**t, "address": address}
    return None


def address_space_of(kernel: LinuxKernel, pid: int):
    """Process PID's address space (its page tables, from mm->pgd)."""
    t = find_task(kernel, pid)
    if t is None:
        raise GuestMemoryError(f"no process {pid}")
    if not t["mm"] or t["flags"] & PF_KTHREAD:
        raise GuestMemoryError(f"process {pid} is a kernel thread: no user memory")
    reader = kernel.helper(TaskReader)
    return kernel.user_space(reader.mm.read(kernel, t["mm"])["pgd"])

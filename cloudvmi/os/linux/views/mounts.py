"""Mounts of every mount namespace, as /proc/PID/mountinfo shows them (fs/proc_namespace.c).

The namespaces are those the processes use (each task's nsproxy->mnt_ns, deduplicated, in
the order the task list first reaches them, init's first). Like mountinfo, only the mounts
reachable from the root of the first process in a namespace are shown: from 7.x the namespace's
own root is a nullfs mount beneath rootfs that no process sees. A namespace keeps its mounts on a
list (mnt_namespace.list through mount.mnt_list) or, in later kernels, in a red-black tree
ordered by mount id (mnt_namespace.mounts through mount.mnt_node); which one is probed from
BTF. Both orders are the order /proc prints. Each walk is bounded and cycle-checked; a bad
structure ends it with the mounts read so far and the result marked partial.

What /proc builds from filesystem callbacks (show_options: size=, mode=, ...; show_devname
and show_path overrides of a few filesystems) is not rebuilt: super options give the generic
part only (ro/rw, sync, dirsync, mand, lazytime).
"""

from dataclasses import dataclass

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError, ProfileError
from cloudvmi.os.linux.btf import Kind
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.os.linux.views.common import ListWalkError, Problems, ViewResult, list_nodes
from cloudvmi.os.linux.views.processes import PathCache, TaskReader, task_addresses

# Bounds on walks over guest structures (hostile input): far above any real guest.
MAX_MOUNTS = 1 << 17  # mounts of all namespaces together (fs.mount-max is 100,000 each)
MAX_NAMESPACES = 1 << 12  # mount namespaces
MAX_RB_DEPTH = 96  # a red-black tree of n nodes is at most 2·log2(n + 1) deep
MAX_DENTRY_DEPTH = 256  # components of a mount's root within its filesystem
MAX_NESTING = 1 << 12  # mounts stacked on one another, from a mount up to the tree's root
MAX_DENTRIES = 1 << 18  # dentries read for the paths of all mounts together
MAX_REASONS = 3  # problems named in `partial` (the first ones; the rest are counted)
FS_NAME_MAX = 64  # a filesystem type's name
DEVNAME_MAX = 4096  # PATH_MAX: mnt_devname
ESCAPES = " \t\n\\"  # what mountinfo writes as \ooo (mangle, seq_path_root, seq_dentry)

# vfsmount.mnt_flags (include/linux/mount.h): values unchanged since they were defined; a
# kernel that declares them as enum mount_flags gives them through BTF instead.
MNT_FLAGS = {"MNT_NOSUID": 0x01, "MNT_NODEV": 0x02, "MNT_NOEXEC": 0x04, "MNT_NOATIME": 0x08,
             "MNT_NODIRATIME": 0x10, "MNT_RELATIME": 0x20, "MNT_READONLY": 0x40,
             "MNT_NOSYMFOLLOW": 0x80, "MNT_SHARED": 0x1000, "MNT_UNBINDABLE": 0x2000}
MNT_OPTIONS = (("MNT_NOSUID", "nosuid"), ("MNT_NODEV", "nodev"), ("MNT_NOEXEC", "noexec"),
               ("MNT_NOATIME", "noatime"), ("MNT_NODIRATIME", "nodiratime"),
               ("MNT_RELATIME", "relatime"), ("MNT_NOSYMFOLLOW", "nosymfollow"))
# Kernels that keep propagation apart (mount.mnt_t_flags) name it T_SHARED, T_UNBINDABLE
# (fs/mount.h), in an anonymous enum: the values as defined there.
T_FLAGS = {"T_SHARED": 1, "T_UNBINDABLE": 2}
# A reader's place holder in ns->list (5.8 to 6.7), not a mount. Only on a list: kernels
# with the tree give the same bit to every mount on it (MNT_ONRB, until 6.14).
MNT_CURSOR = 0x10000000
# super_block.s_flags, the SB_* values (= the mount(2) ABI's MS_* ones) that show_sb_opts adds.
SB_RDONLY = 0x1
SB_OPTIONS = ((0x10, "sync"), (0x80, "dirsync"), (0x40, "mand"), (1 << 25, "lazytime"))


@dataclass
class Mount:
    namespace: int  # inode number of the mount namespace (/proc/PID/ns/mnt)
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # the mount's root within its filesystem
    mount_point: str  # from the namespace's root
    options: str  # per-mount: rw/ro, nosuid, nodev, noexec, relatime, ...
    propagation: str  # the optional fields: "shared:N", "master:N", "unbindable"; "" if none
    fs_type: str
    source: str  # mnt_devname, "none" when the mount has none
    super_options: str  # generic part only: rw/ro, sync, dirsync, mand, lazytime
    address: int  # struct mount

    def line(self) -> str:
        """The line /proc/PID/mountinfo prints (with the generic super options only)."""
        tags = f" {self.propagation}" if self.propagation else ""
        return (f"{self.mount_id} {self.parent_id} {self.major}:{self.minor} {self.root} "
                f"{self.mount_point} {self.options}{tags} - {self.fs_type} {self.source} "
                f"{self.super_options}")


def _escape(text: str) -> str:
    for c in ESCAPES:
        text = text.replace(c, f"\\{ord(c):03o}")
    return text


def _enumerators(kernel: LinuxKernel, names: dict[str, int], enum: str) -> dict[str, int]:
    """NAMES' values from the BTF enum called ENUM when the kernel declares them so; the
    values given (the long-stable #defines) otherwise."""
    out = dict(names)
    t = kernel.btf.find_type(enum, (Kind.ENUM, Kind.ENUM64))
    for e in t.enumerators if t is not None else ():
        if e.name in out:
            out[e.name] = e.value
    return out


class MountReader:
    """Layouts of mnt_namespace, mount, super_block and what leads to them, for one kernel,
    built once. Paths reuse the process view's TaskReader (d_path) and PathCache."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        self.tasks = kernel.helper(TaskReader)
        self.task = Record(btf, "task_struct", {"nsproxy": "nsproxy", "fs": "fs"})
        self.fs = Record(btf, "fs_struct", {"root": "root.mnt"})
        self.nsproxy = Record(btf, "nsproxy", {"mnt_ns": "mnt_ns"})
        self.ns = Record(btf, "mnt_namespace", {
            "inum": "ns.inum", "root": "root", "rb": "mounts.rb_node",
            "rb_cached": "mounts.rb_root.rb_node",
        }, optional=("rb", "rb_cached"))
        ns = btf.struct("mnt_namespace")
        mount = btf.struct("mount")
        self.list_offset = ns.offset("list") if "list" in ns else None
        if self.list_offset is not None:
            self.link_offset = mount.offset("mnt_list")
        elif ("rb" in self.ns or "rb_cached" in self.ns) and "mnt_node" in mount:
            self.link_offset = mount.offset("mnt_node")
            self.rb = Record(btf, "rb_node", {"right": "rb_right", "left": "rb_left"})
        else:
            raise ProfileError("mnt_namespace keeps its mounts neither on a list nor in a tree")
        self.mount = Record(btf, "mount", {
            "id": "mnt_id", "parent": "mnt_parent", "root": "mnt.mnt_root", "sb": "mnt.mnt_sb",
            "flags": "mnt.mnt_flags", "devname": "mnt_devname", "group": "mnt_group_id",
            "master": "mnt_master", "t_flags": "mnt_t_flags", "idmap": "mnt.mnt_idmap",
            "userns": "mnt.mnt_userns",
        }, optional=("t_flags", "idmap", "userns"))
        self.flags = _enumerators(kernel, MNT_FLAGS, "mount_flags")
        # Propagation moved to mount.mnt_t_flags in later kernels; its enum has no name.
        self.t_flags = T_FLAGS if "t_flags" in self.mount else None
        # An idmapped mount's idmap differs from the kernel's "no mapping" one (5.12+).
        self.no_idmap = kernel.symbols.get("nop_mnt_idmap") if "idmap" in self.mount else \
            kernel.symbols.get("init_user_ns") if "userns" in self.mount else None
        self.sb = Record(btf, "super_block", {"dev": "s_dev", "flags": "s_flags",
                                              "type": "s_type", "subtype": "s_subtype"},
                         optional=("subtype",))
        self.fs_type = Record(btf, "file_system_type", {"name": "name"})


class _Walk(Problems):
    """One mounts() call: what was read (superblocks, filesystem types, mounts by address)
    and the problems met, for `partial`."""

    def __init__(self, reader: MountReader) -> None:
        super().__init__(MAX_REASONS)
        self.reader = reader
        self.kernel = reader.kernel
        self.paths = PathCache(reader.tasks)
        self.mounts: dict[int, dict] = {}
        self.sbs: dict[int, tuple[int, int, str]] = {}
        self.count = 0

    def mount(self, address: int) -> dict:
        m = self.mounts.get(address)
        if m is None:
            m = self.mounts[address] = self.reader.mount.read(self.kernel, address)
        return m


def _namespaces(walk: _Walk) -> list[tuple[int, dict]]:
    """(address, fields) of every mount namespace a process uses, each once, in the order
    the task list reaches them."""
    reader, kernel = walk.reader, walk.kernel
    addresses, partial = task_addresses(reader.tasks)
    if partial:
        walk.problem(partial)
    proxies: dict[int, int] = {}  # nsproxy -> fs_struct of the first task using it
    for address in addresses:
        try:
            t = reader.task.read(kernel, address)
        except GuestMemoryError as exc:
            walk.problem(f"task {address:#x}: {exc}")
            continue
        if t["nsproxy"]:  # an exiting task has dropped its namespaces
            proxies.setdefault(t["nsproxy"], t["fs"])
    found: dict[int, dict] = {}
    for proxy, fs in proxies.items():
        try:
            ns = reader.nsproxy.read(kernel, proxy)["mnt_ns"]
            if ns and ns not in found:
                if len(found) >= MAX_NAMESPACES:
                    walk.problem(f"more than {MAX_NAMESPACES} mount namespaces")
                    break
                found[ns] = reader.ns.read(kernel, ns)
                found[ns]["seen_from"] = _root_mount(walk, fs)
        except GuestMemoryError as exc:
            walk.problem(f"nsproxy {proxy:#x}: {exc}")
    return list(found.items())


def _root_mount(walk: _Walk, fs: int) -> int | None:
    """The mount a process's root is on (fs->root.mnt), None when it has no fs_struct."""
    if not fs:
        return None
    vfsmount = walk.reader.fs.read(walk.kernel, fs)["root"]
    return vfsmount - walk.reader.tasks.mount_mnt if vfsmount else None


def _visible(walk: _Walk, address: int, root: int | None) -> bool:
    """Whether mountinfo shows the mount to a reader whose root is on ROOT: it must be that
    mount or stacked above it (seq_path_root skips the rest)."""
    if root is None:
        return True
    seen: set[int] = set()
    while len(seen) < MAX_NESTING:
        if address == root:
            return True
        seen.add(address)
        parent = walk.mount(address)["parent"]
        if not parent or parent == address:
            return False
        if parent in seen:
            return True  # parents that loop: shown, and its path reports the damage
        address = parent
    return True


def _listed(walk: _Walk, ns: int) -> list[int]:
    """The namespace's mounts from its list (mnt_namespace.list), bounded, cursors left out."""
    reader = walk.reader
    out = []
    try:
        for node in list_nodes(walk.kernel.read_u64, ns + reader.list_offset,
                               MAX_MOUNTS - walk.count):
            out.append(node - reader.link_offset)
    except ListWalkError as exc:
        walk.problem(f"mounts of namespace {ns:#x}: {exc.reason}")
    return out


def _in_tree(walk: _Walk, root: int) -> list[int]:
    """The namespace's mounts from its red-black tree, in order (left, node, right): an
    explicit stack, each node read once, bounded in depth and count, a node met twice
    ending the walk."""
    reader = walk.reader
    out: list[int] = []
    stack: list[tuple[int, int]] = []  # (node, its right child)
    seen: set[int] = set()
    node = root
    try:
        while node or stack:
            while node:
                if node in seen:
                    raise ListWalkError(f"tree node {node:#x} is reached twice (a loop)")
                if len(stack) >= MAX_RB_DEPTH or walk.count + len(seen) >= MAX_MOUNTS:
                    raise ListWalkError(f"tree deeper than {MAX_RB_DEPTH} or larger than "
                                        f"{MAX_MOUNTS} mounts")
                seen.add(node)
                n = reader.rb.read(walk.kernel, node)
                stack.append((node, n["right"]))
                node = n["left"]
            node, right = stack.pop()
            out.append(node - reader.link_offset)
            node = right
    except ListWalkError as exc:
        walk.problem(f"mount tree at {root:#x}: {exc.reason}")
    except GuestMemoryError as exc:
        walk.problem(f"mount tree at {root:#x}: {exc}")
    return out


def _members(walk: _Walk, address: int, ns: dict) -> list[int]:
    if walk.reader.list_offset is not None:
        return _listed(walk, address)
    return _in_tree(walk, ns.get("rb", ns.get("rb_cached", 0)))


def _super(walk: _Walk, sb: int) -> tuple[int, int, str]:
    """(s_dev, s_flags, type name) of a superblock, read once per call."""
    known = walk.sbs.get(sb)
    if known is None:
        reader, kernel = walk.reader, walk.kernel
        s = reader.sb.read(kernel, sb)
        name = kernel.read_cstring(reader.fs_type.read(kernel, s["type"])["name"], FS_NAME_MAX)
        if s.get("subtype"):
            name += b"." + kernel.read_cstring(s["subtype"], FS_NAME_MAX)
        known = walk.sbs[sb] = (s["dev"], s["flags"],
                                _escape(name.decode("utf-8", "surrogateescape")))
    return known


def _dentry_path(walk: _Walk, dentry: int) -> str:
    """A dentry's path within its own filesystem (dentry_path), "//deleted" once unlinked."""
    tasks = walk.reader.tasks
    first = walk.paths.dentry(dentry)
    parts: list[bytes] = []
    for _ in range(MAX_DENTRY_DEPTH):
        d = walk.paths.dentry(dentry)
        if d["parent"] == dentry:
            break
        parts.append(tasks.name(d, dentry))
        dentry = d["parent"]
    else:
        raise GuestMemoryError(f"dentry path deeper than {MAX_DENTRY_DEPTH}")
    path = "/" + "/".join(p.decode("utf-8", "surrogateescape") for p in reversed(parts))
    if parts and "hash_pprev" in first and not first["hash_pprev"]:
        path += "//deleted"
    return path


def _options(reader: MountReader, m: dict) -> str:
    """The per-mount options (show_mnt_opts), read-only first."""
    flags, bits = m["flags"], reader.flags
    out = ["ro" if flags & bits["MNT_READONLY"] else "rw"]
    out += [name for flag, name in MNT_OPTIONS if flags & bits[flag]]
    idmap = m.get("idmap", m.get("userns"))
    if idmap and reader.no_idmap is not None and idmap != reader.no_idmap:
        out.append("idmapped")
    return ",".join(out)


def _propagation(walk: _Walk, m: dict) -> str:
    """The optional fields: shared:N, master:N (propagate_from is not rebuilt), unbindable."""
    reader = walk.reader
    if reader.t_flags is not None:
        flags, shared, unbindable = (m["t_flags"], reader.t_flags["T_SHARED"],
                                     reader.t_flags["T_UNBINDABLE"])
    else:
        flags, shared, unbindable = (m["flags"], reader.flags["MNT_SHARED"],
                                     reader.flags["MNT_UNBINDABLE"])
    tags = []
    if flags & shared:
        tags.append(f"shared:{m['group']}")
    if m["master"]:
        tags.append(f"master:{walk.mount(m['master'])['group']}")
    if flags & unbindable:
        tags.append("unbindable")
    return " ".join(tags)


def _mount(walk: _Walk, inum: int, address: int) -> Mount | None:
    """One mount as mountinfo shows it; None for a reader's cursor on a namespace's list."""
    reader, kernel = walk.reader, walk.kernel
    m = walk.mount(address)
    if reader.list_offset is not None and m["flags"] & MNT_CURSOR:
        return None
    parent_id = m["id"] if m["parent"] == address else walk.mount(m["parent"])["id"]
    dev, sb_flags, fs_type = _super(walk, m["sb"])
    source = (kernel.read_cstring(m["devname"], DEVNAME_MAX) if m["devname"] else b"none")
    mount_point = reader.tasks.d_path(address + reader.tasks.mount_mnt, m["root"], walk.paths)
    sb_opts = ["ro" if sb_flags & SB_RDONLY else "rw"] + [
        name for flag, name in SB_OPTIONS if sb_flags & flag]
    return Mount(
        namespace=inum, mount_id=m["id"], parent_id=parent_id, major=dev >> 20,
        minor=dev & 0xFFFFF, root=_escape(_dentry_path(walk, m["root"])),
        mount_point=_escape(mount_point), options=_options(reader, m),
        propagation=_propagation(walk, m), fs_type=fs_type,
        source=_escape(source.decode("utf-8", "surrogateescape")),
        super_options=",".join(sb_opts), address=address)


def _options_column(m: Mount) -> str:
    """Per-mount options and propagation tags, then the superblock's when they differ."""
    text = " ".join(filter(None, (m.options, m.propagation)))
    return text if m.super_options == m.options.split(",", 1)[0] else \
        f"{text} (sb {m.super_options})"


@view(title="Mounts of {vm}", columns=(
    Column("NS", "namespace", True), Column("ID", "mount_id", True),
    Column("PARENT", "parent_id", True), Column("DEV", lambda m: f"{m.major}:{m.minor}"),
    Column("ROOT", "root"), Column("MOUNT POINT", "mount_point"), Column("TYPE", "fs_type"),
    Column("SOURCE", "source"), Column("OPTIONS", _options_column)))
def mounts(kernel: LinuxKernel) -> ViewResult[Mount]:
    """List the mounts of every mount namespace, as /proc/PID/mountinfo shows them."""
    try:
        reader = kernel.helper(MountReader)
    except ProfileError as exc:
        return ViewResult(partial=f"mounts not understood: {exc}")
    walk = _Walk(reader)
    result: ViewResult[Mount] = ViewResult()
    for ns, fields in _namespaces(walk):
        for address in _members(walk, ns, fields):
            if len(walk.paths.dentries) > MAX_DENTRIES:
                walk.problem(f"more than {MAX_DENTRIES} dentries in the mounts' paths")
                break
            walk.count += 1
            try:
                if not _visible(walk, address, fields["seen_from"]):
                    continue
                mount = _mount(walk, fields["inum"], address)
            except GuestMemoryError as exc:
                walk.problem(f"mount {address:#x}: {exc}")
                continue
            if mount is not None:
                result.items.append(mount)
        if walk.count >= MAX_MOUNTS or len(walk.paths.dentries) > MAX_DENTRIES:
            break  # the walk that hit the bound has said so
    result.partial = walk.partial
    return result

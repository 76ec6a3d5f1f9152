"""A process's memory mappings, as /proc/PID/maps shows them (fs/proc/task_mmu.c).

The VMAs come from the process's mm: its maple tree (mm->mm_mt) where mm_struct has one, else
its sorted VMA list (mm->mmap, vm_next). Which of the two is decided by the members BTF gives
mm_struct, never by a version number. The maple tree is walked from its root, each node read
once; the walk is bounded in depth, nodes and entries, checks that every node's pivots stay
inside its parent's range and that every VMA sits where the tree says, and gives up on a bad
subtree (a loop, garbage, a pointer out of RAM) with the rest of the tree still listed and
the result marked partial.

Names follow show_map_vma: a file's path (d_path, " (deleted)" when unlinked, the d_dname of
pseudo files), a special mapping's own name ([vdso], [vvar], [uprobes]), [heap], [stack],
[anon:NAME] for a VMA named with prctl(PR_SET_VMA).
"""

import struct
from dataclasses import dataclass

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError, ProfileError
from cloudvmi.os.linux.btf import Kind
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.os.linux.views.common import Problems, ViewResult
from cloudvmi.os.linux.views.processes import PF_KTHREAD, PathCache, TaskReader, find_task

# Bounds on walks over guest structures (hostile input): far above any real guest.
MAX_VMAS = 1 << 18  # VMAs of one process (vm.max_map_count defaults to 65,530)
MAX_TREE_DEPTH = 32  # maple tree levels (MAPLE_HEIGHT_MAX is 31)
MAX_TREE_NODES = 1 << 17  # maple nodes of one tree (65,530 VMAs fill some 10,000 nodes)
MAX_DENTRIES = 1 << 18  # dentries read for the paths of one process's mapped files
MAX_REASONS = 3  # problems named in `partial` (the first ones; the rest are counted)
ANON_NAME_MAX = 80  # ANON_VMA_NAME_MAX_LEN
SPECIAL_NAME_MAX = 64  # a vm_special_mapping's name ("[vdso]")

# Bits of vm_flags that /proc prints (include/linux/mm.h; unchanged since Linux 2.6).
VM_READ, VM_WRITE, VM_EXEC, VM_MAYSHARE = 0x1, 0x2, 0x4, 0x80
MINORBITS = 20  # the kernel's own dev_t: major above bit 20 (include/linux/kdev_t.h)
PATH_ESCAPES = "\n"  # seq_file_path(m, file, "\n") writes these as \ooo

# Encoded maple nodes (include/linux/maple_tree.h, lib/maple_tree.c): the node's address
# (aligned to its own size) with its type in bits 3-6; the root's also has 0b10 in its low
# bits (mt_mk_root), which tells it from a lone entry.
MAPLE_NODE_TYPE_SHIFT, MAPLE_NODE_TYPE_MASK = 3, 0xF
XA_INTERNAL_LIMIT = 4096  # internal entries (xa_mk_internal) are small: XA_ZERO_ENTRY, ...
# The order of enum maple_type, for a kernel whose BTF lacks the enum (BTF wins when present).
MAPLE_TYPES = {"maple_leaf_64": 1, "maple_range_64": 2, "maple_arange_64": 3}

# d_op->d_dname functions of pseudo files, by symbol, and how each names its dentry.
DNAMES = {
    "anon_inodefs_dname": lambda name, ino: f"anon_inode:{name}",
    "simple_dname": lambda name, ino: f"/{name} (deleted)",  # memfd, SysV shm, aio
    "sockfs_dname": lambda name, ino: f"socket:[{ino}]",
    "pipefs_dname": lambda name, ino: f"pipe:[{ino}]",
}


@dataclass
class Mapping:
    start: int
    end: int
    perms: str  # r/w/x/- and p (private) or s (shared)
    offset: int  # bytes into the file (vm_pgoff << PAGE_SHIFT); 0 when anonymous
    major: int  # device of the file's superblock
    minor: int
    inode: int
    path: str  # file path, [heap], [stack], [vdso], [anon:NAME], ... or ""
    address: int  # vm_area_struct

    def line(self, pointer_size: int = 8) -> str:
        """The line /proc/PID/maps prints: the name padded to column 25 + 6 × pointer size
        (show_vma_header_prefix, seq_pad)."""
        head = (f"{self.start:08x}-{self.end:08x} {self.perms} {self.offset:08x} "
                f"{self.major:02x}:{self.minor:02x} {self.inode} ")
        if not self.path:
            return head
        return head.ljust(25 + pointer_size * 6 - 1) + " " + self.path


class MapleError(GuestMemoryError):
    """A maple node that is not what a maple tree holds: the subtree under it is skipped."""


class MapleLayout:
    """How this kernel lays out maple nodes: types from enum maple_type, slot and pivot
    counts from the arrays' BTF sizes, the node alignment from sizeof(struct maple_node)."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        enum = btf.find_type("maple_type", (Kind.ENUM, Kind.ENUM64))
        values = {e.name: e.value for e in enum.enumerators} if enum else {}
        kinds = {name: values.get(name, default) for name, default in MAPLE_TYPES.items()}
        self.leaf, self.range, self.arange = (kinds["maple_leaf_64"], kinds["maple_range_64"],
                                              kinds["maple_arange_64"])
        self.node_mask = btf.struct("maple_node").size - 1
        fields = {"parent": "parent", "pivot": "pivot", "slot": "slot", "end": "meta.end"}
        self.records = {self.leaf: Record(btf, "maple_range_64", fields),
                        self.range: Record(btf, "maple_range_64", fields),
                        self.arange: Record(btf, "maple_arange_64", fields)}
        self.word = kernel.arch.pointer_size
        self.words = kernel.btf.endian + "{}" + ("Q" if self.word == 8 else "I")
        self.max_index = (1 << (8 * self.word)) - 1

    def is_node(self, entry: int) -> bool:
        """xa_is_node(): the root holds an encoded node (mt_mk_root) rather than one entry."""
        return entry & 3 == 2 and entry > XA_INTERNAL_LIMIT

    def node(self, kernel: LinuxKernel, entry: int, lo: int, hi: int) -> tuple[bool, list]:
        """Whether the node encoded in ENTRY is a leaf, and its (first, last, slot) ranges
        within [LO, HI] (mte_to_node, ma_data_end); MapleError for anything that is not a
        live node of a well-formed tree."""
        kind = (entry >> MAPLE_NODE_TYPE_SHIFT) & MAPLE_NODE_TYPE_MASK
        record = self.records.get(kind)
        address = entry & ~self.node_mask
        if record is None:
            raise MapleError(f"maple node {address:#x} has type {kind}")
        n = record.read(kernel, address)
        if n["parent"] & ~self.node_mask == address:
            raise MapleError(f"maple node {address:#x} is dead (the tree changed as it was read)")
        pivots = struct.unpack(self.words.format(len(n["pivot"]) // self.word), n["pivot"])
        slots = struct.unpack(self.words.format(len(n["slot"]) // self.word), n["slot"])
        end = self._data_end(kind, pivots, n["end"], hi)
        if end >= len(slots):
            raise MapleError(f"maple node {address:#x} claims {end + 1} of {len(slots)} slots")
        return kind == self.leaf, _ranges(address, pivots, slots, end, lo, hi)

    def _data_end(self, kind: int, pivots: tuple, meta_end: int, hi: int) -> int:
        """The last used slot (ma_data_end): from the metadata when the last pivot is
        unused (and always in an arange node), else from where the pivots reach HI."""
        if kind == self.arange or not pivots[-1]:
            return meta_end
        return len(pivots) - 1 if pivots[-1] == hi else len(pivots)


def _ranges(address: int, pivots: tuple, slots: tuple, end: int, lo: int, hi: int) -> list:
    """Each used slot with its inclusive index range: slot i ends at pivot i, the last one
    at the node's own maximum. Pivots must rise inside [LO, HI], else the node is garbage."""
    out = []
    first = lo
    for i in range(end + 1):
        last = pivots[i] if i < end else hi
        if not first <= last <= hi or (i < end and last == hi):
            raise MapleError(f"maple node {address:#x}: pivot {i} ({last:#x}) is outside "
                             f"[{first:#x}, {hi:#x}]")
        out.append((first, last, slots[i]))
        first = last + 1
    return out


class MapReader:
    """Layouts of mm_struct, vm_area_struct, the maple tree and the files behind mappings,
    for one kernel, built once. Paths reuse the process view's TaskReader (d_path)."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        symbols = kernel.symbols
        self.kernel = kernel
        self.tasks = kernel.helper(TaskReader)
        self.mm = Record(btf, "mm_struct", {
            "root": "mm_mt.ma_root", "mmap": "mmap", "start_brk": "start_brk", "brk": "brk",
            "start_stack": "start_stack",
        }, optional=("root", "mmap"))
        if "root" not in self.mm and "mmap" not in self.mm:
            raise ProfileError("mm_struct has neither a maple tree (mm_mt) nor a VMA list")
        self.maple = MapleLayout(kernel) if "root" in self.mm else None
        self.vma = Record(btf, "vm_area_struct", {
            "start": "vm_start", "end": "vm_end", "flags": "vm_flags", "pgoff": "vm_pgoff",
            "file": "vm_file", "ops": "vm_ops", "private": "vm_private_data",
            "next": "vm_next", "anon_name": "anon_name", "shared": "shared",
        }, optional=("next", "anon_name", "shared"))
        # Until 6.2 anon_name shares a union with `shared` and names anonymous VMAs only;
        # later kernels give it a place of its own and shmem mappings can carry it too.
        self.anon_name_of_files = ("anon_name" in self.vma and "shared" in self.vma
                                   and self.vma.offset("anon_name") != self.vma.offset("shared"))
        self.anon_name_at = (btf.struct("anon_vma_name").offset("name")
                             if "anon_name" in self.vma else 0)
        self.inode = Record(btf, "inode", {"ino": "i_ino", "sb": "i_sb"})
        self.sb = Record(btf, "super_block", {"dev": "s_dev"})
        self.ops = Record(btf, "vm_operations_struct", {"name": "name"})
        self.special = Record(btf, "vm_special_mapping", {"name": "name"})
        self.special_name = symbols.get("special_mapping_name")
        self.dentry_ops = Record(btf, "dentry_operations", {"d_dname": "d_dname"})
        self.dnames = {a: fmt for name, fmt in DNAMES.items() if (a := symbols.get(name))}
        self.page_shift = kernel.arch.page_size.bit_length() - 1
        self.word = kernel.arch.pointer_size
        self.byteorder = "little" if btf.endian == "<" else "big"


class _Walk(Problems):
    """One maps() call: what was read (files, superblocks, ops tables are shared by many
    VMAs), and the problems met, for `partial`."""

    def __init__(self, reader: MapReader) -> None:
        super().__init__(MAX_REASONS)
        self.reader = reader
        self.kernel = reader.kernel
        self.paths = PathCache(reader.tasks)
        self.files: dict[int, tuple[int, int, int, str]] = {}
        self.devices: dict[int, int] = {}
        self.op_names: dict[int, int] = {}
        self.dname_of: dict[int, int] = {}


def _maple_vmas(walk: _Walk, root: int) -> list[tuple[int, int, int]]:
    """(first, last, VMA pointer) of every entry of the maple tree at ROOT, in index order:
    a depth-first walk with an explicit stack, each node read once, bounded in depth, nodes
    and entries; a bad subtree is skipped and recorded."""
    layout, kernel = walk.reader.maple, walk.kernel
    assert layout is not None
    if not layout.is_node(root):
        return [(0, 0, root)] if root else []  # a lone entry lives in the root itself
    out: list[tuple[int, int, int]] = []
    stack = [(root, 0, layout.max_index, 1)]
    seen: set[int] = set()
    while stack:
        entry, lo, hi, depth = stack.pop()
        address = entry & ~layout.node_mask
        if address in seen:
            walk.problem(f"maple node {address:#x} is reached twice (a loop)")
            continue
        if depth > MAX_TREE_DEPTH or len(seen) >= MAX_TREE_NODES:
            walk.problem(f"maple tree deeper than {MAX_TREE_DEPTH} levels or larger than "
                         f"{MAX_TREE_NODES} nodes")
            break
        seen.add(address)
        try:
            leaf, ranges = layout.node(kernel, entry, lo, hi)
        except MapleError as exc:
            walk.problem(str(exc))
            continue
        except GuestMemoryError as exc:
            walk.problem(f"maple node {address:#x}: {exc}")
            continue
        if leaf:
            out.extend(r for r in ranges if r[2] and r[2] & 3 != 2)  # internal entries: none
            if len(out) > MAX_VMAS:
                walk.problem(f"more than {MAX_VMAS} VMAs")
                return out[:MAX_VMAS]
            continue
        children = []
        for first, last, child in ranges:
            if child > XA_INTERNAL_LIMIT:  # an encoded node (mt_mk_node): its type says more
                children.append((child, first, last, depth + 1))
            else:
                walk.problem(f"maple node {address:#x}: slot for [{first:#x}, {last:#x}] "
                             f"holds {child:#x}, not a node")
        stack.extend(reversed(children))
    return out


def _vmas(walk: _Walk, mm: dict) -> list[tuple[int, dict]]:
    """Every VMA of the mm, in address order, as (address, vm_area_struct fields)."""
    reader, kernel = walk.reader, walk.kernel
    out = []
    if reader.maple is not None:
        for first, last, address in _maple_vmas(walk, mm["root"]):
            try:
                v = reader.vma.read(kernel, address)
            except GuestMemoryError as exc:
                walk.problem(f"VMA {address:#x}: {exc}")
                continue
            if (v["start"], v["end"] - 1) != (first, last):
                walk.problem(f"VMA {address:#x} is not the one the tree has at {first:#x}")
                continue
            out.append((address, v))
        return out
    address, prev_end = mm["mmap"], 0
    while address:  # sorted and non-overlapping: a list that loops breaks the order
        if len(out) >= MAX_VMAS:
            walk.problem(f"more than {MAX_VMAS} VMAs")
            break
        try:
            v = reader.vma.read(kernel, address)
        except GuestMemoryError as exc:
            walk.problem(f"VMA {address:#x}: {exc}")
            break
        if not prev_end <= v["start"] < v["end"]:
            walk.problem(f"VMA {address:#x} is out of order ({v['start']:#x} after "
                         f"{prev_end:#x}): a broken or looping list")
            break
        out.append((address, v))
        prev_end, address = v["end"], v["next"]
    return out


def _file_identity(walk: _Walk, file: int) -> tuple[int, int, int, str]:
    """(major, minor, inode, path) of a mapped file, read once per file per call."""
    known = walk.files.get(file)
    if known is not None:
        return known
    reader, kernel = walk.reader, walk.kernel
    tasks = reader.tasks
    f = tasks.file.read(kernel, file)
    inode = f.get("inode") or walk.paths.dentry(f["dentry"]).get("inode", 0)
    i = reader.inode.read(kernel, inode)
    dev = walk.devices.get(i["sb"])
    if dev is None:
        dev = walk.devices[i["sb"]] = reader.sb.read(kernel, i["sb"])["dev"]
    path = _file_path(walk, f["mnt"], f["dentry"], i["ino"])
    out = walk.files[file] = (dev >> MINORBITS, dev & ((1 << MINORBITS) - 1), i["ino"], path)
    return out


def _file_path(walk: _Walk, vfsmount: int, dentry: int, ino: int) -> str:
    """What d_path() gives for an open file: a pseudo file's d_dname, else the path from
    the namespace root, with " (deleted)" once it is unlinked; newlines escaped as /proc
    escapes them."""
    tasks = walk.reader.tasks
    d = walk.paths.dentry(dentry)
    is_root = d["parent"] == dentry
    text = None
    if d.get("op") and (not is_root or dentry != walk.paths.mount(
            vfsmount - tasks.mount_mnt)["root"]):
        text = _dname(walk, d, dentry, ino)
    if text is None:
        text = tasks.d_path(vfsmount, dentry, walk.paths)
        if "hash_pprev" in d and not d["hash_pprev"] and not is_root:  # d_unlinked()
            text += " (deleted)"
    for c in PATH_ESCAPES:
        text = text.replace(c, f"\\{ord(c):03o}")
    return text


def _dname(walk: _Walk, d: dict, dentry: int, ino: int) -> str | None:
    """The name a pseudo file's d_op->d_dname makes, for the functions known here; None
    (use d_path) for a dentry without one or with one of another kind."""
    reader = walk.reader
    fn = walk.dname_of.get(d["op"])
    if fn is None:
        fn = walk.dname_of[d["op"]] = reader.dentry_ops.read(walk.kernel, d["op"])["d_dname"]
    fmt = reader.dnames.get(fn)
    if fmt is None:
        return None
    name = reader.tasks.name(d, dentry).decode("utf-8", "surrogateescape")
    return fmt(name, ino)


def _special_name(walk: _Walk, v: dict) -> str | None:
    """The name vm_ops->name() gives: a special mapping's own name ([vdso], [vvar]); None
    for any other VMA (other name() functions are not evaluated here)."""
    reader = walk.reader
    if not v["ops"] or reader.special_name is None:
        return None
    fn = walk.op_names.get(v["ops"])
    if fn is None:
        fn = walk.op_names[v["ops"]] = reader.ops.read(walk.kernel, v["ops"])["name"]
    if fn != reader.special_name or not v["private"]:
        return None
    name = reader.special.read(walk.kernel, v["private"])["name"]
    return walk.kernel.read_cstring(name, SPECIAL_NAME_MAX).decode("utf-8", "replace") \
        if name else None


def _anon_name(walk: _Walk, v: dict) -> str | None:
    pointer = v.get("anon_name")
    if not pointer or (v["file"] and not walk.reader.anon_name_of_files):
        return None
    raw = walk.kernel.read_cstring(pointer + walk.reader.anon_name_at, ANON_NAME_MAX)
    return raw.decode("utf-8", "surrogateescape")


def _name(walk: _Walk, v: dict, mm: dict) -> str:
    """The name show_map_vma prints for a VMA without a file (or with a named one)."""
    anon = _anon_name(walk, v)
    if v["file"]:
        return f"[anon_shmem:{anon}]" if anon is not None else ""
    special = _special_name(walk, v)
    if special is not None:
        return special
    if v["start"] < mm["brk"] and v["end"] > mm["start_brk"]:  # vma_is_initial_heap()
        return "[heap]"
    if v["start"] <= mm["start_stack"] <= v["end"]:  # vma_is_initial_stack()
        return "[stack]"
    return f"[anon:{anon}]" if anon is not None else ""


def _mapping(walk: _Walk, address: int, v: dict, mm: dict) -> Mapping:
    flags = v["flags"]
    if isinstance(flags, bytes):  # flags kept as a bitmap type: its first word has them
        flags = int.from_bytes(flags[:walk.reader.word], walk.reader.byteorder)
    perms = "".join(c if flags & bit else "-" for bit, c in (
        (VM_READ, "r"), (VM_WRITE, "w"), (VM_EXEC, "x"))) + ("s" if flags & VM_MAYSHARE else "p")
    major = minor = inode = offset = 0
    path = ""
    if v["file"]:
        major, minor, inode, path = _file_identity(walk, v["file"])
        offset = v["pgoff"] << walk.reader.page_shift
    name = _name(walk, v, mm)
    return Mapping(start=v["start"], end=v["end"], perms=perms, offset=offset, major=major,
                   minor=minor, inode=inode, path=name or path, address=address)


@view(title="Memory maps on {vm}", pid="the process (thread-group leader) to list",
      columns=(Column("START", lambda m: f"{m.start:08x}"), Column("END", lambda m: f"{m.end:08x}"),
               Column("PERMS", "perms"), Column("OFFSET", lambda m: f"{m.offset:08x}"),
               Column("DEV", lambda m: f"{m.major:02x}:{m.minor:02x}"),
               Column("INODE", "inode", True), Column("PATH", "path")))
def maps(kernel: LinuxKernel, pid: int) -> ViewResult[Mapping]:
    """List a process's memory mappings, as /proc/PID/maps shows them."""
    try:
        reader = kernel.helper(MapReader)
    except ProfileError as exc:
        return ViewResult(partial=f"memory maps not understood: {exc}")
    t = find_task(kernel, pid)
    if t is None:
        raise GuestMemoryError(f"no process {pid}")
    if not t["mm"] or t["flags"] & PF_KTHREAD:
        return ViewResult()  # a kernel thread, or a process that has exited: no mappings
    walk = _Walk(reader)
    try:
        mm = reader.mm.read(kernel, t["mm"])
    except GuestMemoryError as exc:
        return ViewResult(partial=f"mm of process {pid}: {exc}")
    result: ViewResult[Mapping] = ViewResult()
    for address, v in _vmas(walk, mm):
        if len(walk.paths.dentries) > MAX_DENTRIES:
            walk.problem(f"more than {MAX_DENTRIES} dentries in the mapped files' paths")
            break
        try:
            result.items.append(_mapping(walk, address, v, mm))
        except GuestMemoryError as exc:
            walk.problem(f"VMA {address:#x}: {exc}")
    result.partial = walk.partial
    return result

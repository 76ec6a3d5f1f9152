"""The maps and mounts views against the guest's own /proc/PID/maps and mountinfo on three
kernels (maple tree on 6.1 and 6.12, VMA list on 5.10; mount list on 5.10 and 6.1, mount
tree on 6.12), and on hostile copies of real guest RAM: loops and garbage in the maple tree,
the VMA list, the mount list and tree, and a mount whose parents loop. Each hostile case
must end within a bounded number of reads, with what could be read and `partial` set."""

import random
import shutil
import struct
from pathlib import Path

import pytest
from test_hostile import _edit, _timed

from cloudvmi.errors import CloudVMIError
from cloudvmi.os.linux.views.maps import (
    MAPLE_NODE_TYPE_MASK,
    MAPLE_NODE_TYPE_SHIFT,
    MapReader,
    maps,
)
from cloudvmi.os.linux.views.mounts import MountReader, mounts
from cloudvmi.os.linux.views.processes import find_task, processes
from cloudvmi.vm import attach

HOSTILE_READS = 20_000  # a normal maps() or mounts() call makes about 100 to 200


def _truth_maps(truth: Path) -> dict[int, list[str]]:
    """Every process's maps lines as the guest printed them; a process with none (a kernel
    thread, or one of the truth script's own that ended before its maps was read) left out."""
    out = {}
    for d in (truth / "proc").iterdir():
        raw = (d / "maps").read_bytes() if (d / "maps").exists() else b""
        if raw:
            out[int(d.name)] = raw.decode("utf-8", "surrogateescape").splitlines()
    return out


def _mountinfo(truth: Path, pid: int) -> list[str]:
    path = truth / "proc" / str(pid) / "mountinfo"
    return path.read_text("utf-8", "surrogateescape").splitlines() if path.exists() else []


def _mnt_ns(vm, pid: int) -> int:
    """The inode number of PID's mount namespace, read independently through typed objects."""
    kernel = vm.linux.kernel
    task = kernel.object("struct task_struct", find_task(kernel, pid)["address"])
    return task.nsproxy.mnt_ns.ns.inum.value_()


def _mm(vm, pid: int) -> int:
    """The address of PID's mm_struct, read independently through typed objects."""
    kernel = vm.linux.kernel
    return kernel.object("struct task_struct", find_task(kernel, pid)["address"]).mm.value_()


def _split(line: str) -> tuple[list[str], list[str]]:
    """A mountinfo line as (fields before " - ", fields after it)."""
    left, right = line.split(" - ", 1)
    return left.split(" "), right.split(" ")


def _same_mount(ours: str, theirs: str, mount_point: bool = True) -> None:
    """Equal but for the superblock options that filesystems add themselves (size=, mode=):
    ours are the generic ones, so they must lead theirs."""
    (ol, (otype, osrc, oopts)), (tl, (ttype, tsrc, topts)) = _split(ours), _split(theirs)
    if not mount_point:
        ol, tl = ol[:4] + ol[5:], tl[:4] + tl[5:]
    assert (ol, otype, osrc) == (tl, ttype, tsrc), (ours, theirs)
    generic = oopts.split(",")
    assert topts.split(",")[0] == generic[0] and set(generic) <= set(topts.split(",")), \
        (ours, theirs)


# -- against the guest's own view -------------------------------------------------------------


def test_maps_of_every_process_equal_guest_proc(seen):
    vm, truth = seen
    theirs = _truth_maps(truth)
    assert len(theirs) >= 15
    for pid, lines in sorted(theirs.items()):
        result = vm.linux.maps(pid)
        assert result.partial is None, (pid, result.partial)
        assert [m.line() for m in result.items] == lines, pid
    # The workload's threads process has a guard page and a stack per thread: more VMAs
    # than one maple leaf holds, so on 6.1 and later the walk crosses a tree of several
    # levels (14 VMAs on arm64, whose static binary has 2 LOAD segments, not x86-64's 4).
    busiest = max(theirs, key=lambda pid: len(theirs[pid]))
    reader = vm.linux.kernel.helper(MapReader)
    if reader.maple is not None:
        root = reader.mm.read(vm.linux.kernel, _mm(vm, busiest))["root"]
        assert reader.maple.is_node(root)
        assert (root >> MAPLE_NODE_TYPE_SHIFT) & MAPLE_NODE_TYPE_MASK != reader.maple.leaf


def test_maps_name_what_proc_names(seen):
    vm, truth = seen
    pid = next(pid for pid, lines in _truth_maps(truth).items()
               if any(line.endswith("/bin/workload") for line in lines))
    items = vm.linux.maps(pid).items
    names = {m.path for m in items}
    assert {"[heap]", "[stack]", "[vdso]", "[vvar]", "/bin/workload"} <= names
    text = [m for m in items if m.perms == "r-xp" and m.path == "/bin/workload"]
    assert text and text[0].inode and (text[0].major, text[0].minor)
    # ld separates code from the ELF headers by default on x86-64 only (-z separate-code):
    # there the text is mapped from an offset above 0; on arm64 the data segment is.
    assert any(m.offset > 0 and m.inode == text[0].inode for m in items
               if m.path == "/bin/workload")
    assert (text[0].offset > 0) == (vm.arch.name == "x86_64")


def test_maps_of_a_kernel_thread_and_of_no_process(seen):
    vm, _ = seen
    assert vm.linux.maps(2).items == [] and vm.linux.maps(2).partial is None
    with pytest.raises(CloudVMIError, match="no process"):
        vm.linux.maps(999_999)


def test_mounts_equal_init_mountinfo(seen):
    vm, truth = seen
    result = vm.linux.mounts()
    assert result.partial is None
    ns = _mnt_ns(vm, 1)
    ours = [m.line() for m in result.items if m.namespace == ns]
    theirs = _mountinfo(truth, 1)
    assert len(ours) == len(theirs) >= 5
    for a, b in zip(ours, theirs, strict=True):
        _same_mount(a, b)
    assert {m.fs_type for m in result.items if m.namespace == ns} >= {
        "rootfs", "proc", "sysfs", "devtmpfs", "tmpfs"}


def test_every_process_mountinfo_is_in_its_namespace(seen):
    """Each process's mountinfo is a part of its namespace's mounts (a chrooted process,
    like kdevtmpfs, sees less of it): the same ids, parents, devices, options and sources."""
    vm, truth = seen
    by_ns: dict[int, dict[int, str]] = {}
    for m in vm.linux.mounts().items:
        by_ns.setdefault(m.namespace, {})[m.mount_id] = m.line()
    assert len(by_ns) >= 1
    for p in processes(vm.linux.kernel).items:
        lines = _mountinfo(truth, p.pid)
        if not lines:
            continue
        ours = by_ns[_mnt_ns(vm, p.pid)]
        for line in lines:
            mount_id = int(line.split(" ", 1)[0])
            assert mount_id in ours, (p.pid, line)
            _same_mount(ours[mount_id], line, mount_point=False)


# -- hostile memory ------------------------------------------------------------------------------


@pytest.fixture
def raw61(guest_images, tmp_path):
    path = tmp_path / "ram.raw"
    shutil.copyfile(guest_images("6.1") / "6.1.raw", path)
    return path


def _copy(guest_images, tmp_path, version: str) -> Path:
    path = tmp_path / f"{version}.raw"
    shutil.copyfile(guest_images(version) / f"{version}.raw", path)
    return path


def _largest(kernel) -> tuple[int, list]:
    """The pid whose mm has the most VMAs, and its maps."""
    best = max((p for p in processes(kernel).items if not p.kernel_thread and p.state != "Z"),
               key=lambda p: len(maps(kernel, p.pid).items))
    return best.pid, maps(kernel, best.pid).items


def _maple_root(kernel, pid: int) -> tuple[int, list]:
    """(encoded root, its (first, last, child) ranges) of PID's maple tree."""
    reader = kernel.helper(MapReader)
    mm = reader.mm.read(kernel, find_task(kernel, pid)["mm"])
    root = mm["root"]
    leaf, ranges = reader.maple.node(kernel, root, 0, reader.maple.max_index)
    assert not leaf, "the tree should have more than one level"
    return root, ranges


def _write_slot(kernel, root: int, index: int, value: int) -> None:
    layout = kernel.helper(MapReader).maple
    record = layout.records[(root >> 3) & 0xF]
    node = root & ~layout.node_mask
    kernel.space.write(node + record.offset("slot") + 8 * index, struct.pack("<Q", value))


@pytest.mark.parametrize("target", ["itself", "kernel text", "outside RAM", "a leaf's bytes"])
def test_a_bad_maple_node_gives_a_marked_partial_result(raw61, target):
    mem, kernel, _ = _edit(raw61)
    pid, before = _largest(kernel)
    root, ranges = _maple_root(kernel, pid)
    layout = kernel.helper(MapReader).maple
    child_type = (ranges[0][2] >> 3) & 0xF
    if target == "itself":  # the root's first child is the root again
        _write_slot(kernel, root, 0, (root & ~layout.node_mask) | (root & 0x78) | 4)
    elif target == "kernel text":
        _write_slot(kernel, root, 0, kernel.text_virt + 0x1000 | child_type << 3 | 4)
    elif target == "outside RAM":
        _write_slot(kernel, root, 0, kernel.page_offset + (64 << 30) | child_type << 3 | 4)
    else:  # the first leaf's pivots and slots overwritten with noise
        leaf = ranges[0][2] & ~layout.node_mask
        kernel.space.write(leaf + 8, random.Random(7).randbytes(240))
    mem.close()
    lost_to = ranges[0][1]  # what the first child covered is lost, the rest is kept
    with attach(str(raw61), profile_cache=None) as vm:
        result = _timed(lambda: vm.linux.maps(pid), HOSTILE_READS)
    assert result.partial and "maple node" in result.partial, result.partial
    if target == "itself":
        assert "loop" in result.partial
    kept = [m.line() for m in before if m.start > lost_to]
    got = [m.line() for m in result.items]
    assert kept and got == kept, (got, kept)


def test_a_leaf_entry_that_is_not_its_vma(raw61):
    """The second leaf's first slot made to point at the process's first VMA: a VMA whose
    range is not where the tree has it is left out, every other one is listed."""
    mem, kernel, _ = _edit(raw61)
    pid, before = _largest(kernel)
    root, ranges = _maple_root(kernel, pid)
    first = ranges[1][0]
    _write_slot(kernel, ranges[1][2], 0, before[0].address)
    mem.close()
    with attach(str(raw61), profile_cache=None) as vm:
        result = _timed(lambda: vm.linux.maps(pid), HOSTILE_READS)
    assert result.partial and "is not the one the tree has" in result.partial, result.partial
    assert [m.line() for m in result.items] == [m.line() for m in before if m.start != first]


def test_a_cyclic_mount_list_gives_a_marked_partial_result(raw61):
    mem, kernel, _ = _edit(raw61)
    reader = kernel.helper(MountReader)
    assert reader.list_offset is not None  # 6.1 keeps a namespace's mounts on a list
    before = mounts(kernel).items
    ns = before[0].namespace
    mine = [m for m in before if m.namespace == ns]
    a, b = mine[1], mine[3]
    # b's next is a again: the ring never returns to the namespace's head.
    kernel.space.write(b.address + reader.link_offset,
                       struct.pack("<Q", a.address + reader.link_offset))
    mem.close()
    with attach(str(raw61), profile_cache=None) as vm:
        result = _timed(vm.linux.mounts, HOSTILE_READS)
    assert result.partial and "loops" in result.partial, result.partial
    assert [m.line() for m in result.items if m.namespace == ns] == \
        [m.line() for m in mine[:4]]
    others = [m.line() for m in before if m.namespace != ns]
    assert [m.line() for m in result.items if m.namespace != ns] == others


def test_mounts_whose_parents_loop(raw61):
    """Two mounts made each other's parent, each mounted on the other's root: their mount
    points cannot be rebuilt (a bounded walk), every other mount still is."""
    mem, kernel, _ = _edit(raw61)
    reader = kernel.helper(MountReader)
    before = mounts(kernel).items
    a, b = before[1], before[2]
    parent = reader.mount.offset("parent")
    mountpoint = kernel.btf.struct("mount").offset("mnt_mountpoint")
    root = reader.mount.offset("root")
    roots = {m.address: kernel.read_u64(m.address + root) for m in (a, b)}
    for m, other in ((a, b), (b, a)):
        kernel.space.write(m.address + parent, struct.pack("<Q", other.address))
        kernel.space.write(m.address + mountpoint, struct.pack("<Q", roots[other.address]))
    mem.close()
    with attach(str(raw61), profile_cache=None) as vm:
        result = _timed(vm.linux.mounts, HOSTILE_READS)
    assert result.partial and "deeper" in result.partial, result.partial
    assert [m.line() for m in result.items] == [
        m.line() for m in before if m.address not in (a.address, b.address)]


@pytest.mark.parametrize("version", ["6.1", "6.12"])
def test_the_cursor_bit_hides_a_mount_only_on_a_list(guest_images, tmp_path, version):
    """Bit 0x10000000 of mnt_flags marks a reader's cursor on a namespace's list (to 6.7),
    which is not a mount; kernels with the tree set it on every mount (MNT_ONRB, 6.8 to
    6.13), which must all still be listed."""
    path = _copy(guest_images, tmp_path, version)
    mem, kernel, _ = _edit(path)
    reader = kernel.helper(MountReader)
    before = mounts(kernel).items
    flags = reader.mount.offset("flags")
    for m in before:
        value = struct.unpack("<i", kernel.read(m.address + flags, 4))[0]
        kernel.space.write(m.address + flags, struct.pack("<i", value | 0x10000000))
    mem.close()
    with attach(str(path), profile_cache=None) as vm:
        result = vm.linux.mounts()
    assert result.partial is None
    on_list = reader.list_offset is not None
    assert [m.line() for m in result.items] == ([] if on_list else [m.line() for m in before])


def test_a_looping_mount_tree_gives_a_marked_partial_result(guest_images, tmp_path):
    """6.12 keeps a namespace's mounts in a red-black tree: a child pointing back up."""
    path = _copy(guest_images, tmp_path, "6.12")
    mem, kernel, _ = _edit(path)
    reader = kernel.helper(MountReader)
    assert reader.list_offset is None
    before = mounts(kernel).items
    ns = before[0].namespace
    mine = [m for m in before if m.namespace == ns]
    # The last mount's right child becomes the tree's root: having listed every mount, the
    # walk meets the root again.
    top = kernel.object("struct mount", mine[0].address).mnt_ns.mounts.rb_node.value_()
    last = mine[-1].address + reader.link_offset
    kernel.space.write(last + reader.rb.offset("right"), struct.pack("<Q", top))
    mem.close()
    with attach(str(path), profile_cache=None) as vm:
        result = _timed(vm.linux.mounts, HOSTILE_READS)
    assert result.partial and "loop" in result.partial, result.partial
    assert [m.line() for m in result.items if m.namespace == ns] == [m.line() for m in mine]


def test_a_looping_vma_list_gives_a_marked_partial_result(guest_images, tmp_path):
    """5.10 lists a process's VMAs (vm_next): a VMA pointing back to an earlier one."""
    path = _copy(guest_images, tmp_path, "5.10")
    mem, kernel, _ = _edit(path)
    reader = kernel.helper(MapReader)
    assert reader.maple is None
    pid, before = _largest(kernel)
    kernel.space.write(before[5].address + reader.vma.offset("next"),
                       struct.pack("<Q", before[2].address))
    mem.close()
    with attach(str(path), profile_cache=None) as vm:
        result = _timed(lambda: vm.linux.maps(pid), HOSTILE_READS)
    assert result.partial and "out of order" in result.partial, result.partial
    assert [m.line() for m in result.items] == [m.line() for m in before[:6]]


@pytest.mark.parametrize("seed", range(4))
def test_seeded_random_corruption_of_maps_and_mounts(raw61, seed):
    """Random bytes over the maple nodes, VMAs and mounts (seeded, so a failure can be
    replayed): both views answer within bounds, complete or marked partial, or raise a
    clear error."""
    rng = random.Random(seed)
    mem, kernel, _ = _edit(raw61)
    pid, vmas = _largest(kernel)
    root, ranges = _maple_root(kernel, pid)
    layout = kernel.helper(MapReader).maple
    targets = [root & ~layout.node_mask] + [r[2] & ~layout.node_mask for r in ranges]
    targets += [m.address for m in rng.sample(vmas, 4)]
    targets += [m.address for m in rng.sample(mounts(kernel).items, 3)]
    for address in targets:
        for _ in range(3):
            kernel.space.write(address + (rng.randrange(0, 240) & ~7), rng.randbytes(8))
    mem.close()
    with attach(str(raw61), profile_cache=None) as vm:
        for call in (lambda: vm.linux.maps(pid), vm.linux.mounts):
            try:
                result = _timed(call, HOSTILE_READS)
            except CloudVMIError:
                continue
            assert result is not None

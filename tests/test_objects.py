"""Typed objects over a fake address space (synthetic BTF), then over real guest dumps."""

import struct
import time

import pytest
from matrix import KERNELS
from test_btf import kernel_like

from cloudvmi.errors import GuestMemoryError, UnmappedAddress, WalkLimit
from cloudvmi.os.linux.btf import BTF, locate_btf
from cloudvmi.os.linux.objects import (
    NullPointerError,
    Object,
    TypedMemory,
    container_of,
    list_for_each,
    list_for_each_entry,
)

BASE = 0xFFFF888000000000


class FakeSpace:
    """Guest-virtual memory as one bytearray at BASE; everything else is unmapped."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.mem = bytearray(size)
        self.reads = 0

    def read(self, vaddr: int, size: int) -> bytes:
        self.reads += 1
        off = vaddr - BASE
        if off < 0 or off + size > len(self.mem) or size < 0:
            raise UnmappedAddress(vaddr)
        return bytes(self.mem[off:off + size])

    def write(self, vaddr: int, data: bytes) -> None:
        self.mem[vaddr - BASE:vaddr - BASE + len(data)] = data


def task_addr(i: int) -> int:
    return BASE + 0x1000 + i * 64


TASKS, NEXT, PREV = 8, 8, 16  # task_struct.tasks, and next/prev inside it


def write_task(space: FakeSpace, i: int, nxt: int, prv: int, mm: int = 0, pid: int | None = None,
               comm: bytes = b"", parent: int = 0, state: int = 0, flags: int = 0,
               nice: int = 0, on_rq: int = 0) -> int:
    a = task_addr(i)
    pid = i if pid is None else pid
    bits = (flags & 7) | ((nice & 0xF) << 3) | ((on_rq & 1) << 7)
    space.write(a, struct.pack("<iI", state, pid))
    space.write(a + TASKS, struct.pack("<QQQ", nxt, prv, mm))
    space.write(a + 32, comm.ljust(16, b"\0")[:16])
    space.write(a + 48, struct.pack("<I", bits) + struct.pack("<iQ", pid + 1000, parent))
    return a


@pytest.fixture
def env():
    e, ids = kernel_like()
    btf = BTF.from_bytes(e.blob())
    space = FakeSpace()
    return space, btf, ids


def ring(space: FakeSpace, n: int) -> list[int]:
    """Tasks 0..n-1 linked in a circle through .tasks; task 0 is the head (init_task)."""
    links = [task_addr(i) + TASKS for i in range(n)]
    for i in range(n):
        write_task(space, i, links[(i + 1) % n], links[i - 1], comm=b"task%d" % i,
                   parent=task_addr(0))
    return links


def test_members_and_values(env):
    space, btf, _ = env
    mm = BASE + 0x100
    space.write(mm, struct.pack("<Qi", 0xDEAD000, 3))
    a = write_task(space, 1, 0, 0, mm=mm, pid=42, comm=b"init", state=-1, flags=5, nice=-3,
                   on_rq=1, parent=task_addr(1))
    task = Object(space, btf, "struct task_struct", a)
    assert task.address_ == a and task.type_.name == "task_struct"
    assert int(task.pid) == 42 and task.pid.value_() == 42  # inside an anonymous union
    assert task.upid.value_() == 42
    assert int(task.tgid) == 1042  # inside an anonymous struct
    assert task.comm.string_() == b"init" and len(task.comm) == 16
    assert task.comm[0].value_() == ord("i")
    assert task.state.value_() == -1  # signed enum
    assert (task.flags.value_(), task.nice.value_(), task.on_rq.value_()) == (5, -3, True)
    assert task.nice.bit_field_size_ == 4
    assert task.mm.pgd.value_() == 0xDEAD000  # '.' through a pointer dereferences
    assert int(task.mm.mm_users) == 3
    assert task.mm.deref_().address_ == mm
    assert task.real_parent.pid.value_() == 42
    assert task.member_("tasks.prev").address_ == a + PREV
    assert len(task.read_()) == 64
    assert task.value_()["pid"] == 42
    assert hex(task.mm) == hex(mm) and bool(task.mm)
    assert not hasattr(task, "nope")
    with pytest.raises(AttributeError):
        task.pid.nope  # noqa: B018
    with pytest.raises(IndexError):
        task.comm[16]
    with pytest.raises(TypeError):
        bool(task)
    assert "task_struct" in repr(task) and "= 42" in repr(task.pid)


def test_null_and_unmapped(env):
    space, btf, _ = env
    a = write_task(space, 0, 0, 0, mm=0, parent=0x1234)
    task = Object(space, btf, "struct task_struct", a)
    assert not task.mm
    with pytest.raises(NullPointerError) as info:
        task.mm.pgd  # noqa: B018
    assert isinstance(info.value, GuestMemoryError) and isinstance(info.value, UnmappedAddress)
    with pytest.raises(UnmappedAddress):
        task.real_parent.pid.value_()
    assert "unreadable" in repr(task.real_parent.pid)
    with pytest.raises(UnmappedAddress):
        Object(space, btf, "struct task_struct", 0x1000).pid.value_()


def test_pointers_values_casts(env):
    space, btf, ids = env
    links = ring(space, 3)
    head = Object(space, btf, ids["task_struct"], task_addr(0))
    nxt = head.tasks.next
    assert nxt.value_() == links[1]
    assert nxt.next.value_() == links[2]  # list_head * -> list_head.next
    assert nxt[0].address_ == links[1]
    t1 = container_of(nxt, "struct task_struct", "tasks")
    assert t1.address_ == task_addr(1) and t1.comm.string_() == b"task1"
    assert container_of(links[2], "struct task_struct", "tasks", space=space,
                        btf=btf).pid.value_() == 2
    assert container_of(head.tasks, "struct task_struct", "tasks").address_ == task_addr(0)
    ptr = head.address_of_()
    assert ptr.address_ is None and ptr.value_() == task_addr(0)
    assert ptr.pid.value_() == 0 and ptr.deref_().address_ == task_addr(0)
    assert ptr.read_() == struct.pack("<Q", task_addr(0))
    as_list = head.tasks.cast_("struct list_head")
    assert as_list.next.value_() == links[1]
    v = TypedMemory(space, btf).value("struct task_struct *", task_addr(2))
    assert v.comm.string_() == b"task2" and v[0].pid.value_() == 2
    arr = Object(space, btf, ids["task[2]"], task_addr(0))
    assert [t.pid.value_() for t in arr] == [0, 1]


def test_string_bounds(env):
    space, btf, _ = env
    end = BASE + len(space.mem)
    space.write(end - 5, b"abcd\0")
    s = Object(space, btf, "char *", value=end - 5)
    assert s.string_() == b"abcd"
    space.write(end - 3, b"xyz")  # no NUL before the unmapped end
    with pytest.raises(UnmappedAddress):
        Object(space, btf, "char *", value=end - 3).string_()
    assert Object(space, btf, "char *", value=end - 3).string_(limit=2) == b"xy"
    with pytest.raises(NullPointerError):
        Object(space, btf, "char *", value=0).string_()
    space.write(BASE, b"A" * 10000)
    assert len(Object(space, btf, "char *", value=BASE).string_()) == 4096


def test_list_walk(env):
    space, btf, _ = env
    ring(space, 5)
    tasks = list(list_for_each_entry("struct task_struct", task_addr(0) + TASKS, "tasks",
                                     space=space, btf=btf))
    assert [t.pid.value_() for t in tasks] == [1, 2, 3, 4]
    head = Object(space, btf, "struct task_struct", task_addr(0))
    walked = list_for_each_entry("struct task_struct", head.tasks, "tasks")
    assert [t.address_ for t in walked] == [task_addr(i) for i in (1, 2, 3, 4)]
    assert len(list(list_for_each(head.tasks))) == 4
    ring(space, 1)  # an empty list: head points at itself
    assert list(list_for_each(head.tasks)) == []


def test_cyclic_list_raises_walk_limit_with_partial(env):
    space, btf, _ = env
    links = ring(space, 4)
    # task3.next -> task1: a loop that never returns to the head.
    space.write(task_addr(3) + TASKS + NEXT - 8, struct.pack("<Q", links[1]))
    seen = []
    start = time.perf_counter()
    with pytest.raises(WalkLimit) as info:
        for t in list_for_each_entry("struct task_struct", task_addr(0) + TASKS, "tasks",
                                     space=space, btf=btf):
            seen.append(t.pid.value_())
    assert time.perf_counter() - start < 1
    assert seen == [1, 2, 3]
    assert [t.pid.value_() for t in info.value.partial] == [1, 2, 3]
    with pytest.raises(WalkLimit) as info:
        list(list_for_each(task_addr(0) + TASKS, space=space, btf=btf))
    assert info.value.partial == links[1:]


def test_list_limit_null_and_unmapped(env):
    space, btf, _ = env
    links = ring(space, 50)
    with pytest.raises(WalkLimit) as info:
        list(list_for_each_entry("struct task_struct", links[0], "tasks", space=space,
                                 btf=btf, limit=10))
    assert len(info.value.partial) == 10
    space.write(links[5], struct.pack("<Q", 0))
    with pytest.raises(NullPointerError) as info:
        list(list_for_each_entry("struct task_struct", links[0], "tasks", space=space, btf=btf))
    assert [t.pid.value_() for t in info.value.partial] == [1, 2, 3, 4, 5]
    space.write(links[5], struct.pack("<Q", 0x4000))
    with pytest.raises(UnmappedAddress) as info:
        list(list_for_each_entry("struct task_struct", links[0], "tasks", space=space, btf=btf))
    assert len(info.value.partial) == 5
    with pytest.raises(TypeError):
        list(list_for_each_entry("struct task_struct", links[0], "tasks"))  # no space/btf


def test_hot_path_is_cached(env):
    space, btf, _ = env
    ring(space, 1000 if len(space.mem) > 1000 * 64 + 0x1000 else 100)
    mm = BASE + 0x100
    space.write(mm, struct.pack("<Qi", 0xDEAD000, 3))
    head = Object(space, btf, "struct task_struct", task_addr(0))
    list(list_for_each_entry("struct task_struct", head.tasks, "tasks"))  # warm the caches
    plans = len(btf.cache)
    start = time.perf_counter()
    rows = []
    for t in list_for_each_entry("struct task_struct", head.tasks, "tasks"):
        rows.append((int(t.pid), int(t.tgid), t.comm.string_(), int(t.state), int(t.flags),
                     int(t.nice), bool(t.on_rq), int(t.real_parent.pid), int(t.mm),
                     int(t.tasks.prev)))
    elapsed = time.perf_counter() - start
    assert len(rows) == 999 and rows[-1][0] == 999
    assert len(btf.cache) == plans
    assert elapsed < 1.0, f"1000 tasks x 10 fields took {elapsed:.3f}s"


# ----- real guest dumps: walk init_task.tasks and compare with the guest's ps

KMAP = 0xFFFFFFFF80000000


class KernelSpace:
    """Just enough translation for these tests: the kernel image and the direct map."""

    def __init__(self, mem, phys_base: int, page_offset: int) -> None:
        self.mem, self.phys_base, self.page_offset = mem, phys_base, page_offset

    def read(self, vaddr: int, size: int) -> bytes:
        if vaddr >= KMAP:
            return self.mem.read(vaddr - KMAP + self.phys_base, size)
        if self.page_offset <= vaddr < self.page_offset + (1 << 46):
            return self.mem.read(vaddr - self.page_offset, size)
        raise UnmappedAddress(vaddr)


@pytest.mark.parametrize("version", KERNELS)
def test_real_task_list(version, capsys, guest_images):
    images = guest_images(version)
    raw, syms_path, ps = (images / f"{version}.{x}" for x in ("raw", "kallsyms", "ps"))
    from cloudvmi.memory.mapped import MappedFileMemory

    syms: dict[str, int] = {}
    for line in syms_path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            syms.setdefault(parts[2], int(parts[0], 16))
    mem = MappedFileMemory(raw)
    try:
        paddr, size = locate_btf(mem)
        btf = BTF.from_bytes(mem.read(paddr, size))
        phys_base = paddr - (syms["__start_BTF"] - KMAP)
        page_offset = int.from_bytes(mem.read(syms["page_offset_base"] - KMAP + phys_base, 8),
                                     "little")
        space = KernelSpace(mem, phys_base, page_offset)
        init = Object(space, btf, "struct task_struct", syms["init_task"])
        assert init.pid.value_() == 0 and init.comm.string_() == b"swapper/0"
        start = time.perf_counter()
        rows = {}
        for t in list_for_each_entry("struct task_struct", init.tasks, "tasks"):
            mm = t.mm
            rows[int(t.pid)] = (int(t.real_parent.pid), t.comm.string_(),
                                mm.pgd.value_() if mm else 0)
        elapsed = time.perf_counter() - start
    finally:
        mem.close()
    assert rows[1][1] == b"init" and rows[1][2] != 0 and rows[2][2] == 0  # kthreadd: no mm
    if ps.exists():
        expected = {}
        for line in ps.read_text().splitlines()[1:]:
            f = line.split()
            if len(f) >= 3 and f[0].isdigit():
                expected[int(f[0])] = (int(f[1]), f[2].encode())
        missing = set(expected) - set(rows)
        assert len(missing) <= 2, f"tasks in ps but not walked: {sorted(missing)}"
        for pid, (ppid, _comm) in expected.items():
            if pid in rows:
                assert rows[pid][0] == ppid
    with capsys.disabled():
        print(f"\n{version}: walked {len(rows)} tasks (3 fields + mm deref each) in "
              f"{elapsed * 1000:.1f} ms")

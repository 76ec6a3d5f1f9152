"""The `files` and `env` views against the guest's own /proc (fd links, fdinfo, environ) on
5.10, 6.1 and 6.12, and on hostile copies of a real 6.1 guest's memory."""

import random
import shutil
import struct
from pathlib import Path

import pytest
from test_hostile import _edit, _timed

from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.views.files import (
    MAX_BAD_FDS,
    MAX_FDS,
    FileReader,
    files,
    sockets_by_inode,
)
from cloudvmi.os.linux.views.processes import processes
from cloudvmi.vm import attach

# Files the lab's init points running workloads' output at (init.sh: counter, user): they
# are written between the guest's capture of its view and the pause, so offsets only grow.
GROWING = {"/tmp/counter.log", "/tmp/user.log"}
SAVED_FD = 10  # busybox sh keeps descriptors it saves around a redirection at 10 and above
HOSTILE_READS = 200_000  # a files listing of the whole 6.1 guest makes about 2,500


def _truth_fds(truth: Path) -> dict[int, dict[int, dict]]:
    """pid -> fd -> {path, flags, pos, mnt_id, ino?} from proc/PID/fd and fdinfo/FD. Pids
    without an fd file (kernel threads, the capture's own short-lived processes) are left
    out; 5.10's fdinfo has no "ino:" line."""
    out: dict[int, dict[int, dict]] = {}
    for d in (truth / "proc").iterdir():
        if not (d / "fd").exists():
            continue
        fds = out[int(d.name)] = {}
        for line in (d / "fd").read_bytes().split(b"\n"):
            if not line:
                continue
            n, target = line.split(b"\t", 1)
            info = dict(x.split(":", 1) for x in (d / "fdinfo" / n.decode()).read_text()
                        .splitlines() if ":" in x)
            fds[int(n)] = {"path": target.decode("utf-8", "surrogateescape"),
                           "flags": int(info["flags"].strip(), 8), "pos": int(info["pos"]),
                           "mnt_id": int(info["mnt_id"]),
                           "ino": int(info["ino"]) if "ino" in info else None}
    return out


def _capturing_shell(truth_fds: dict[int, dict[int, dict]]) -> int | None:
    """The serial-console shell that ran the capture (its stdin is /dev/ttyS*, or on arm64
    the PL011's /dev/ttyAMA*)."""
    return next((pid for pid, fds in truth_fds.items()
                 if fds.get(0, {}).get("path", "").startswith(("/dev/ttyS", "/dev/ttyAMA"))),
                None)


def _workload_pid(truth: Path) -> int:
    """The `workload fds 500 /run/many` process: the one with WL_MARK in its environment."""
    return next(int(d.name) for d in (truth / "proc").iterdir()
                if b"WL_MARK=env-view\0" in (d / "environ").read_bytes())


def test_every_descriptor_matches_proc(seen):
    vm, truth = seen
    result = vm.linux.files()
    assert result.partial is None
    ours: dict[int, dict[int, object]] = {}
    for f in result.items:
        assert (f.pid, f.fd) not in ours.get(f.pid, {}), "a descriptor listed twice"
        ours.setdefault(f.pid, {})[f.fd] = f
    theirs = _truth_fds(truth)
    shell = _capturing_shell(theirs)
    compared = 0
    for pid, fds in theirs.items():
        mine = ours.get(pid, {})
        missing = set(fds) - set(mine)
        if pid == shell:  # what it saved for the capture's redirections is gone by now
            missing = {fd for fd in missing if fd < SAVED_FD}
        assert not missing, f"pid {pid}: /proc shows fds {sorted(missing)} we miss"
        assert not set(mine) - set(fds), f"pid {pid}: fds /proc did not show"
        for fd, want in fds.items():
            if fd not in mine:
                continue
            got = mine[fd]
            assert got.error is None, (pid, fd, got.error)
            assert (got.path, got.flags, got.mnt_id) == (
                want["path"], want["flags"], want["mnt_id"]), (pid, fd)
            if want["ino"] is not None:
                assert got.inode == want["ino"], (pid, fd)
            if want["path"] in GROWING:
                assert got.pos >= want["pos"], (pid, fd)
            else:
                assert got.pos == want["pos"], (pid, fd)
            compared += 1
    assert compared > 700


def test_workload_descriptors_of_every_kind(seen):
    vm, truth = seen
    pid = _workload_pid(truth)
    mine = {f.fd: f for f in vm.linux.files(pid=pid).items}
    assert len(mine) >= 500
    paths = [f.path for f in mine.values()]
    kinds = {f.kind for f in mine.values()}
    assert {"file", "dir", "pipe", "anon", "char"} <= kinds
    assert {"anon_inode:[eventfd]", "anon_inode:[eventpoll]", "anon_inode:[timerfd]",
            "anon_inode:[signalfd]", "anon_inode:inotify", "/memfd:wl-memfd (deleted)",
            "/dev/null", "/run/many"} <= set(paths)
    assert sum(p.endswith(" (deleted)") and "/gone-" in p for p in paths) >= 40
    assert any("\t" in p for p in paths)
    for f in mine.values():
        expected = ("pipe" if f.path.startswith("pipe:[") else
                    "anon" if f.path.startswith("anon_inode:") else None)
        if expected:
            assert f.kind == expected, f
        if f.kind == "pipe":
            assert f.path == f"pipe:[{f.inode}]"
    # the same struct file behind fd 1 and its dup at 13
    assert mine[13].address == mine[1].address and mine[13].path == mine[1].path


def test_one_process_and_kernel_threads(seen):
    vm, truth = seen
    everything = vm.linux.files()
    pid = _workload_pid(truth)
    assert vm.linux.files(pid=pid).items == [f for f in everything.items if f.pid == pid]
    kthreads = {p.pid for p in vm.linux.processes().items if p.kernel_thread}
    assert kthreads and not {f.pid for f in everything.items} & kthreads
    with pytest.raises(GuestMemoryError):
        vm.linux.files(pid=1 << 22)  # PID_MAX_LIMIT: no pid reaches it


def test_socket_owners_for_the_sockets_view(seen):
    vm, truth = seen
    owners = sockets_by_inode(vm.linux.kernel)
    from_files = sorted((f.pid, f.fd) for f in vm.linux.files().items if f.kind == "socket")
    assert sorted((f.pid, f.fd) for fs in owners.values() for f in fs) == from_files
    assert len(from_files) >= 200  # the net workload's sockets
    for inode, fs in owners.items():
        assert all(f.inode == inode and f.path == f"socket:[{inode}]" and f.private_data
                   for f in fs)
    theirs = _truth_fds(truth)
    for pid, fds in theirs.items():
        for fd, want in fds.items():
            if want["path"].startswith("socket:["):
                inode = int(want["path"][8:-1])
                assert (pid, fd) in {(f.pid, f.fd) for f in owners.get(inode, [])}


def test_environment_is_byte_for_byte_proc_environ(seen):
    vm, truth = seen
    compared = 0
    for d in (truth / "proc").iterdir():
        if not (d / "environ").exists():
            continue
        want = (d / "environ").read_bytes()
        result = vm.linux.env(int(d.name))
        assert result.partial is None, d.name
        got = b"".join((e.name if e.value is None else f"{e.name}={e.value}")
                       .encode("utf-8", "surrogateescape") + b"\0" for e in result.items)
        assert got == want, d.name
        compared += bool(want)
    assert compared >= 15
    variables = {e.name: e.value for e in vm.linux.env(_workload_pid(truth)).items}
    assert variables["WL_MARK"] == "env-view" and variables["WL_ODD"] == "a b=c"


# -- hostile memory --------------------------------------------------------------------------
@pytest.fixture
def raw_copy(guest_images, tmp_path):
    path = tmp_path / "ram.raw"
    shutil.copyfile(guest_images("6.1") / "6.1.raw", path)
    return path


def _workload(kernel, tasks):
    """The fds workload's task record and fd table (files_struct, fdtable) in KERNEL."""
    p = next(p for p in processes(kernel).items if p.cmdline[:2] == ["/bin/workload", "fds"])
    files = kernel.helper(FileReader)
    t = tasks.task.read(kernel, p.address)
    fdt_address = files.files.read(kernel, t["files"])["fdt"]
    return p, t, fdt_address, files.fdtable.read(kernel, fdt_address), files


def files_of(kernel, pid: int) -> list:
    """PID's descriptors in an intact image, before it is edited."""
    result = files(kernel, pid)
    assert result.partial is None
    return result.items


def _hostile(path: Path, call):
    """CALL(vm.linux) on the edited image, its reads of guest memory counted and bounded
    (the kernel is found first: the view's own reads are what is bounded)."""
    with attach(str(path), profile_cache=None) as vm:
        vm.linux.ready()
        return _timed(lambda: call(vm.linux), HOSTILE_READS)


def _listing(path: Path, pid: int):
    return _hostile(path, lambda linux: linux.files(pid=pid))


def test_absurdly_large_fd_table_is_bounded(raw_copy):
    mem, kernel, tasks = _edit(raw_copy)
    p, _, fdt_address, fdt, files = _workload(kernel, tasks)
    intact = {f.fd: f for f in files_of(kernel, p.pid)}
    kernel.space.write(fdt_address + files.fdtable.offset("max_fds"),
                       struct.pack("<I", 0xFFFF_FFF0))
    mem.close()
    result = _listing(raw_copy, p.pid)
    assert result.partial and f"read the first {MAX_FDS}" in result.partial
    mine = {f.fd: f for f in result.items}
    # what lies past the real table's end is garbage; the real slots are all there, intact
    assert all(mine[fd] == f for fd, f in intact.items())


def test_fd_table_pointing_back_at_itself(raw_copy):
    """Every slot holds the address of the slot array itself: one 'file' that is the table."""
    mem, kernel, tasks = _edit(raw_copy)
    p, _, _, fdt, _ = _workload(kernel, tasks)
    kernel.space.write(fdt["fd"], struct.pack("<Q", fdt["fd"]) * fdt["max_fds"])
    mem.close()
    result = _listing(raw_copy, p.pid)
    assert len(result.items) == fdt["max_fds"]
    assert all(f.error for f in result.items)


def test_wild_file_pointers_are_errors_of_their_own_descriptors(raw_copy):
    mem, kernel, tasks = _edit(raw_copy)
    p, _, _, fdt, _ = _workload(kernel, tasks)
    intact = {f.fd: f for f in files_of(kernel, p.pid)}
    wild = {14: kernel.page_offset + (64 << 30),  # direct map, far beyond this guest's RAM
            15: intact[15].address + 4,  # inside a real struct file, misaligned
            16: kernel.symbols.lookup("init_task"),  # the kernel image: not a slab object
            17: intact[1].address + 64}  # inside a real struct file: not one
    for fd, pointer in wild.items():
        kernel.space.write(fdt["fd"] + 8 * fd, struct.pack("<Q", pointer))
    mem.close()
    result = _listing(raw_copy, p.pid)
    mine = {f.fd: f for f in result.items}
    assert set(mine) == set(intact)
    for fd, f in mine.items():
        if fd in wild:
            assert f.error and not f.path, fd
        else:
            assert f == intact[fd], fd


def test_a_table_of_garbage_is_given_up(raw_copy):
    """Distinct pointers into RAM that are no struct file: after MAX_BAD_FDS of them the
    rest of the table is skipped, and the result says so."""
    mem, kernel, tasks = _edit(raw_copy)
    p, _, _, fdt, _ = _workload(kernel, tasks)
    garbage = b"".join(struct.pack("<Q", kernel.page_offset + 0x100000 + 4096 * i)
                       for i in range(fdt["max_fds"]))
    kernel.space.write(fdt["fd"], garbage)
    mem.close()
    result = _listing(raw_copy, p.pid)
    assert result.partial and "rest of table skipped" in result.partial
    assert len(result.items) == MAX_BAD_FDS and all(f.error for f in result.items)


def test_cyclic_directory_gives_path_errors_not_a_hang(raw_copy):
    """/run/many's parent made one of its own files: a path walk that never reaches a root.
    Those descriptors carry an error and keep their flags, offset and inode."""
    mem, kernel, tasks = _edit(raw_copy)
    p, _, _, _, _ = _workload(kernel, tasks)
    intact = {f.fd: f for f in files_of(kernel, p.pid)}
    directory = next(f for f in intact.values() if f.path == "/run/many")
    child = next(f for f in intact.values() if f.path.startswith("/run/many/file-"))
    dir_dentry = tasks.file.read(kernel, directory.address)["dentry"]
    child_dentry = tasks.file.read(kernel, child.address)["dentry"]
    kernel.space.write(dir_dentry + tasks.dentry.offset("parent"),
                       struct.pack("<Q", child_dentry))
    mem.close()
    result = _listing(raw_copy, p.pid)
    mine = {f.fd: f for f in result.items}
    assert set(mine) == set(intact)
    for fd, f in mine.items():
        want = intact[fd]
        if want.path.startswith("/run/many"):
            assert f.error and "bound" in f.error and not f.path, fd
            assert (f.flags, f.pos, f.inode) == (want.flags, want.pos, want.inode)
        else:
            assert f == want, fd


@pytest.mark.parametrize("seed", range(4))
def test_seeded_random_corruption_of_files(raw_copy, seed):
    """Random bytes over random fields of 24 struct files and their dentries (seeded, so a
    failure can be replayed): the listing answers, every descriptor still listed once, and
    what broke is an item's error or the partial reason, never an exception."""
    rng = random.Random(seed)
    mem, kernel, tasks = _edit(raw_copy)
    intact = files(kernel).items
    victims = rng.sample(intact, 24)
    # Every target is found before anything is broken: descriptors of forked processes
    # share one struct file, whose dentry pointer an earlier victim may have scrambled.
    targets = [(v.address, tasks.file.read(kernel, v.address)["dentry"]) for v in victims]
    for address, dentry in targets:
        for base, size in ((address, tasks.file.struct.size),
                           (dentry, tasks.dentry.struct.size)):
            for _ in range(3):
                offset = rng.randrange(0, size - 8) & ~7
                kernel.space.write(base + offset, rng.randbytes(8))
    mem.close()
    result = _hostile(raw_copy, lambda linux: linux.files())
    keys = [(f.pid, f.fd) for f in result.items]
    assert len(keys) == len(set(keys)) and len(keys) <= len(intact)
    assert all(isinstance(f.path, str) for f in result.items)


def test_environment_claims_are_bounded(raw_copy):
    mem, kernel, tasks = _edit(raw_copy)
    p, t, _, _, _ = _workload(kernel, tasks)
    mm = tasks.mm.read(kernel, t["mm"])
    kernel.space.write(t["mm"] + tasks.mm.offset("env_end"),
                       struct.pack("<Q", mm["env_start"] + (1 << 40)))
    mem.close()
    result = _hostile(raw_copy, lambda linux: linux.env(p.pid))
    assert result.partial and "claims" in result.partial
    names = [e.name for e in result.items]
    assert names[:7] == ["SHLVL", "HOME", "TERM", "PATH", "PWD", "WL_MARK", "WL_ODD"]


def test_environment_out_of_memory_is_partial(raw_copy):
    mem, kernel, tasks = _edit(raw_copy)
    p, t, _, _, _ = _workload(kernel, tasks)
    kernel.space.write(t["mm"] + tasks.mm.offset("env_start"), struct.pack("<Q", 0x1000))
    mem.close()
    result = _hostile(raw_copy, lambda linux: linux.env(p.pid))
    assert result.partial and "not mapped" in result.partial and not result.items

"""Views from outside against the guest's own /proc, on real guests of three kernels."""

import json
import re
import subprocess
import sys
import time
import uuid

import pytest
from matrix import KERNELS

from cloudvmi.lab import guest as lab
from cloudvmi.vm import attach

import oracle


@pytest.fixture(scope="module", params=KERNELS)
def live(request, profile_dir):
    """One guest per kernel, attached with a fresh profile cache (the first attach is cold)."""
    g = lab.up(f"lv{uuid.uuid4().hex[:6]}-{request.param.replace('.', '')}",
               kernel=request.param)
    vm = attach(g.name, profile_cache=profile_dir)
    try:
        yield g, vm
    finally:
        vm.close()
        lab.down(g.name)


def _compare(ours, theirs: dict[int, oracle.GuestTask], after=None) -> dict[int, object]:
    """Same processes, parents, names, command lines (byte for byte), uids, executables,
    thread counts and stable states; returns ours by pid. The guest runs while its /proc is
    read, so OURS is read before and AFTER after: a process must be in one of them."""
    mine = {p.pid: p for p in ours.items}
    later = {p.pid: p for p in after.items} if after is not None else mine
    assert ours.partial is None and (after is None or after.partial is None)
    missing = set(theirs) - set(mine) - set(later)
    assert not missing, f"processes /proc shows that we miss: {sorted(missing)}"
    extra = [p for pid, p in mine.items()
             if pid not in theirs and pid in later and not p.kernel_thread]
    assert not extra, f"user processes we show that /proc did not: {extra}"
    for pid, want in theirs.items():
        got = mine.get(pid) or later[pid]
        assert (got.ppid, _stable(got.comm), got.cmdline) == (
            want.ppid, _stable(want.comm), want.cmdline), pid
        if want.cmdline_raw.endswith(b"\0"):  # not rewritten by setproctitle()
            raw = b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in got.cmdline)
            assert raw == want.cmdline_raw, pid
        if want.uid is not None:
            assert got.uid == want.uid, pid
        if want.nr_threads is not None and want.state != "Z":
            assert got.threads == want.nr_threads, pid
        if not got.kernel_thread and want.state != "Z":
            assert got.exe == want.exe, pid
        if pid in mine and pid in later and mine[pid].state == later[pid].state:
            # A kernel thread may sleep in D for an instant and be back in S (PREEMPT_RT's
            # timer and RCU threads do it constantly): that is a race, not a difference.
            asleep = got.kernel_thread and {got.state, want.state} <= {"S", "D", "I"}
            assert got.state == want.state or "R" in (got.state, want.state) or asleep, pid
    return mine


def _stable(comm: str) -> str:
    """A workqueue worker's name ends with the work it last ran, which changes from moment to
    moment; the rest of the name must match exactly."""
    if comm.startswith("kworker/") and not comm.startswith("kworker/R-"):
        return comm.split("-", 1)[0].split("+", 1)[0]
    return comm


def test_process_list_equals_guest_proc(live):
    g, vm = live
    before = vm.linux.processes()
    theirs = oracle.processes(g)
    mine = _compare(before, theirs, vm.linux.processes())
    # The workload's hard cases are really there and really equal.
    odd = [p for p in mine.values() if p.comm == "odd (name) ü"]
    assert odd and odd[0].cmdline[3:] == ["odd", "arg with spaces", "(paren)", "ünïcödé"]
    long = [p for p in mine.values() if p.cmdline[3:4] == ["long"]]
    assert long and len(long[0].cmdline[4]) == 10000
    assert any(p.state == "Z" and theirs[p.pid].state == "Z" for p in mine.values())
    multi = [p for p in mine.values() if p.cmdline[:2] == ["/bin/workload", "threads"]]
    assert multi and multi[0].threads == 4 and multi[0].exe == "/bin/workload"
    assert mine[1].cmdline == ["/bin/sh", "/init"] and mine[1].uid == 0
    empty = [p for p in mine.values() if p.cmdline[3:4] == ["empty-args"]]
    assert empty and empty[0].cmdline[4:] == ["", "middle", ""]
    assert any(p.uid == 1000 for p in mine.values())  # the workload's unprivileged counter


def test_threads_equal_guest_proc(live):
    g, vm = live
    theirs = oracle.processes(g, threads=True)
    mine = vm.linux.threads()
    assert mine.partial is None
    by_process: dict[int, dict[int, str]] = {}
    for t in mine.items:
        by_process.setdefault(t.tgid, {})[t.tid] = _stable(t.comm)
    for pid, want in theirs.items():
        assert by_process.get(pid) == {tid: _stable(c) for tid, c in want.threads.items()}, pid
    workload = next(p for p in theirs.values() if p.cmdline[:2] == ["/bin/workload", "threads"])
    assert sorted(by_process[workload.pid].values()) == [
        "wl-thread-0", "wl-thread-1", "wl-thread-2", "workload"]


def test_modules_equal_guest_proc_modules(live):
    g, vm = live
    theirs = oracle.modules(g)
    mine = vm.linux.modules()
    assert mine.partial is None
    assert {m.name: (m.size, m.refcount, m.state) for m in mine.items} == theirs
    # modules that use each other: their reference counts say so (llc: stp and garp)
    assert {"dummy", "8021q", "garp", "mrp", "stp", "llc"} <= set(theirs)
    assert theirs["llc"][1] >= 2 and theirs["stp"][1] >= 1


def test_kernel_info_equals_guest(live):
    g, vm = live
    release = g.console.check("uname -r").strip()
    cmdline = g.console.check("cat /proc/cmdline").strip()
    before = float(g.console.check("cat /proc/uptime").split()[0])
    info = vm.linux.info()
    after = float(g.console.check("cat /proc/uptime").split()[0])
    assert info.release == release and release in info.version
    assert info.cmdline == cmdline
    assert before - 1 <= info.uptime <= after + 1
    assert info.hostname == g.console.check("hostname").strip()
    # Independent sources: the CPU's CR4.LA57 from QEMU, _text from the guest's own
    # /proc/kallsyms, the physical start of its code from /proc/iomem.
    cr4 = int(re.search(r"CR4=([0-9a-f]+)", vm.qmp.hmp("info registers")).group(1), 16)
    assert info.paging_levels == (5 if cr4 & (1 << 12) else 4)
    text = int(g.console.check("grep ' _text$' /proc/kallsyms").split()[0], 16)
    assert info.text_virtual == text
    assert info.kaslr_virtual_slide == text - 0xFFFF_FFFF_8100_0000
    code = g.console.check("grep 'Kernel code' /proc/iomem").split("-")[0].strip()
    assert info.text_physical == int(code, 16)


def test_dump_gives_the_same_results_as_live(live, tmp_path):
    """dump-guest-memory of the paused guest: every view equal to the live one."""
    g, vm = live
    dump = tmp_path / "guest.elf"
    vm.pause()
    try:
        live_views = (vm.linux.processes(), vm.linux.threads(), vm.linux.modules())
        vm.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{dump}")
    finally:
        vm.resume()
    with attach(str(dump), profile_cache=None) as offline:
        dump_views = (offline.linux.processes(), offline.linux.threads(),
                      offline.linux.modules())
        assert offline.linux.info().release == vm.linux.info().release
    for a, b in zip(live_views, dump_views, strict=True):
        assert a == b


def test_cli_json_live_and_dump(live, tmp_path):
    g, vm = live
    dump = tmp_path / "guest.elf"
    vm.pause()
    try:
        vm.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{dump}")
        vm.qmp.close()  # the CLI needs the monitor: QEMU serves one QMP client at a time
        vm.qmp = None
        run = [sys.executable, "-m", "cloudvmi.cli.main"]
        from_dump = json.loads(subprocess.run([*run, "ps", str(dump), "--json"], check=True,
                                              capture_output=True, text=True).stdout)
        live_json = json.loads(subprocess.run([*run, "ps", g.name, "--json"], check=True,
                                              capture_output=True, text=True).stdout)
    finally:
        from cloudvmi.control.qmp import QMP

        vm.qmp = QMP(str(g.qmp_path))
        left = vm.qmp.execute("query-status")["status"]
        vm.resume()
    assert left == "paused"  # the CLI found the guest paused and left it paused
    assert live_json == from_dump
    assert any(p["comm"] == "odd (name) ü" for p in live_json["items"])


def test_live_guest_is_left_running_and_intact(live):
    g, vm = live
    assert vm.running()
    start = time.monotonic()
    for _ in range(20):
        vm.linux.processes()
    assert time.monotonic() - start < 30
    assert vm.running()
    assert g.console.check("echo alive").strip() == "alive"

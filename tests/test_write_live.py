"""Writable VMI on real guests: every operation's effect checked through the guest's own
console; the hijacked process keeps running; failures leave the guest intact."""

import hashlib
import os
import re
import threading
import time
import uuid

import pytest
from matrix import WRITABLE

from cloudvmi.errors import CloudVMIError
from cloudvmi.lab import guest as lab
from cloudvmi.vm import attach
from cloudvmi.write.errors import GuestOSError, InjectionTimeout, TargetExited

import oracle


@pytest.fixture(scope="module", params=WRITABLE)
def live(request, profile_dir):
    g = lab.up(f"wr{uuid.uuid4().hex[:6]}-{request.param.replace('.', '')}",
               kernel=request.param)
    vm = attach(g.name, writable=True, profile_cache=profile_dir)
    try:
        yield g, vm
    finally:
        vm.close()
        lab.down(g.name)


def _pid_of(g, *argv: str) -> int:
    for p in oracle.processes(g).values():
        if p.cmdline[:len(argv)] == list(argv):
            return p.pid
    raise AssertionError(f"no process {argv}")


def _alive(g, pid: int) -> bool:
    return g.console.run(f"test -d /proc/{pid}")[0] == 0


def test_kill(live):
    g, vm = live
    g.console.check("sleep 7777777 &")
    pid = _pid_of(g, "sleep", "7777777")
    vm.guest.kill(pid, 9)
    for _ in range(50):
        if not _alive(g, pid):
            break
        time.sleep(0.1)
    assert not _alive(g, pid)


def test_put_and_cat_several_mib_byte_exact(live):
    g, vm = live
    data = os.urandom(5 << 20) + b"tail"
    vm.guest.write_file("/tmp/big.bin", data)
    assert g.console.check("md5sum /tmp/big.bin").split()[0] == hashlib.md5(data).hexdigest()
    assert vm.guest.read_file("/tmp/big.bin") == data
    vm.guest.write_file("/tmp/big.bin", b"+more", append=True)
    assert g.console.check("tail -c 9 /tmp/big.bin") == "tail+more"
    vm.guest.remove("/tmp/big.bin")
    assert g.console.run("test -e /tmp/big.bin")[0] != 0


def test_directories_stat_modes_owners(live):
    g, vm = live
    ops = vm.guest
    ops.mkdir("/tmp/vmi-dir", 0o750)
    ops.write_file("/tmp/vmi-dir/f.txt", b"hello\n")
    ops.chmod("/tmp/vmi-dir/f.txt", 0o640)
    ops.chown("/tmp/vmi-dir/f.txt", 1000, 1001)
    assert g.console.check("stat -c '%a %u %g %s %F' /tmp/vmi-dir/f.txt").strip() == \
        "640 1000 1001 6 regular file"
    st = ops.stat("/tmp/vmi-dir/f.txt")
    assert (st.mode & 0o7777, st.uid, st.gid, st.size, st.type) == (0o640, 1000, 1001, 6, "file")
    assert ops.stat("/tmp/vmi-dir").type == "dir"
    names = [e.name for e in ops.listdir("/tmp/vmi-dir")]
    assert names == g.console.check("ls -A /tmp/vmi-dir").split() == ["f.txt"]
    assert [e.name for e in ops.listdir("/run/held")] == ["held-0.txt", "held-1.txt",
                                                          "held-2.txt"]
    ops.remove("/tmp/vmi-dir/f.txt")
    ops.remove("/tmp/vmi-dir")
    assert g.console.run("test -e /tmp/vmi-dir")[0] != 0


def test_sysctl(live):
    g, vm = live
    vm.guest.sysctl_set("kernel.hostname", "set-from-outside")
    assert g.console.check("hostname").strip() == "set-from-outside"
    assert vm.guest.sysctl_get("kernel.hostname") == "set-from-outside"
    vm.guest.sysctl_set("net.ipv4.ip_forward", "1")
    assert g.console.check("cat /proc/sys/net/ipv4/ip_forward").strip() == "1"


def test_interface_down_up_and_address(live):
    g, vm = live
    up = 0x1

    def flags() -> int:
        return int(g.console.check("cat /sys/class/net/dummy0/flags"), 16)

    vm.guest.link_set("dummy0", True)
    assert flags() & up
    vm.guest.set_address("dummy0", "10.77.0.9/24")
    assert "inet 10.77.0.9/24" in g.console.check("ip addr show dummy0")
    vm.guest.link_set("dummy0", False)
    assert not flags() & up
    vm.guest.link_set("lo", False)
    assert "UP" not in g.console.check("ip link show lo").split(">")[0]
    vm.guest.link_set("lo", True)
    assert "UP" in g.console.check("ip link show lo").split(">")[0]


def test_run_collects_status_and_output(live):
    g, vm = live
    status, out = vm.guest.run(["/bin/sh", "-c", "echo out; echo err >&2; uname -r; exit 7"])
    assert status == 7
    assert out == b"out\nerr\n" + g.console.check("uname -r").encode()
    status, out = vm.guest.run(["/nonexistent/program"])
    assert status == 127


def test_failures_are_clear_and_leave_the_guest_intact(live):
    g, vm = live
    with pytest.raises(GuestOSError) as err:
        vm.guest.read_file("/no/such/file")
    assert err.value.errno == 2 and "ENOENT" in str(err.value)
    g.console.check("echo secret > /tmp/secret; chmod 600 /tmp/secret")
    user = _pid_of(g, "/bin/workload", "user", "1000")
    with pytest.raises(GuestOSError) as err:
        vm.guest.as_process(user).read_file("/tmp/secret")
    assert err.value.errno == 13  # EACCES: run as uid 1000, root's file is closed to it
    assert vm.guest.as_process(user).read_file("/proc/self/status").count(b"1000") >= 4
    assert _alive(g, user)
    assert g.console.check("echo intact").strip() == "intact"


def test_a_vm_paused_by_someone_else_is_left_paused(live):
    g, vm = live
    vm.pause()
    try:
        with pytest.raises(CloudVMIError, match="paused"):
            vm.guest.stat("/")
        assert vm.qmp.execute("query-status")["status"] == "paused"
    finally:
        vm.resume()
    assert vm.guest.stat("/").type == "dir"


def test_timeout_when_the_target_never_runs(live):
    g, vm = live
    sleeper = _pid_of(g, "sleep", "1000000")  # blocked for days: never returns to user mode
    injector = vm.guest.injector
    old = injector.timeout
    injector.timeout = 2.0
    try:
        start = time.monotonic()
        with pytest.raises(InjectionTimeout):
            vm.guest.as_process(sleeper).stat("/")
        assert time.monotonic() - start < 10
    finally:
        injector.timeout = old
    assert vm.running() and _alive(g, sleeper)
    assert g.console.check("echo intact").strip() == "intact"


def test_target_exits_mid_injection(live):
    g, vm = live
    g.console.check("/bin/workload user 1000 >/dev/null 2>&1 &")
    victim = max(p.pid for p in oracle.processes(g).values()
                 if p.cmdline[:3] == ["/bin/workload", "user", "1000"])
    killer = threading.Timer(3.0, lambda: g.console.run(f"kill -9 {victim}"))
    killer.start()
    try:
        with pytest.raises(TargetExited):
            vm.guest.as_process(victim).run(["/bin/sleep", "20"], timeout=20)
    finally:
        killer.join()
    assert not _alive(g, victim)
    assert g.console.check("echo intact").strip() == "intact"
    assert vm.guest.stat("/").type == "dir"  # the engine works again afterwards


def test_hijacked_process_keeps_running_without_a_gap(live):
    g, vm = live
    counter = _pid_of(g, "/bin/workload", "counter")
    ops = vm.guest.as_process(counter)
    for _ in range(5):
        assert ops.stat("/tmp/counter.log").type == "file"
    time.sleep(1.0)
    lines = g.console.check("tail -n 400 /tmp/counter.log").splitlines()
    assert all(re.fullmatch(r"counter \d+ \d+\.\d{3}", line) for line in lines), lines[-5:]
    numbers = [int(line.split()[1]) for line in lines]
    stamps = [float(line.split()[2]) for line in lines]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no fault, no skip
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert max(gaps) < 2.0, max(gaps)  # 100 ms steps; a pause shows as a gap, never a break
    assert _alive(g, counter)


def test_thousand_syscalls_leave_no_register_changed(live):
    """1000 injected syscalls and a 900-call batch in a guest program that holds sentinel
    values in its general and vector registers and checks them itself, millions of times a
    round: no check fails, no fault, and it runs on (an independent witness, not our own
    read-back)."""
    g, vm = live
    g.console.check("/bin/workload sentinel /tmp/sentinel.txt >/dev/null 2>&1 &")
    sentinel = _pid_of(g, "/bin/workload", "sentinel")
    start = oracle.sentinel_rounds(g, at_least=1)
    injector = vm.guest.injector
    target = injector.hijack(sentinel)
    try:
        results = {injector.syscall(39) for _ in range(1000)}  # getpid
    finally:
        injector.release()
    assert results == {sentinel} and target.tgid == sentinel
    from cloudvmi.write.session import GuestSession

    with GuestSession(injector, pid=sentinel) as session:
        b = session.batch()
        for _ in range(900):
            b.add(39)
        assert set(session.run(b)) == {sentinel}
    rounds, corrupt = oracle.sentinel_rounds(g, at_least=start[0] + 2)
    assert corrupt == 0
    assert _alive(g, sentinel) and vm.running()
    assert g.console.check("dmesg | grep -ci -e segfault -e 'general protection' || true") \
        .strip() == "0"
    g.console.check(f"kill {sentinel}")


def test_direct_kernel_memory_write(live):
    """A direct write (no syscall) where that is right: the kernel's own hostname field."""
    g, vm = live
    kernel = vm.linux.kernel
    field = kernel.btf.struct("uts_namespace").offset("name.nodename")
    address = kernel.symbols.lookup("init_uts_ns") + field
    old = vm.read_virtual(address, 65)
    try:
        vm.write_virtual(address, b"written-directly\0")
        assert g.console.check("hostname").strip() == "written-directly"
    finally:
        vm.write_virtual(address, old)
    assert vm.read_virtual(address, 65) == old

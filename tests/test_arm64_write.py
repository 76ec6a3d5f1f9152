"""Changing arm64 guests (AArch64 under TCG) from outside: system calls injected into a
hijacked thread, each change checked through the guest's own console, and unmodified
x86-64 host programs whose guest calls run in the arm64 guest (their numbers, open flags and
struct stat translated). One guest per kernel, shared by the module's tests."""

import hashlib
import os
import re
import struct
import threading
import time
import uuid

import pytest
from matrix import ARM64, split

from cloudvmi.lab import guest as lab
from cloudvmi.vm import attach
from cloudvmi.write.errors import InjectionTimeout
from cloudvmi.write.session import STUB_OFFSET

import oracle

SVC = bytes.fromhex("010000d4")  # svc #0


@pytest.fixture(scope="module", params=ARM64)
def live(request, profile_dir):
    arch, kernel = split(request.param)
    g = lab.up(f"aw{uuid.uuid4().hex[:6]}-{kernel.replace('.', '')}", kernel=kernel,
               arch=arch, mem="256M")
    vm = attach(g.name, writable=True, profile_cache=profile_dir)
    try:
        yield g, vm
    finally:
        vm.close()
        lab.down(g.name)


def theirs(g, command: str) -> str:
    """The guest's own output of COMMAND (its arm64 busybox)."""
    return g.console.check(command, timeout=180).replace("\r\n", "\n")


def mine(vm, argv: list[str]) -> str:
    """The output of host program ARGV (x86-64) run against the guest."""
    r = vm.exec(argv, timeout=180)
    assert r.status == 0, (argv, r.stderr)
    return r.stdout.decode()


def _pid_of(g, *argv: str) -> int:
    for p in oracle.processes(g).values():
        if p.cmdline[:len(argv)] == list(argv):
            return p.pid
    raise AssertionError(f"no process {argv}")


def test_kill_files_and_run_as_the_guest_sees_them(live):
    g, vm = live
    assert vm.arch.name == "arm64" and vm.arch.writable
    g.console.check("sleep 7777777 &")
    pid = _pid_of(g, "sleep", "7777777")
    vm.guest.kill(pid, 9)
    assert oracle.gone(g, pid, 10)
    assert vm.guest.read_file("/proc/version").decode() == theirs(g, "cat /proc/version")
    data = os.urandom(300 << 10) + b"tail"
    vm.guest.write_file("/root/w.bin", data)
    assert theirs(g, "sha256sum /root/w.bin").split()[0] == hashlib.sha256(data).hexdigest()
    assert vm.guest.read_file("/root/w.bin") == data
    st = vm.guest.stat("/root/w.bin")  # arm64's struct stat, parsed by its ABI
    assert f"{st.size} {st.mode & 0o7777:o} {st.inode} {int(st.mtime)}" == \
        theirs(g, "stat -c '%s %a %i %Y' /root/w.bin").strip()
    status, out = vm.guest.run(["/bin/busybox", "cat", "/proc/version"])
    assert (status, out.decode()) == (0, theirs(g, "cat /proc/version"))


def test_host_programs_run_against_the_guest(live):
    g, vm = live
    for command in ("busybox uname -a", "busybox cat /proc/version", "busybox id",
                    "busybox ls -la /etc /root",
                    "busybox stat -c '%n|%s|%u|%a|%F|%Y|%i|%h' /etc/passwd /bin /root"):
        assert mine(vm, ["busybox", "sh", "-c", command]) == theirs(g, command), command
    assert mine(vm, ["ls", "/"]) == theirs(g, "ls -1 /")  # GNU ls, its output not a tty
    assert mine(vm, ["cat", "/proc/version"]) == theirs(g, "cat /proc/version")


def test_persistent_channel_helper_serves_and_goes(live):
    g, vm = live
    run = {"channel": "persistent", "timeout": 180}
    for command in ("busybox uname -a", "busybox ls -la /etc"):
        r = vm.exec(["busybox", "sh", "-c", command], **run)
        assert (r.status, r.stdout.decode()) == (0, theirs(g, command)), command
    helper = vm.guest.channel("persistent").helper
    assert helper.usable
    own = theirs(g, f"cat /proc/{helper.pid}/comm; awk '/^PPid/ {{print $2}}' "
                    f"/proc/{helper.pid}/status")
    assert own == "cloudvmi-helper\n1\n"  # named for what it is, adopted by init
    pid = helper.pid
    assert vm.guest.close() == ["exited"]
    assert oracle.gone(g, pid, 10)


def test_hijacked_process_keeps_running_without_a_gap(live):
    """A process taken again and again (each time its registers put back) runs on: its
    counter, written every 100 ms, skips no number and shows no fault."""
    g, vm = live
    counter = _pid_of(g, "/bin/workload", "counter")
    ops = vm.guest.as_process(counter)
    for _ in range(3):
        assert ops.stat("/tmp/counter.log").type == "file"
    time.sleep(1.0)
    lines = g.console.check("tail -n 200 /tmp/counter.log").splitlines()
    assert all(re.fullmatch(r"counter \d+ \d+\.\d{3}", line) for line in lines), lines[-5:]
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert g.console.run(f"test -d /proc/{counter}")[0] == 0
    assert theirs(g, "dmesg | grep -ci -e 'unhandled' -e segfault -e 'Internal error' "
                     "|| true").strip() == "0"


def test_a_call_left_in_flight_returns_the_thread_home_through_the_stub(live):
    """An injected call that outlives the engine's timeout (a 3 s rt_sigtimedwait, which
    then returns -EAGAIN) is left to finish: the thread's frame gets its own registers and the
    resume stub as PC. When the call returns, the stub puts x0 back and branches home: the
    thread arrives at its own PC with every register it had (read at a breakpoint there)."""
    g, vm = live
    counter = _pid_of(g, "/bin/workload", "counter")
    injector = vm.guest.injector
    abi = vm.arch.syscall
    old = injector.timeout
    injector.timeout = 1.0
    try:
        with pytest.raises(InjectionTimeout), vm.guest.as_process(counter).session() as s:
            target = injector.target
            assert target.resume_at == s.base + STUB_OFFSET + 4  # mapped within the b's reach
            b = s.batch()
            usr2 = s.put(struct.pack("<Q", 1 << 11))
            b.add(abi.nr("rt_sigtimedwait"), usr2, 0, s.put(struct.pack("<qq", 3, 0)), 8)
            s.run(b)
    finally:
        injector.timeout = old
    assert not target.parked and injector.target is None  # given back in flight
    gdb = injector.gdb
    gdb.interrupt()
    try:
        _, regs = injector._await_thread(target.saved["pc"], target.root, target.task,
                                         time.monotonic() + 20, "the thread to come home")
        assert {k: regs[k] for k in target.saved} == target.saved
    finally:
        gdb.cont()
    assert g.console.run(f"test -d /proc/{counter}")[0] == 0


def test_no_signal_sent_during_a_batch_is_lost(live):
    """Signals sent to the hijacked process while it waits in an injected wait4 are
    delivered afterwards, to its own handlers (arm64's TIF_SIGPENDING set on release):
    SIGUSR1 at least once (standard signals coalesce), each of five real-time ones once."""
    g, vm = live
    target = _pid_of(g, "/bin/workload", "signals")
    start = theirs(g, "cat /tmp/signals.txt").split()
    sender = threading.Thread(target=g.console.check, args=(
        f"sleep 1; kill -USR1 {target}; for i in 1 2 3 4 5; do kill -35 {target}; done",))
    sender.start()
    status, _ = vm.guest.as_process(target).run(["/bin/sh", "-c", "sleep 4"])
    sender.join(60)
    assert status == 0
    time.sleep(0.5)
    end = theirs(g, "cat /tmp/signals.txt").split()
    assert int(end[1]) >= int(start[1]) + 1
    assert int(end[3]) == int(start[3]) + 5

def test_syscalls_in_a_thread_taken_mid_loop_leave_its_registers_alone(live):
    """The workload's sentinel holds known values in x1-x15, x19-x28 and four FP/SIMD
    registers and checks them itself in a loop without system calls: a thread taken there
    (x1 shows the sentinel value), made to run 200 single calls and a 900-call batch, finds
    every value in place (an independent witness, not our own read-back). While it has SVE
    state it is taken only where its own system call returns."""
    g, vm = live
    g.console.check("/bin/workload sentinel /tmp/sentinel.txt >/dev/null 2>&1 &")
    sentinel = _pid_of(g, "/bin/workload", "sentinel")
    start = oracle.sentinel_rounds(g, at_least=1, polls=240)[0]
    injector = vm.guest.injector
    getpid = vm.arch.syscall.nr("getpid")
    for _ in range(10):  # until it is taken inside its checking loop
        target = injector.hijack(sentinel)
        if target.saved["x1"] == 0x5E5E_0000_0000_0101:
            break
        # Else it had SVE state (TIF_SVE: its C library's string functions use SVE, and from
        # 6.2 the flag outlives system calls): taken only where its own `svc #0` returned.
        try:
            assert injector.read_user(target.saved["pc"] - 4, 4) == SVC
        finally:
            injector.release()
        time.sleep(0.5)
    else:
        raise AssertionError("the sentinel was never taken inside its loop")
    try:
        results = {injector.syscall(getpid) for _ in range(200)}
    finally:
        injector.release()
    assert results == {sentinel}
    from cloudvmi.write.session import GuestSession

    with GuestSession(injector, pid=sentinel) as session:
        b = session.batch()
        for _ in range(900):
            b.add(getpid)
        assert set(session.run(b)) == {sentinel}
    rounds, corrupt = oracle.sentinel_rounds(g, at_least=start + 2, polls=240)
    assert corrupt == 0
    g.console.check(f"kill {sentinel}")

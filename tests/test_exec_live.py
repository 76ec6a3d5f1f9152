"""Redirected programs on a real guest: host binaries run with `vm.exec`, each compared with
the same static busybox run inside the guest (over its serial console)."""

import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from cloudvmi.errors import CloudVMIError
from cloudvmi.lab import guest as lab
from cloudvmi.vm import attach
from cloudvmi.write import persistent
from cloudvmi.write.channel import GuestCall
from cloudvmi.write.persistent import HelperSettings

import oracle


@pytest.fixture(scope="module")
def live(profile_dir):
    g = lab.up(f"ex{uuid.uuid4().hex[:6]}", kernel="6.1", mem="512M")
    vm = attach(g.name, writable=True, profile_cache=profile_dir)
    try:
        g.console.check("mkdir -p /srv/t/sub && echo data > /srv/t/file && "
                        "ln -s file /srv/t/link && echo 'ghost:x:4242:4343::/:/bin/sh' >> "
                        "/etc/passwd && chown 4242:4343 /srv/t/file && chmod 640 /srv/t/file")
        yield g, vm
    finally:
        vm.close()
        lab.down(g.name)


def theirs(g, command: str) -> str:
    """The guest's own output of COMMAND."""
    return g.console.check(command, timeout=120).replace("\r\n", "\n")


def mine(vm, argv: list[str], status: int = 0) -> str:
    r = vm.exec(argv, timeout=120)
    assert r.status == status, (argv, r.stderr)
    return r.stdout.decode()


def test_identity_and_kernel_are_the_guests(live):
    g, vm = live
    for command in ("busybox uname -a", "busybox hostname", "busybox cat /proc/version",
                    "busybox id"):
        assert mine(vm, command.split()) == theirs(g, command), command
    assert mine(vm, ["uname", "-a"]) == theirs(g, "busybox uname -a")  # GNU coreutils


def test_listings_and_stat_byte_equal(live):
    g, vm = live
    for command in ("busybox ls -la /etc /root /srv/t", "busybox ls -lan /srv/t",
                    "busybox stat -c '%n|%s|%u|%U|%g|%a|%F|%Y|%i|%h' /srv/t/file /srv/t/link "
                    "/srv/t/sub /srv/t"):
        assert mine(vm, ["busybox", "sh", "-c", command]) == theirs(g, command), command
    gnu = mine(vm, ["stat", "-c", "%n|%s|%u|%U|%a|%F|%Y|%i|%h", "/srv/t/file", "/srv/t/link"])
    assert gnu == theirs(g, "busybox stat -c '%n|%s|%u|%U|%a|%F|%Y|%i|%h' /srv/t/file "
                            "/srv/t/link")
    assert "ghost" in mine(vm, ["ls", "-l", "/srv/t/file"])  # a uid only the guest knows
    assert mine(vm, ["readlink", "/srv/t/link"]) == "file\n"


def test_find_du_and_a_50_mib_checksum(live):
    g, vm = live
    g.console.check("dd if=/dev/urandom of=/root/big bs=1M count=50 2>/dev/null", timeout=300)
    find = "busybox find / -xdev | busybox sort | busybox md5sum"
    assert mine(vm, ["busybox", "sh", "-c", find]) == theirs(g, find)
    assert mine(vm, ["busybox", "du", "-s", "/bin"]) == theirs(g, "busybox du -s /bin")
    assert mine(vm, ["du", "-s", "/bin"]) == theirs(g, "busybox du -s /bin")  # GNU
    ours = vm.exec(["sha256sum", "/root/big"], timeout=300)
    assert ours.stdout.decode() == theirs(g, "busybox sha256sum /root/big")
    assert mine(vm, ["find", "/srv/t"]).splitlines() == \
        theirs(g, "busybox find /srv/t").splitlines()


def _ps(text: str) -> dict[int, str]:
    rows = {}
    for line in text.splitlines()[1:]:
        fields = line.split(None, 1)
        if fields and fields[0].isdigit():
            rows[int(fields[0])] = line.split()
    return rows


def test_ps_matches_and_kill_reaches_guest_processes_only(live):
    g, vm = live
    g.console.check("sleep 31337 &")
    pid = next(p.pid for p in oracle.processes(g).values()
               if p.cmdline == ["sleep", "31337"])
    command = "busybox ps -o pid,ppid,user,comm,args | busybox cat"  # not cut to a tty
    ours, own = _ps(mine(vm, ["busybox", "sh", "-c", command])), _ps(theirs(g, command))
    assert pid in ours and ours[pid][-2:] == ["sleep", "31337"]
    stable = [p for p in own if p in ours and not own[p][3].startswith("kworker")
              and own[p][3] not in ("ps", "busybox", "sh")]
    assert len(stable) > 20
    for p in stable:
        assert ours[p] == own[p], p
    assert mine(vm, ["ps", "-o", "pid=", "-p", str(pid)]).strip() \
        == str(pid)  # procps too
    mine(vm, ["busybox", "kill", "-9", str(pid)])
    for _ in range(50):
        if g.console.run(f"test -d /proc/{pid}")[0] != 0:
            break
        time.sleep(0.1)
    assert g.console.run(f"test -d /proc/{pid}")[0] != 0
    host = subprocess.Popen(["sleep", "600"])
    try:
        vm.exec(["busybox", "kill", "-9", str(host.pid)])  # a pid only the host has
        time.sleep(0.2)
        assert host.poll() is None
    finally:
        host.kill()
        host.wait()


def test_changes_match_in_guest_runs_and_leave_the_host_alone(live):
    g, vm = live
    tag = uuid.uuid4().hex[:6]
    host_swappiness = Path("/proc/sys/vm/swappiness").read_text()
    mine(vm, ["busybox", "sysctl", "-w", "vm.swappiness=33"])
    assert theirs(g, "cat /proc/sys/vm/swappiness") == "33\n"
    assert Path("/proc/sys/vm/swappiness").read_text() == host_swappiness
    mine(vm, ["sh", "-c", f"umask 077; echo hi > /root/x{tag} && mv /root/x{tag} /root/y{tag}"])
    g.console.check(f"(umask 077; echo hi > /root/a{tag} && mv /root/a{tag} /root/b{tag})")
    assert theirs(g, f"busybox stat -c '%a %s %u' /root/y{tag}") == \
        theirs(g, f"busybox stat -c '%a %s %u' /root/b{tag}") == "600 3 0\n"
    assert theirs(g, f"cat /root/y{tag}") == "hi\n"
    assert not Path(f"/root/y{tag}").exists() and not Path(f"/root/x{tag}").exists()
    host_passwd = Path("/etc/passwd").read_bytes()
    # GNU useradd (lock files, a backup, a rename over /etc/passwd), all in the guest
    mine(vm, ["useradd", "-M", "-s", "/bin/sh", f"bob{tag}"])
    passwd = theirs(g, "cat /etc/passwd")
    assert re.search(rf"^bob{tag}:[^:]*:(\d+):(\d+)::/home/bob{tag}:/bin/sh$", passwd, re.M)
    assert "ghost:x:4242" in passwd  # what was there is kept
    assert f"bob{tag}" in mine(vm, ["busybox", "id", f"bob{tag}"])
    assert Path("/etc/passwd").read_bytes() == host_passwd


def test_network_views_are_the_guests(live):
    g, vm = live
    for command in ("busybox ip addr", "busybox ip route", "busybox netstat -tln",
                    "busybox md5sum /proc/net/tcp /proc/net/tcp6 /proc/net/unix"):  # > a page
        assert mine(vm, command.split()) == theirs(g, command), command
    listening = {_endpoint(line.split()[3]) for line in
                 theirs(g, "busybox netstat -tln").splitlines() if line.startswith("tcp")}
    ss = {_endpoint(line.split()[3]) for line in mine(vm, ["ss", "-tln"]).splitlines()[1:]}
    assert ss == listening
    assert "lo" in mine(vm, ["ip", "-o", "link"])  # iproute2 over guest netlink


def _endpoint(text: str) -> tuple[str, int]:
    """netstat's "::1:9003" and ss's "[::1]:9003" (and "*" for any IPv6) alike."""
    address, _, port = text.rpartition(":")
    address = address.strip("[]")
    return ("::" if address == "*" else address), int(port)


def _host_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_runs_leak_nothing(live):
    g, vm = live
    committed = "busybox awk '/Committed_AS/ {print $2}' /proc/meminfo"
    fds = "busybox ls /proc/[0-9]*/fd | busybox wc -l"
    vm.exec(["true"])  # the first one connects the debugger: that socket stays, by design
    before = int(theirs(g, committed)), int(theirs(g, fds)), _host_fds()
    children = _children()
    want = theirs(g, "cat /proc/sys/kernel/ostype")
    for i in range(1000):
        r = vm.exec(["busybox", "cat", "/proc/sys/kernel/ostype"])
        assert (r.status, r.stdout.decode()) == (0, want), i
    after = int(theirs(g, committed)), int(theirs(g, fds)), _host_fds()
    assert abs(after[0] - before[0]) < 4096  # kB: not a scratch mapping per run
    assert abs(after[1] - before[1]) <= 2
    assert after[2] == before[2]
    assert _children() <= children  # every traced program and launcher was reaped


def _children() -> set[str]:
    return {p.name for p in Path("/proc").glob("[0-9]*") if _ppid(p) == os.getpid()}


def _ppid(p: Path) -> int:
    try:
        return int(re.search(r"^PPid:\s+(\d+)", (p / "status").read_text(), re.M)[1])
    except (OSError, TypeError):
        return -1


def test_persistent_channel_answers_alike_and_its_helper_goes_on_detach(live):
    g, vm = live
    run = {"channel": "persistent", "timeout": 120}
    for command in ("busybox uname -a", "busybox id", "busybox ls -la /etc /root /srv/t",
                    "busybox find / -xdev | busybox sort | busybox md5sum",
                    "busybox ip addr", "busybox netstat -tln"):
        r = vm.exec(["busybox", "sh", "-c", command], **run)
        assert (r.status, r.stdout.decode()) == (0, theirs(g, command)), command
    helper = vm.guest.channel("persistent").helper
    assert helper.usable
    comm = theirs(g, f"cat /proc/{helper.pid}/comm; awk '/^PPid/ {{print $2}}' "
                     f"/proc/{helper.pid}/status")
    assert comm == "cloudvmi-helper\n1\n"  # named for what it is, adopted by init
    command = "busybox ps -o pid,ppid,user,comm,args | busybox cat"
    ours = _ps(vm.exec(["busybox", "sh", "-c", command], **run).stdout.decode())
    own = _ps(theirs(g, command))
    assert ours[helper.pid] == own[helper.pid]
    stable = [p for p in own if p in ours and not own[p][3].startswith("kworker")
              and own[p][3] not in ("ps", "busybox", "sh")]
    assert len(stable) > 20 and all(ours[p] == own[p] for p in stable)
    for argv, most in ((["busybox", "ls", "-l", "/etc"], 4), (["busybox", "ps", "aux"], 5)):
        vm.exec(argv, **run)  # the first run teaches the start-up requests
        assert vm.exec(argv, **run).resumes <= most, argv
    mine(vm, ["busybox", "sh", "-c", "echo persisted > /root/p && mv /root/p /root/q"])
    assert theirs(g, "cat /root/q") == "persisted\n"
    pid = helper.pid
    assert vm.guest.close() == ["exited"]
    assert oracle.gone(g, pid, 10)
    assert mine(vm, ["busybox", "cat", "/root/q"]) == "persisted\n"  # the default path


def test_a_helper_whose_host_went_away_exits_by_itself(live):
    g, vm = live
    with vm.guest.channel("persistent", HelperSettings(lease=2.0)) as channel:
        assert channel.run([GuestCall("getpid")])[0].value == channel.helper_pid()
    helper = channel.helper
    helper._quit.set()  # what a killed host leaves behind: no heartbeat, no goodbye
    helper._beat.join()
    assert oracle.gone(g, helper.pid, 60)
    assert vm.guest.close() == ["exited"]


def test_a_helper_tampered_with_or_killed_by_guest_root_is_refused(live):
    g, vm = live
    run = {"channel": "persistent", "timeout": 60}
    assert mine(vm, ["busybox", "hostname"]) == vm.exec(["busybox", "hostname"], **run) \
        .stdout.decode()
    helper = vm.guest.channel("persistent").helper
    nonce = helper.base + persistent.NONCE  # a guest root rewrites the mailbox
    g.console.check(f"printf XXXXXXXX | dd of=/proc/{helper.pid}/mem bs=1 seek={nonce} "
                    "conv=notrunc 2>/dev/null")
    with pytest.raises(CloudVMIError, match="mailbox was overwritten"):
        vm.exec(["busybox", "hostname"], **run)
    assert vm.exec(["busybox", "hostname"], **run).status == 0  # a new helper
    assert oracle.gone(g, helper.pid, 10)  # the tampered one was killed
    again = vm.guest.channel("persistent").helper
    assert again.pid != helper.pid
    g.console.check(f"kill -9 {again.pid}")
    with pytest.raises(CloudVMIError, match="exited"):
        vm.exec(["busybox", "hostname"], **run)
    assert vm.exec(["busybox", "id", "-u"], **run).stdout == b"0\n"
    assert len(vm.guest.close()) == 1


def test_a_write_back_reaches_only_the_file_the_program_opened(live):
    """A guest user who swaps a path for a link (or another file) between a program's open
    and its write-back gets nothing written there: the write-back checks the file's
    (dev, ino) against the one the program opened (-ESTALE otherwise)."""
    from cloudvmi.redirect.guestfs import ESTALE, GuestFS, stat_identity

    g, vm = live
    g.console.check("echo victim > /srv/t/victim && echo mine > /srv/t/mine")
    with vm.guest.channel() as ch:
        opened = stat_identity(GuestFS(ch).stat(b"/srv/t/mine")[1])
    g.console.check("mv /srv/t/mine /srv/t/mine.old && ln -s victim /srv/t/mine")
    with vm.guest.channel() as ch:
        fs = GuestFS(ch)
        assert fs.write_back(b"/srv/t/mine", b"owned\n", 0, 6, False, opened) == -ESTALE
        now = stat_identity(fs.stat(b"/srv/t/victim")[1])
        assert fs.write_back(b"/srv/t/victim", b"fine\n", 0, 5, False, now) == 0
    assert theirs(g, "cat /srv/t/victim /srv/t/mine.old") == "fine\nmine\n"

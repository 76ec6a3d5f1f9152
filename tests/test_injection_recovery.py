"""Injected calls on a busy guest whose hijacked process has signal handlers and children of
its own: calls that wait are not interrupted, no signal sent meanwhile is lost, and a client
killed at any point of `run` leaves the guest whole and the next command working."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from cloudvmi.lab import guest as lab
from cloudvmi.vm import attach

# A root shell that traps SIGCHLD and always has children of its own running: each exits
# while an injected call waits, and its SIGCHLD would interrupt that call.
FORKLOOP = ("sh -c 'trap \"n=1\" CHLD; while :; do sleep 1 & sleep 0.1; done' forkloop "
            ">/dev/null 2>&1 &")
NEXT_COMMAND_LIMIT = 5.0  # seconds (the bound for the command after a crash)


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    g = lab.up(f"ir{uuid.uuid4().hex[:6]}", kernel="6.1", busy=False, smp=2)
    try:
        g.console.check(FORKLOOP)
        yield g, state
    finally:
        lab.down(g.name)


def _pid(g, marker: str) -> int:
    for line in g.console.check(f"ps | grep -F '{marker}'").splitlines():
        if marker in line and "grep" not in line:
            return int(line.split()[0])
    raise AssertionError(f"no process {marker}")


def _sigblk(g, pid: int) -> str:
    return next(line.split()[1] for line in g.console.check(f"cat /proc/{pid}/status")
                .splitlines() if line.startswith("SigBlk:"))


def _cli(state, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cloudvmi.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CLOUDVMI_STATE": str(state)}, **kw)


def test_a_long_run_in_a_process_with_sigchld_handler_and_children(guest):
    g, state = guest
    loop = _pid(g, "forkloop")
    before = _sigblk(g, loop)
    with attach(g.name, writable=True) as vm:
        status, out = vm.guest.as_process(loop).run(["/bin/sh", "-c", "sleep 3; echo done"])
    assert (status, out) == (0, b"done\n")
    assert _sigblk(g, loop) == before  # its own mask is back
    assert _pid(g, "forkloop") == loop


def test_no_signal_sent_during_a_batch_is_lost(guest):
    """Signals sent to the hijacked process while it waits in an injected call are
    delivered afterwards, to its own handlers: SIGUSR1 at least once (standard signals
    coalesce), each of five queued real-time signals exactly once."""
    g, _ = guest
    target = _pid(g, "workload signals")
    g.console.check("cat /tmp/signals.txt")
    start = g.console.check("cat /tmp/signals.txt").split()
    with attach(g.name, writable=True) as vm:
        ops = vm.guest.as_process(target)
        sender = threading.Thread(target=g.console.check, args=(
            f"sleep 1; kill -USR1 {target}; for i in 1 2 3 4 5; do kill -35 {target}; done",))
        sender.start()
        status, _ = ops.run(["/bin/sh", "-c", "sleep 4"])
        sender.join(60)
        assert status == 0
    time.sleep(0.5)
    end = g.console.check("cat /tmp/signals.txt").split()
    assert int(end[1]) >= int(start[1]) + 1
    assert int(end[3]) == int(start[3]) + 5


def _journal_states(path, until: float):
    """Each distinct content of the injection journal, polled every millisecond or so."""
    last = None
    while time.monotonic() < until:
        try:
            text = path.read_text()
        except (FileNotFoundError, ValueError):
            text = ""
        if text != last:
            last = text
            yield json.loads(text) if text else None
        time.sleep(0.001)


def _journal_path(g, state):
    import hashlib

    key = hashlib.sha256(os.path.realpath(g.qmp_path).encode()).hexdigest()[:20]
    return state / "journal" / f"{key}.json"


def _wait_for(moment: str, journal, client) -> None:
    """Return when the client's injection is at MOMENT, as its journal shows it."""
    if moment == "before-hijack":
        time.sleep(0.3)
        return
    if moment == "holding-a-snapshot":  # the guest paused while the kernel is located
        marker = journal.parent.parent / "paused" / journal.name.replace(".json", ".pid")
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "the client never paused the guest"
            if client.poll() is not None:
                pytest.fail(f"the client ended first: {client.stderr.read()}")
            time.sleep(0.001)
        return
    seen = []
    for entry in _journal_states(journal, time.monotonic() + 60):
        cleared = entry is not None and any(e is None for e in seen[1:]) and any(seen)
        seen.append(entry)
        entry = entry or {}
        if moment == "hijacked" and entry.get("parked"):
            return
        if moment == "inside-wait4" and entry.get("parked") is False and entry["resume_at"]:
            time.sleep(1.0)  # the child sleeps 3 s: the thread is blocked in wait4
            return
        if moment == "reading-output" and cleared:
            return
    pytest.fail(f"the journal never showed {moment}: {seen}")


@pytest.mark.parametrize("moment", ["before-hijack", "holding-a-snapshot", "hijacked",
                                    "inside-wait4", "reading-output"])
def test_run_killed_at_any_point_leaves_the_guest_whole(guest, moment):
    g, state = guest
    loop = _pid(g, "forkloop")
    before = _sigblk(g, loop)
    journal = _journal_path(g, state)
    client = _cli(state, "run", g.name, "--as-pid", str(loop), "--", "/bin/sh", "-c",
                  "sleep 3; echo done")
    try:
        _wait_for(moment, journal, client)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(30)
    start = time.monotonic()
    after = _cli(state, "cat", g.name, "/proc/version")
    out, err = after.communicate(timeout=120)
    elapsed = time.monotonic() - start
    assert after.returncode == 0 and out.startswith("Linux version"), err
    assert elapsed < NEXT_COMMAND_LIMIT, f"the next command took {elapsed:.1f} s"
    assert not journal.exists()
    assert _pid(g, "forkloop") == loop  # the hijacked process lives on, as itself
    time.sleep(3.5)  # any injected child has ended; the thread is back in its own code
    assert _sigblk(g, loop) == before
    assert g.console.check("echo intact").strip() == "intact"
    with attach(g.name, writable=True) as vm:
        assert vm.guest.as_process(loop).run(["/bin/echo", "again"]) == (0, b"again\n")


def _run_cli(state, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloudvmi.cli.main", *args], input=stdin,
                          capture_output=True, timeout=180,
                          env={**os.environ, "CLOUDVMI_STATE": str(state)})


def test_cli_write_commands_change_the_guest(guest, tmp_path):
    """Every writing command of the CLI, its effect checked through the guest's console."""
    g, state = guest
    local = tmp_path / "motd"
    local.write_bytes(b"managed from outside\n" * 100)
    assert _run_cli(state, "put", g.name, str(local), "/tmp/motd").returncode == 0
    assert g.console.check("md5sum /tmp/motd").split()[0] == \
        hashlib.md5(local.read_bytes()).hexdigest()
    assert _run_cli(state, "put", g.name, str(local), "/tmp/motd", "--append").returncode == 0
    assert g.console.check("wc -c < /tmp/motd").strip() == str(2 * local.stat().st_size)
    cat = _run_cli(state, "cat", g.name, "/tmp/motd")
    assert cat.returncode == 0 and cat.stdout == local.read_bytes() * 2
    assert _run_cli(state, "mkdir", g.name, "/tmp/cli-dir", "--mode", "750").returncode == 0
    assert _run_cli(state, "chmod", g.name, "701", "/tmp/cli-dir").returncode == 0
    assert _run_cli(state, "chown", g.name, "1000:1000", "/tmp/cli-dir").returncode == 0
    assert g.console.check("stat -c '%a %u %g' /tmp/cli-dir").strip() == "701 1000 1000"
    st = json.loads(_run_cli(state, "stat", g.name, "/tmp/cli-dir", "--json").stdout)
    assert (st["type"], st["uid"], st["permissions"]) == ("dir", 1000, "drwx-----x")
    listing = json.loads(_run_cli(state, "ls", g.name, "/tmp", "--json").stdout)
    assert {"motd", "cli-dir"} <= {e["name"] for e in listing}
    assert _run_cli(state, "rm", g.name, "/tmp/cli-dir").returncode == 0
    assert _run_cli(state, "rm", g.name, "/tmp/motd").returncode == 0
    assert g.console.check("ls /tmp/cli-dir /tmp/motd 2>&1 || true").count("No such") == 2
    set_ = _run_cli(state, "sysctl", g.name, "kernel.domainname=cli-set", "--json")
    assert json.loads(set_.stdout) == {"key": "kernel.domainname", "value": "cli-set"}
    assert g.console.check("cat /proc/sys/kernel/domainname").strip() == "cli-set"
    assert _run_cli(state, "ip", g.name, "dummy0", "up").returncode == 0
    assert _run_cli(state, "ip", g.name, "dummy0", "addr", "10.88.0.5/24").returncode == 0
    assert "10.88.0.5/24" in g.console.check("ip addr show dummy0")
    assert _run_cli(state, "ip", g.name, "dummy0", "down").returncode == 0
    assert "UP" not in g.console.check("ip link show dummy0").split(">")[0]
    g.console.check("sleep 7777 >/dev/null 2>&1 &")
    victim = _pid(g, "sleep 7777")
    assert _run_cli(state, "kill", g.name, str(victim), "-s", "KILL").returncode == 0
    time.sleep(0.5)
    assert "sleep 7777" not in g.console.check("ps")
    run = _run_cli(state, "run", g.name, "--", "/bin/sh", "-c", "echo out; exit 7")
    assert (run.returncode, run.stdout) == (7, b"out\n")
    missing = _run_cli(state, "cat", g.name, "/no/such/file")
    assert missing.returncode == 1 and b"ENOENT" in missing.stderr


def test_run_timeout_ends_the_program(guest):
    g, state = guest
    start = time.monotonic()
    run = _run_cli(state, "run", g.name, "--timeout", "2", "--", "/bin/sleep", "600")
    assert run.returncode == 128 + 14  # SIGALRM
    assert time.monotonic() - start < 60
    assert "sleep 600" not in g.console.check("ps")
    assert g.console.check("echo intact").strip() == "intact"

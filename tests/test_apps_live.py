"""The applications on a real guest: guard's policy enforced within two intervals, its
report, stop, quarantine and hash rules; events and metrics; fim's exact report and
restore; enforce's dry run, changes and idempotence (the CLI, as a user runs it)."""

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest

from cloudvmi.apps.events import Events, Metrics
from cloudvmi.apps.guard import Guard, Policy
from cloudvmi.apps.targets import Target
from cloudvmi.lab import guest as lab


@pytest.fixture(scope="module")
def guest():
    g = lab.up(f"ap{uuid.uuid4().hex[:6]}", kernel="6.1", mem="512M")
    try:
        yield g
    finally:
        lab.down(g.name)


def _pid(g, pattern: str) -> int | None:
    out = g.console.check(f"ps -o pid,args | grep '{pattern}' | grep -v grep || true")
    fields = out.split()
    return int(fields[0]) if fields and fields[0].isdigit() else None


def _state(g, pid: int) -> str:
    return g.console.check(f"cat /proc/{pid}/stat 2>/dev/null | cut -d' ' -f3 || true").strip()


def test_guard_watch_kills_a_late_process_within_two_intervals(guest):
    g = guest
    policy = Policy.parse({"rule": [
        {"name": "no-4242", "action": "kill", "match": {"name": "sleep", "cmdline": "4242$"}},
        {"name": "listeners", "action": "report", "match": {"listen_port": 8080}}]})
    events, metrics = Events(), Metrics("guard")
    stop = threading.Event()
    interval = 2.0
    watcher = threading.Thread(target=Guard(policy, events, metrics).watch,
                               args=([Target(g.name, "")], interval, None, stop))
    watcher.start()
    try:
        deadline = time.monotonic() + 120
        while not any(e.rule == "listeners" for e in events.emitted):  # the first round ran
            assert time.monotonic() < deadline and watcher.is_alive()
            time.sleep(0.2)
        g.console.check("sleep 4242 &")
        pid = _pid(g, "sleep 4242")
        started = time.monotonic()
        while _pid(g, "sleep 4242") is not None:
            assert time.monotonic() - started < 2 * interval + 5, "not killed in two intervals"
            time.sleep(0.2)
    finally:
        stop.set()
        watcher.join(60)
    killed = [e for e in events.emitted if e.rule == "no-4242"]
    assert [(e.kind, e.detail["pid"], e.detail["action"]) for e in killed] == \
        [("action", pid, "kill")]
    reports = [e for e in events.emitted if e.rule == "listeners"]
    assert len(reports) == 1 and reports[0].kind == "finding"  # told once, not every round
    assert _pid(g, "workload listen 8080") == reports[0].detail["pid"]  # left alone
    assert metrics.registry.get_sample_value(
        "cloudvmi_guard_actions_total", {"vm": g.name, "action": "kill"}) == 1
    assert metrics.registry.get_sample_value("cloudvmi_guard_checks_total",
                                             {"vm": g.name}) >= 2


def test_guard_stop_quarantine_and_hash_rules(guest):
    g = guest
    g.console.check("mkdir -p /tmp/q /tmp/h && cp /bin/busybox /tmp/q/sleep && "
                    "cp /bin/busybox /tmp/h/sleep && (/tmp/q/sleep 5151 &) && "
                    "(/tmp/h/sleep 5252 &) && (sleep 5353 &)")
    digest = g.console.check("sha256sum /tmp/h/sleep").split()[0]
    policy = Policy.parse({"rule": [
        {"name": "quarantine-tmp", "action": "quarantine", "match": {"exe": "/tmp/q/*"}},
        {"name": "known-bad", "action": "kill", "match": {"exe": "/tmp/h/*", "sha256": digest}},
        {"name": "pause-5353", "action": "stop", "match": {"cmdline": "^sleep 5353$"}}]})
    stopped = _pid(g, "sleep 5353")
    happened = Guard(policy).once([Target(g.name, "")])
    assert sorted((e.rule, e.kind) for e in happened) == [
        ("known-bad", "action"), ("pause-5353", "action"), ("quarantine-tmp", "action")]
    time.sleep(1)
    assert _pid(g, "5151") is None and _pid(g, "5252") is None
    assert _state(g, stopped) == "T"
    assert g.console.check("stat -c %a /tmp/q/sleep").strip() == "644"  # no longer runnable
    g.console.check(f"kill -9 {stopped}")


SNAPSHOT = ("find /etc | sort | while read f; do stat -c '%n %a %u %g %s %F %N' \"$f\"; done; "
            "find /etc -type f | sort | xargs md5sum")


def test_fim_reports_exactly_and_restores_byte_equal(guest, tmp_path):
    g = guest
    g.console.check("mkdir -p /etc/app/sub && echo alpha > /etc/app/a.conf && "
                    "echo beta > /etc/app/b.conf && echo gamma > /etc/app/sub/c && "
                    "ln -sf a.conf /etc/app/link && chown 4242:4343 /etc/app/sub/c && "
                    "chmod 600 /etc/app/sub/c")
    before = g.console.check(SNAPSHOT)
    base = tmp_path / "etc.json"
    run = [sys.executable, "-m", "cloudvmi.cli.main", "fim"]
    subprocess.run([*run, "baseline", g.name, "/etc", "-o", str(base)], check=True,
                   capture_output=True)
    assert json.loads(base.read_text())["files"]["/etc/app/link"]["link"] == "a.conf"
    clean = subprocess.run([*run, "check", str(base), "--json"], capture_output=True,
                           text=True)
    assert clean.returncode == 0 and json.loads(clean.stdout)["changes"] == []
    g.console.check("echo ALPHA >> /etc/app/a.conf && rm /etc/app/b.conf && "
                    "echo new > /etc/app/new.conf && chmod 644 /etc/app/sub/c && "
                    "mkdir /etc/app/newdir && echo x > /etc/app/newdir/f")
    found = subprocess.run([*run, "check", str(base), "--events", "-"], capture_output=True,
                           text=True)
    assert found.returncode == 1
    events = [json.loads(line) for line in found.stdout.splitlines()]
    assert sorted((e["rule"], e["detail"]["path"], tuple(e["detail"]["fields"]))
                  for e in events) == [
        ("added", "/etc/app/new.conf", ()), ("added", "/etc/app/newdir", ()),
        ("added", "/etc/app/newdir/f", ()), ("changed", "/etc/app/a.conf", ("size", "sha256")),
        ("changed", "/etc/app/sub/c", ("mode",)), ("removed", "/etc/app/b.conf", ())]
    assert all(e["app"] == "fim" and e["vm"] == g.name for e in events)
    subprocess.run([*run, "restore", str(base)], check=True, capture_output=True)
    assert g.console.check(SNAPSHOT) == before


def test_enforce_dry_run_apply_and_idempotence(guest, tmp_path):
    g = guest
    g.console.check("grep -q ^bob: /etc/passwd || "
                    "echo 'bob:x:1001:1001::/home/bob:/bin/sh' >> /etc/passwd; "
                    "mkdir -p /home/bob && printf 'root:*:19000:0:99999:7:::\\n"
                    "bob:$6$salt$hash:19000:0:99999:7:::\\n' > /etc/shadow && "
                    "chmod 640 /etc/shadow && (sleep 6161 &)")
    state = tmp_path / "state.toml"
    state.write_text('[accounts.bob]\nlocked = true\n'
                     'authorized_keys = { present = ["ssh-ed25519 AAAAC3 ops@x"] }\n'
                     '[sysctl]\n"vm.swappiness" = 13\n'
                     '[interfaces.dummy0]\nstate = "up"\naddresses = ["10.9.9.9/24"]\n'
                     '[files."/etc/motd"]\ncontent = "Authorized use only\\n"\n'
                     'mode = "0640"\nowner = "0:0"\n'
                     '[[processes.forbidden]]\nname = "sleep"\ncmdline = "6161$"\n')
    run = [sys.executable, "-m", "cloudvmi.cli.main", "enforce", str(state), g.name, "--json"]
    untouched = g.console.check("cat /etc/shadow /proc/sys/vm/swappiness")
    dry = json.loads(subprocess.run([*run, "--dry-run"], check=True, capture_output=True,
                                    text=True).stdout)[g.name]
    assert [(c["item"].split()[0], c["what"]) for c in dry] == [
        ("account", "lock"), ("account", "add 1, remove 0 keys"), ("sysctl", "set to 13"),
        ("interface", "add address 10.9.9.9/24"), ("file", "write content"),
        ("file", "mode 640"), ("file", "owner 0:0"), ("process", "kill")]
    assert g.console.check("cat /etc/shadow /proc/sys/vm/swappiness") == untouched
    events = tmp_path / "events.jsonl"
    done = json.loads(subprocess.run([*run, "--events", str(events)], check=True,
                                     capture_output=True, text=True).stdout)[g.name]
    assert [c["what"] for c in done] == [c["what"] for c in dry]
    assert len(events.read_text().splitlines()) == len(dry)
    shadow = g.console.check("grep ^bob: /etc/shadow")
    assert shadow.startswith("bob:!$6$salt$hash:")  # as shadow's usermod -L writes it
    assert g.console.check("cat /proc/sys/vm/swappiness") == "13\n"
    assert "10.9.9.9/24" in g.console.check("ip -o addr show dev dummy0")
    assert g.console.check("stat -c '%a %u %g' /etc/motd; cat /etc/motd") == \
        "640 0 0\nAuthorized use only\n"
    assert g.console.check("cat /home/bob/.ssh/authorized_keys") == "ssh-ed25519 AAAAC3 ops@x\n"
    assert _pid(g, "sleep 6161") is None
    again = json.loads(subprocess.run(run, check=True, capture_output=True,
                                      text=True).stdout)[g.name]
    assert again == []


def test_hunt_clean_then_a_process_unlinked_from_the_task_list(guest):
    """A clean guest gives no findings; a process unlinked from the task list by a direct
    write into guest memory (as a rootkit would) is reported with its pid and name, seen in
    the pid table and the guest's /proc but not in the task list."""
    import struct

    from cloudvmi.apps.hunt import Hunt
    from cloudvmi.os.linux.views.processes import TaskReader
    from cloudvmi.vm import attach

    g = guest
    with attach(g.name, writable=True) as vm:
        target = Target(g.name, "")
        assert Hunt().check(target, vm) == []
        g.console.check("sleep 7777 &")
        victim = None
        for _ in range(50):  # until it has executed sleep
            victim = next((p for p in vm.linux.processes().items
                           if p.cmdline == ["sleep", "7777"]), None)
            if victim:
                break
            time.sleep(0.2)
        kernel = vm.linux.kernel
        offset = kernel.helper(TaskReader).tasks_offset
        node = victim.address + offset
        with vm.snapshot():  # unlink: prev->next = next, next->prev = prev
            nxt, prev = struct.unpack("<QQ", kernel.read(node, 16))
            kernel.space.write(prev, struct.pack("<Q", nxt))
            kernel.space.write(nxt + 8, struct.pack("<Q", prev))
        kernel.invalidate()
        assert victim.pid not in {p.pid for p in vm.linux.processes().items}
        found = Hunt().check(target, vm)
        hidden = [f for f in found if f.kind == "hidden-process"]
        assert [(f.evidence["pid"], f.evidence["comm"]) for f in hidden] == \
            [(victim.pid, "sleep")]
        assert hidden[0].absent == ["task list"]
        assert {"pid table", "guest /proc"} <= set(hidden[0].present)
        assert [f for f in found if f.kind != "hidden-process"] == []
        with vm.snapshot():  # put it back, so the guest can end it cleanly
            kernel.space.write(prev, struct.pack("<Q", node))
            kernel.space.write(nxt + 8, struct.pack("<Q", node))
        kernel.invalidate()
    g.console.check(f"kill {victim.pid}")

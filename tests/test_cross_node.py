"""Cross-node VMI: agents in their own network namespaces ("host nodes"), each with a real
guest behind it, and a client in another namespace, over mutual TLS."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudvmi.remote.audit import args_digest, verify

import oracle
from fleet import Fleet

RUNNER = str(Path(__file__).with_name("remote_client.py"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"), RUNNER)
    try:
        f.start()
        yield f
    finally:
        f.close()


def test_remote_views_equal_the_guests_own(fleet):
    ps, mods, vms = fleet.client("ops", {"do": "ps", "vm": "web1@node1"},
                                 {"do": "modules", "vm": "web2@node2"}, {"do": "vms"})
    theirs = oracle.processes(fleet.guests[0])
    mine = {pid: (ppid, comm, cmd) for pid, ppid, comm, cmd in ps["ok"]["items"]}
    for pid, want in theirs.items():
        if not want.comm.startswith("kworker"):
            assert mine[pid] == (want.ppid, want.comm, want.cmdline), pid
    assert mods["ok"] == sorted(oracle.modules(fleet.guests[1]))
    assert vms["ok"] == {"node1": ["web1"], "node2": ["web2"]}


def test_remote_memory_read_equals_local(fleet):
    g = fleet.guests[0]
    raw = g.shm_path.read_bytes()
    at = raw.find(b"Linux version ") & ~0xFFF  # kernel rodata: does not change
    (read,) = fleet.client("ops", {"do": "read_physical", "vm": "web1@node1", "address": at,
                                   "size": 64 << 10})
    assert read["ok"]["sha256"] == hashlib.sha256(raw[at:at + (64 << 10)]).hexdigest()


def test_remote_writable_operation(fleet):
    data = os.urandom(300_000)
    put, back = fleet.client("ops", {"do": "write_file", "vm": "web2@node2",
                                     "path": "/tmp/remote.bin", "hex": data.hex()},
                             {"do": "read_file", "vm": "web2@node2", "path": "/tmp/remote.bin"})
    assert put == {"ok": True} and bytes.fromhex(back["ok"]) == data
    md5 = fleet.guests[1].console.check("md5sum /tmp/remote.bin").split()[0]
    assert md5 == hashlib.md5(data).hexdigest()


def _console(g, command: str) -> str:
    return g.console.check(command).replace("\r\n", "\n")


def test_exec_through_an_agent_runs_host_programs_against_the_guest(fleet):
    """`vm.exec` of a remote VM: the program runs in the client's namespace, its guest calls
    on the node's agent; each run is audited, before and after; read-only identities are
    refused."""
    g = fleet.guests[0]
    uname, ip, change, denied, kept, kept_again = fleet.client(
        "ops", {"do": "exec", "vm": "web1@node1", "argv": ["busybox", "uname", "-a"]},
        {"do": "exec", "vm": "web1@node1", "argv": ["busybox", "ip", "addr"]},
        {"do": "exec", "vm": "web1@node1", "argv": [
            "busybox", "sh", "-c", "echo from-afar > /tmp/exec-remote && cat /tmp/exec-remote"]},
        {"do": "exec", "vm": "web1@node9", "argv": ["true"]},
        {"do": "exec", "vm": "web1@node1", "channel": "persistent",
         "argv": ["busybox", "hostname"]},
        {"do": "exec", "vm": "web1@node1", "channel": "persistent", "argv": [
            "busybox", "sh", "-c", "echo kept > /tmp/exec-kept && cat /tmp/exec-kept"]})
    assert uname["ok"][:2] == [0, _console(g, "busybox uname -a")]
    assert ip["ok"][:2] == [0, _console(g, "busybox ip addr")]
    assert change["ok"][:2] == [0, "from-afar\n"]
    assert _console(g, "cat /tmp/exec-remote") == "from-afar\n"
    # through a helper the agent keeps in the guest: one helper for both runs
    assert kept["ok"][:2] == [0, _console(g, "busybox hostname")]
    assert kept_again["ok"][:2] == [0, "kept\n"]
    helpers = _console(g, "grep -l cloudvmi-helper /proc/[0-9]*/comm | wc -l")
    assert helpers.strip() == "1"
    assert _console(g, "cat /tmp/exec-kept") == "kept\n"
    assert "error" in denied
    (refused,) = fleet.client("auditor", {"do": "exec", "vm": "web1@node1", "argv": ["true"]})
    assert refused["error"] == "denied"
    records = [json.loads(line) for line in
               (fleet.root / "node1" / "audit.jsonl").read_text().splitlines()]
    execs = [r for r in records if r["op"] == "exec"]
    assert [r["result"] for r in execs[-11:]] == ["started", "ok"] * 5 + ["denied"]
    assert execs[-5]["args_sha256"] == args_digest(
        {"argv": ["busybox", "hostname"], "as_pid": 0, "channel": "persistent"})
    assert verify(fleet.root / "node1" / "audit.jsonl").ok


def test_denials_are_refused_and_logged(fleet):
    (rogue,) = fleet.client("rogue", {"do": "ps", "vm": "web1@node1"})
    assert "error" in rogue and "unreachable" in rogue["message"]  # TLS handshake refused
    (nocert,) = fleet.client("ops", {"do": "nocert", "node": "node1"})
    assert "error" in nocert and "unreachable" in nocert["message"]
    (write,) = fleet.client("auditor", {"do": "write_file", "vm": "web1@node1",
                                        "path": "/tmp/x", "hex": "00"})
    assert write["error"] == "denied"
    (scope,) = fleet.client("scoped", {"do": "ps", "vm": "web2@node2"})
    assert scope["error"] == "denied"
    (allowed,) = fleet.client("scoped", {"do": "ps", "vm": "web1@node1"})
    assert "ok" in allowed
    records1 = [json.loads(line) for line in
                (fleet.root / "node1" / "audit.jsonl").read_text().splitlines()]
    records2 = [json.loads(line) for line in
                (fleet.root / "node2" / "audit.jsonl").read_text().splitlines()]
    assert any(r["who"] == "auditor" and r["result"] == "denied" and r["op"] == "write_file"
               for r in records1)
    tls = [r["detail"] for r in records1 if r["op"] == "tls-handshake"]
    assert any("CERTIFICATE_VERIFY_FAILED" in d for d in tls), tls  # the other CA's client
    assert any("CERTIFICATE" in d and "VERIFY_FAILED" not in d for d in tls), tls  # no cert
    assert any(r["who"] == "scoped" and r["result"] == "denied" and r["vm"] == "web2"
               for r in records2)
    assert any(r["who"] == "ops" and r["op"] == "write_file" and r["result"] == "ok"
               for r in records2)
    for node in ("node1", "node2"):
        assert verify(fleet.root / node / "audit.jsonl").ok


def test_fifty_concurrent_clients(fleet):
    """Every one of 50 concurrent answers is complete and right: each holds every process
    the guest's /proc shows (read after them), with its name."""
    (result,) = fleet.client("ops", {"do": "concurrent_ps", "vm": "web1@node1", "n": 50})
    r = result["ok"]
    assert r["errors"] == [] and len(r["answers"]) == 50
    theirs = oracle.processes(fleet.guests[0])
    stable = {pid: t.comm for pid, t in theirs.items()
              if not t.comm.startswith("kworker") and t.ppid != 2 or t.pid == 2}
    for answer in r["answers"]:
        mine = dict(answer)
        assert {pid: mine.get(pid) for pid in stable} == stable


def test_agent_killed_mid_operation_leaves_the_guest_intact(fleet):
    """The agent dies while a thread of the workload's counter is hijacked, blocked in the
    injected wait4 (the journal says so); after a restart the next call puts it back: the
    journal is gone, the counter is alive, the same process, and counting on."""
    g = fleet.guests[0]
    counter = next(p.pid for p in oracle.processes(g).values()
                   if p.cmdline[:2] == ["/bin/workload", "counter"])
    journal = fleet.journal("node1", g)
    client = subprocess.Popen(
        [*fleet.topo.run_in(fleet.topo.client), sys.executable, RUNNER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=fleet.client_env("ops"))
    client.stdin.write(json.dumps([{"do": "run", "vm": "web1@node1", "as_pid": counter,
                                    "argv": ["/bin/sleep", "8"]}]))
    client.stdin.close()
    held = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and held is None:
        try:
            entry = json.loads(journal.read_text())
        except (FileNotFoundError, ValueError):
            entry = {}
        if entry.get("parked") is False and entry.get("resume_at"):  # inside the batch
            held, held_at = entry, time.monotonic()
        time.sleep(0.005)
    assert held and held["tgid"] == counter, held
    time.sleep(1.0)  # blocked in wait4: the child sleeps 8 s
    fleet.stop_agent("node1", signal.SIGKILL)
    out = client.stdout.read()
    client.wait(120)
    assert "error" in json.loads(out.strip().splitlines()[-1])[0]
    assert journal.exists()  # the thread is still ours: nobody put it back yet
    fleet.start_agent("node1")
    (ps,) = fleet.client("ops", {"do": "ps", "vm": "web1@node1"})
    assert "ok" in ps, ps
    assert not journal.exists()  # the first call after the restart recovered it
    assert g.console.check("echo intact").strip() == "intact"
    time.sleep(max(0.0, held_at + 9 - time.monotonic()))  # its injected wait4 has returned
    first = _counter_value(g)
    time.sleep(1.5)
    assert _counter_value(g) > first  # the same process, still counting
    assert counter in {p.pid for p in oracle.processes(g).values()
                       if p.cmdline[:2] == ["/bin/workload", "counter"]}
    data = os.urandom(1000)
    put, back = fleet.client("ops", {"do": "write_file", "vm": "web1@node1",
                                     "path": "/tmp/after.bin", "hex": data.hex()},
                             {"do": "read_file", "vm": "web1@node1", "path": "/tmp/after.bin"})
    assert bytes.fromhex(back["ok"]) == data


def _counter_value(g) -> int:
    return int(g.console.check("tail -n 1 /tmp/counter.log").split()[1])


def test_fleet_listing_with_a_node_down(fleet):
    """`cloudvmi ps --all` and `vms` fan out to every node; a node that is down gets its own
    clear error and the others still answer."""
    fleet.stop_agent("node2")
    try:
        cli = [*fleet.topo.run_in(fleet.topo.client), sys.executable, "-m", "cloudvmi.cli.main"]
        ps = subprocess.run([*cli, "ps", "--all", "--json"], capture_output=True, text=True,
                            env=fleet.client_env("ops"), timeout=120)
        assert ps.returncode == 1  # not every node answered
        answer = json.loads(ps.stdout)
        assert "error" in answer["node2"] and "unreachable" in answer["node2"]["error"]
        assert any(p["comm"] == "odd (name) ü" for p in answer["node1"]["web1"]["items"])
        vms = subprocess.run([*cli, "vms", "--json"], capture_output=True, text=True,
                             env=fleet.client_env("ops"), timeout=120)
        listed = json.loads(vms.stdout)
        assert vms.returncode == 1  # node2 is down
        assert listed["node1"] == [{"name": "web1", "kind": "qmp", "running": True,
                                    "detail": listed["node1"][0]["detail"]}]
        assert "error" in listed["node2"]
    finally:
        fleet.start_agent("node2")


def test_applications_through_agents(fleet, tmp_path):
    """guard, hunt, fim and enforce from the client's namespace on VMs of other nodes (and
    on every VM with --all): the same results as locally, every change audited by the
    node's agent."""
    g1, g2 = fleet.guests[0], fleet.guests[1]
    cli = [*fleet.topo.run_in(fleet.topo.client), sys.executable, "-m", "cloudvmi.cli.main"]

    def run(*args, code=0):
        r = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=600,
                           env=fleet.client_env("ops"))
        assert r.returncode == code, (args, r.stdout[-2000:], r.stderr[-2000:])
        return r.stdout

    g1.console.check("sleep 8642 &")
    g2.console.check("sleep 8642 &")
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nname = "no-8642"\naction = "kill"\n'
                      'match = { name = "sleep", cmdline = "8642$" }\n')
    acted = json.loads(run("guard", "once", str(policy), "--all", "--json"))
    assert sorted((e["vm"], e["kind"], e["rule"]) for e in acted) == [
        ("web1@node1", "action", "no-8642"), ("web2@node2", "action", "no-8642")]
    for g in (g1, g2):
        assert "8642" not in _console(g, "ps -o args | grep -v grep | grep 8642 || true")

    assert json.loads(run("hunt", "web1@node1", "--json")) == {"web1@node1": []}

    base = tmp_path / "etc.json"
    run("fim", "baseline", "web2@node2", "/etc", "-o", str(base))
    g2.console.check("echo 'eve:x:666:666::/:/bin/sh' >> /etc/passwd")
    changed = json.loads(run("fim", "check", str(base), "--json", code=1))["changes"]
    assert [(c["path"], c["kind"]) for c in changed] == [("/etc/passwd", "changed")]
    run("fim", "restore", str(base))
    assert "eve" not in _console(g2, "cat /etc/passwd")

    state = tmp_path / "state.toml"
    state.write_text('[sysctl]\n"vm.swappiness" = 21\n')
    plan = json.loads(run("enforce", str(state), "--all", "--dry-run", "--json"))
    assert sorted(plan) == ["web1@node1", "web2@node2"]
    assert all([c["item"] for c in changes] == ["sysctl vm.swappiness"]
               for changes in plan.values())
    run("enforce", str(state), "--all")
    assert _console(g1, "cat /proc/sys/vm/swappiness") == "21\n"
    again = json.loads(run("enforce", str(state), "--all", "--json"))
    assert again == {"web1@node1": [], "web2@node2": []}

    records = [json.loads(line) for line in
               (fleet.root / "node1" / "audit.jsonl").read_text().splitlines()]
    assert any(r["op"] == "kill" and r["result"] == "ok" for r in records)
    assert sum(r["op"] == "exec" and r["result"] == "ok" for r in records) >= 3

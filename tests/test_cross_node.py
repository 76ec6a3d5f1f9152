"""Cross-node VMI: agents in their own network namespaces ("host nodes"), each with a real
guest behind it, and a client in another namespace, over mutual TLS."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cloudvmi.lab import guest as lab
from cloudvmi.remote.audit import verify
from cloudvmi.remote.certs import init_ca, issue

import oracle
from netns import Topology

RUNNER = str(Path(__file__).with_name("remote_client.py"))
PORT = 7443


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.topo = Topology(2)
        self.guests: list[lab.LabGuest] = []
        self.agents: dict[str, subprocess.Popen] = {}
        self.nodes = {"node1": self.topo.nodes[0], "node2": self.topo.nodes[1]}

    def pki(self) -> None:
        pki = self.root / "pki"
        init_ca(pki)
        for i, node in enumerate(self.nodes, start=1):
            issue(pki, pki, f"{node}-agent", "agent", hosts=[f"10.201.{i}.2"])
        for client in ("ops", "auditor", "scoped"):
            issue(pki, pki, client, "client")
        other = self.root / "other-ca"
        init_ca(other, name="Someone else's CA")
        issue(other, other, "ops", "client")  # same name, wrong CA
        for name, ca_dir, ident in (("ops", pki, "ops"), ("auditor", pki, "auditor"),
                                    ("scoped", pki, "scoped"), ("rogue", other, "ops")):
            lines = [f'[client]\nca = "{pki}/ca.pem"\ncert = "{ca_dir}/{ident}.pem"\n'
                     f'key = "{ca_dir}/{ident}.key"\n']
            for i, node in enumerate(self.nodes, start=1):
                lines.append(f'[[node]]\nname = "{node}"\naddress = "10.201.{i}.2:{PORT}"\n')
            (self.root / f"{name}.toml").write_text("\n".join(lines))

    def boot(self) -> None:
        for i, (node, ns) in enumerate(self.nodes.items(), start=1):
            g = lab.up(f"xn{uuid.uuid4().hex[:5]}-{i}", kernel="6.1", netns=ns)
            self.guests.append(g)
            qmp_dir = self.root / node / "vms"
            qmp_dir.mkdir(parents=True)
            (qmp_dir / f"web{i}.qmp").symlink_to(g.qmp_path)

    def config(self, node: str, i: int) -> Path:
        pki = self.root / "pki"
        cfg = self.root / node / "agent.toml"
        cfg.write_text(f"""
[agent]
node = "{node}"
listen = "10.201.{i}.2:{PORT}"
ca = "{pki}/ca.pem"
cert = "{pki}/{node}-agent.pem"
key = "{pki}/{node}-agent.key"
audit_log = "{self.root / node / 'audit.jsonl'}"
lab = false
qmp_dirs = ["{self.root / node / 'vms'}"]

[[allow]]
identity = "ops"
vms = ["*"]
permissions = ["read", "write", "operate"]

[[allow]]
identity = "auditor"
vms = ["*"]
permissions = ["read"]

[[allow]]
identity = "scoped"
vms = ["web1"]
permissions = ["read", "operate"]
""")
        return cfg

    def start_agent(self, node: str) -> None:
        i = list(self.nodes).index(node) + 1
        cfg = self.config(node, i)
        proc = subprocess.Popen(
            [*self.topo.run_in(self.nodes[node]), sys.executable, "-m", "cloudvmi.cli.main",
             "agent", "serve", "--config", str(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "COLUMNS": "200"})
        line = proc.stdout.readline()
        assert "listening" in line, line + proc.stdout.read(2000)
        self.agents[node] = proc

    def stop_agent(self, node: str, sig: int = signal.SIGTERM) -> None:
        proc = self.agents.pop(node, None)
        if proc is None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def client(self, identity: str, *steps: dict, timeout: float = 300) -> list[dict]:
        out = subprocess.run(
            [*self.topo.run_in(self.topo.client), sys.executable, RUNNER],
            input=json.dumps(steps), capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "CLOUDVMI_INVENTORY": str(self.root / f"{identity}.toml")})
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for node in list(self.agents):
            self.stop_agent(node)
        for g in self.guests:
            lab.down(g.name)
        self.topo.remove()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        f.pki()
        f.boot()
        for node in f.nodes:
            f.start_agent(node)
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
    (result,) = fleet.client("ops", {"do": "concurrent_ps", "vm": "web1@node1", "n": 50})
    r = result["ok"]
    assert r["errors"] == [] and r["answers"] == 50
    pids = {p for p, _ in r["first"]}
    assert pids >= set(oracle.processes(fleet.guests[0])) - {p for p, _ in []}


def test_agent_killed_mid_operation_leaves_the_guest_intact(fleet):
    g = fleet.guests[0]
    client = subprocess.Popen(
        [*fleet.topo.run_in(fleet.topo.client), sys.executable, RUNNER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CLOUDVMI_INVENTORY": str(fleet.root / "ops.toml")})
    # A program that runs 8 s: the agent dies while a guest thread is hijacked, blocked in
    # the injected wait4, with our registers and breakpoint in place.
    client.stdin.write(json.dumps([{"do": "run", "vm": "web1@node1",
                                    "argv": ["/bin/sleep", "8"]}]))
    client.stdin.close()
    time.sleep(2.5)
    fleet.stop_agent("node1", signal.SIGKILL)
    out = client.stdout.read()
    client.wait(120)
    assert "error" in json.loads(out.strip().splitlines()[-1])[0]
    fleet.start_agent("node1")
    (ps,) = fleet.client("ops", {"do": "ps", "vm": "web1@node1"})
    assert "ok" in ps, ps
    assert g.console.check("echo intact").strip() == "intact"
    counter = [p for p in oracle.processes(g).values()
               if p.cmdline[:2] == ["/bin/workload", "counter"]]
    assert counter
    data = os.urandom(1000)
    put, back = fleet.client("ops", {"do": "write_file", "vm": "web1@node1",
                                     "path": "/tmp/after.bin", "hex": data.hex()},
                             {"do": "read_file", "vm": "web1@node1", "path": "/tmp/after.bin"})
    assert bytes.fromhex(back["ok"]) == data

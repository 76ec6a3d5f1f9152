"""A small fleet for cross-node tests and benchmarks: host nodes as network namespaces, a
real guest behind each node's agent, a PKI, and clients of several identities in their own
namespace. Everything it starts is stopped by close()."""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from cloudvmi.lab import guest as lab
from cloudvmi.remote.certs import init_ca, issue

from netns import Topology

PORT = 7443


class Fleet:
    def __init__(self, root: Path, runner: str, nodes: int = 2, busy: bool = True) -> None:
        self.root = root
        self.busy = busy  # guests with the workload's busy loop (each costs a host core)
        self.runner = runner  # a script that reads client steps as JSON on stdin
        self.topo = Topology(nodes)
        self.guests: list[lab.LabGuest] = []
        self.agents: dict[str, subprocess.Popen] = {}
        self.nodes = {f"node{i}": ns for i, ns in enumerate(self.topo.nodes, start=1)}

    def start(self) -> None:
        """Certificates, one guest behind each node, and the agents."""
        self.pki()
        self.boot()
        for node in self.nodes:
            self.start_agent(node)

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
            g = lab.up(f"xn{uuid.uuid4().hex[:5]}-{i}", kernel="6.1", netns=ns, busy=self.busy)
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
            env={**os.environ, "COLUMNS": "200", "CLOUDVMI_STATE": str(self.state(node))})
        line = proc.stdout.readline()
        if "listening" not in line:
            proc.kill()
            raise RuntimeError(f"agent {node} did not start: {line}{proc.stdout.read(2000)}")
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

    def state(self, node: str) -> Path:
        """The agent's state directory (its injection journal)."""
        return self.root / node / "state"

    def journal(self, node: str, guest: lab.LabGuest) -> Path:
        """Where the agent of NODE journals injections into GUEST."""
        import hashlib

        key = hashlib.sha256(os.path.realpath(guest.qmp_path).encode()).hexdigest()[:20]
        return self.state(node) / "journal" / f"{key}.json"

    def client_env(self, identity: str) -> dict:
        return {**os.environ, "CLOUDVMI_INVENTORY": str(self.root / f"{identity}.toml")}

    def client(self, identity: str, *steps: dict, timeout: float = 300) -> list[dict]:
        out = subprocess.run(
            [*self.topo.run_in(self.topo.client), sys.executable, self.runner],
            input=json.dumps(steps), capture_output=True, text=True, timeout=timeout,
            env=self.client_env(identity))
        if out.returncode != 0:
            raise RuntimeError(f"client failed: {out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for node in list(self.agents):
            self.stop_agent(node)
        for g in self.guests:
            lab.down(g.name)
        self.topo.remove()

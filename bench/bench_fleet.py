"""A fleet beyond a handful of VMs: 10 agents in 10 network namespaces serving 100 VMs, most
of them memory dumps (a forensics collection), a few live lab guests; `cloudvmi ps --all`
and `cloudvmi vms` from a client in another namespace, over mutual TLS.

Run: flock /work/guest.lock .venv/bin/python bench/bench_fleet.py
     [--dumps 'DIR/*.elf'] [--no-live] [--agents 10] [--vms 100] [--live 2]
Without --dumps it boots a guest to dump (then stops it); live guests boot one after the
other. Everything it starts is stopped at the end.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))  # netns harness

from cloudvmi.control.qmp import QMP  # noqa: E402
from cloudvmi.lab import guest as lab  # noqa: E402
from cloudvmi.remote.certs import init_ca, issue  # noqa: E402

from netns import Topology  # noqa: E402
from report import Report  # noqa: E402

PROBE = str(Path(__file__).with_name("fleet_probe.py"))
PORT = 7443
GOAL = 2.0  # seconds for the fleet process list


def make_dump(root: Path) -> list[str]:
    """A dump of a freshly booted 6.1 guest (the guest is stopped again)."""
    g = lab.up(f"fd{uuid.uuid4().hex[:5]}", kernel="6.1", busy=False)
    try:
        path = root / "guest.elf"
        with QMP(str(g.qmp_path)) as qmp:
            qmp.execute("stop")
            qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{path}")
        return [str(path)]
    finally:
        lab.down(g.name)


def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


class Bench:
    def __init__(self, root: Path, agents: int) -> None:
        self.root = root
        self.topo = Topology(agents)
        self.nodes = [f"node{i}" for i in range(1, agents + 1)]
        self.procs: dict[str, subprocess.Popen] = {}
        self.guests: list[lab.LabGuest] = []

    def pki(self) -> None:
        pki = self.root / "pki"
        init_ca(pki)
        for i, node in enumerate(self.nodes, start=1):
            issue(pki, pki, node, "agent", hosts=[f"10.201.{i}.2"])
        issue(pki, pki, "ops", "client")
        lines = [f'[client]\nca = "{pki}/ca.pem"\ncert = "{pki}/ops.pem"\nkey = "{pki}/ops.key"\n']
        lines += [f'[[node]]\nname = "{node}"\naddress = "10.201.{i}.2:{PORT}"\n'
                  for i, node in enumerate(self.nodes, start=1)]
        (self.root / "inventory.toml").write_text("\n".join(lines))

    def place(self, sources: list[str], total: int, live: int) -> None:
        """TOTAL VMs over the nodes: LIVE lab guests (booted one after the other), the rest
        dumps, each a symlink to one of SOURCES under a name of its own."""
        for node in self.nodes:
            (self.root / node / "cases").mkdir(parents=True)
            (self.root / node / "vms").mkdir()
        for i in range(live):
            g = lab.up(f"fl{uuid.uuid4().hex[:5]}-{i}", kernel="6.1", busy=False)
            self.guests.append(g)
            (self.root / self.nodes[i % len(self.nodes)] / "vms" / f"live{i}.qmp").symlink_to(
                g.qmp_path)
        for j in range(total - live):
            node = self.nodes[j % len(self.nodes)]
            (self.root / node / "cases" / f"case{j:03d}.elf").symlink_to(
                sources[j % len(sources)])

    def start(self) -> None:
        pki = self.root / "pki"
        for i, node in enumerate(self.nodes, start=1):
            cfg = self.root / node / "agent.toml"
            cfg.write_text(f"""
[agent]
node = "{node}"
listen = "10.201.{i}.2:{PORT}"
ca = "{pki}/ca.pem"
cert = "{pki}/{node}.pem"
key = "{pki}/{node}.key"
audit_log = "{self.root / node / 'audit.jsonl'}"
lab = false
qmp_dirs = ["vms"]
dumps = ["cases/*.elf"]

[[allow]]
identity = "ops"
vms = ["*"]
permissions = ["read"]
""")
            proc = subprocess.Popen(
                [*self.topo.run_in(self.topo.nodes[i - 1]), sys.executable, "-m",
                 "cloudvmi.cli.main", "agent", "serve", "--config", str(cfg)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env={**os.environ, "CLOUDVMI_STATE": str(self.root / node / "state")})
            self.procs[node] = proc
        for node, proc in self.procs.items():
            lines = []
            while "listening" not in (line := proc.stdout.readline()) and line:
                lines.append(line)
            if "listening" not in line:
                raise SystemExit(f"agent {node} did not start: {''.join(lines)[-2000:]}")

    def probe(self, runs: int) -> dict:
        out = subprocess.run(
            [*self.topo.run_in(self.topo.client), sys.executable, PROBE],
            input=json.dumps({"runs": runs}), capture_output=True, text=True, timeout=1800,
            env={**os.environ, "CLOUDVMI_INVENTORY": str(self.root / "inventory.toml")})
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for g in self.guests:
            lab.down(g.name)
        self.topo.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dumps", help="a glob of dump files to serve (else one is made)")
    parser.add_argument("--no-live", action="store_true", help="dumps only, no lab guest")
    parser.add_argument("--live", type=int, default=2, help="live lab guests (at most 2)")
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    live = 0 if args.no_live else min(2, args.live)
    report = Report("fleet")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = sorted(glob.glob(args.dumps)) if args.dumps else make_dump(root)
        if not sources:
            raise SystemExit(f"no dump matches {args.dumps}")
        print(f"CloudVMI fleet: {args.agents} agents in network namespaces, {args.vms} VMs "
              f"({live} live, {args.vms - live} dumps of {len(sources)} images), mutual TLS")
        bench = Bench(root, args.agents)
        try:
            bench.pki()
            bench.place(sources, args.vms, live)
            bench.start()
            idle = {n: rss_kib(p.pid) for n, p in bench.procs.items()}
            r = bench.probe(args.runs)
            served = {n: rss_kib(p.pid) for n, p in bench.procs.items()}
        finally:
            bench.close()
    if r["errors"] or r["first_ps_code"]:
        print("errors:", *r["errors"], sep="\n  ")
    setup = (f"({r['vms']} VMs, {r['processes']} processes; "
             f"{'with' if live else 'no'} live guests)")
    med = statistics.median
    report.add("fleet ps --all, first after agents start (CLI)", r["first_ps_s"], "s",
               note="(agents attach every VM: locate each kernel)")
    report.add("fleet ps --all, cold client (CLI: new process, TLS)", med(r["ps_cli_s"]), "s",
               f"<= {GOAL:g} s", med(r["ps_cli_s"]) <= GOAL, note=setup)
    report.add("fleet ps --all, warm (API, 4 VMs at once per node)", med(r["ps_api_s"]), "s",
               f"<= {GOAL:g} s", med(r["ps_api_s"]) <= GOAL)
    report.add("fleet ps --all, warm (API, one VM at a time per node)",
               med(r["ps_api_serial_s"]), "s")
    spread = sorted(r["per_node_s"].values())
    report.add("  per node: fastest", spread[0], "s")
    report.add("  per node: median", med(spread), "s")
    report.add("  per node: slowest", spread[-1], "s")
    report.add("cloudvmi vms (CLI: new process, TLS)", med(r["vms_cli_s"]), "s")
    report.add("listing on 10 new channels (TCP + mutual TLS)", med(r["list_fresh_s"]) * 1e3,
               "ms")
    report.add("listing on 10 connected channels", med(r["list_reused_s"]) * 1e3, "ms")
    anon = [v["RssAnon"] / 1024 for v in served.values()]
    total = [v["VmRSS"] / 1024 for v in served.values()]
    report.add("agent RSS at start (median)", med(v["VmRSS"] / 1024 for v in idle.values()),
               "MiB")
    report.add(f"agent RSS serving {args.vms // args.agents} VMs (median)", med(total), "MiB",
               note="(mostly the dumps' page cache, shared between agents)")
    report.add(f"agent anonymous RSS serving {args.vms // args.agents} VMs (median)",
               med(anon), "MiB", note=f"(max {max(anon):.0f} MiB)")
    print(f"saved {report.save()}")


if __name__ == "__main__":
    main()

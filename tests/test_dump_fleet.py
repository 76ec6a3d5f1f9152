"""Agents serving memory dumps as read-only VMs (a forensics collection), and a fleet of
them found through DNS SRV records: `ps --all` and `vms` across the agents, with one down."""

import json
import subprocess
import sys

import pytest
from dns_server import DNSServer

from cloudvmi.remote.certs import init_ca, issue
from cloudvmi.remote.client import TLS, Node, PermissionDenied, RemoteError
from cloudvmi.vm import attach

from agent_process import Agent

SRV = "_cloudvmi._tcp.cases.test"


def _config(root, node: str, dumps: str, pki) -> str:
    return f"""
[agent]
node = "{node}"
listen = "127.0.0.1:0"
ca = "{pki}/ca.pem"
cert = "{pki}/{node}.pem"
key = "{pki}/{node}.key"
audit_log = "{root / 'audit.jsonl'}"
lab = false
dumps = [{dumps}]

[[allow]]
identity = "analyst"
vms = ["case-*"]
permissions = ["read", "write", "operate"]
"""


@pytest.fixture(scope="module")
def cases(guest_images, tmp_path_factory):
    """Three agents on loopback with mutual TLS: n1 serving a 6.1 guest's ELF dump and raw
    image (and one file no rule allows), n2 the ELF dump again, n3 stopped at once (down)."""
    root = tmp_path_factory.mktemp("cases")
    images = guest_images("6.1")
    pki = root / "pki"
    init_ca(pki)
    for i in (1, 2, 3):
        issue(pki, pki, f"n{i}", "agent", hosts=[f"n{i}.cases.test"])
    issue(pki, pki, "analyst", "client")
    files = {"n1": {"case-elf.elf": "6.1.elf", "case-raw.raw": "6.1.raw",
                    "secret.elf": "6.1.elf"},
             "n2": {"case-two.elf": "6.1.elf"}, "n3": {"case-three.elf": "6.1.elf"}}
    agents = {}
    try:
        for node, links in files.items():
            (root / node).mkdir()
            for name, image in links.items():
                (root / node / name).symlink_to(images / image)
            globs = f'"{root / node}/*.elf", "{root / node}/*.raw"'
            agents[node] = Agent(root / node, config=_config(root / node, node, globs, pki))
        agents["n3"].stop()
        dns = DNSServer({(SRV, "SRV"): [f"0 0 {a.address.rsplit(':', 1)[1]} {n}.cases.test."
                                        for n, a in agents.items()],
                         **{(f"{n}.cases.test", "A"): ["127.0.0.1"] for n in agents}})
        (root / "inventory.toml").write_text(
            f'[client]\nca = "{pki}/ca.pem"\ncert = "{pki}/analyst.pem"\n'
            f'key = "{pki}/analyst.key"\n')
        yield root, images, agents, dns
    finally:
        for a in agents.values():
            a.stop()
        if "dns" in locals():
            dns.close()


def _node(root, agent: Agent, name: str) -> Node:
    return Node(agent.address, TLS.from_dir(root / "pki", "analyst"), name=name,
                server_name=f"{name}.cases.test")


def test_an_agent_serves_dumps_read_only(cases):
    root, images, agents, _ = cases
    node = _node(root, agents["n1"], "n1")
    try:
        listed = {v.name: (v.kind, v.running) for v in node.vms()}
        assert listed == {"case-elf": ("dump", False), "case-raw": ("dump", False)}
        for name, image in (("case-elf", "6.1.elf"), ("case-raw", "6.1.raw")):
            with attach(str(images / image)) as local:
                mine = local.linux.processes()
            theirs = node.vm(name).linux.processes()
            assert theirs == mine and len(mine.items) > 20
        vm = node.vm("case-elf")
        for change in (lambda: vm.guest.kill(1, 9), lambda: vm.write_physical(0, b"x"),
                       lambda: vm.exec(["true"]), lambda: vm.pause()):
            with pytest.raises(RemoteError, match="memory dump: read-only") as refused:
                change()
            assert refused.value.kind == "ReadOnlyVM"
        for path in ("case-elf.elf", "case-/../n1/secret.elf", f"case-/..{images}/6.1.elf"):
            with pytest.raises(RemoteError, match="no VM") as unknown:
                node.vm(path).read_physical(0, 16)  # a client names VMs, never files
            assert unknown.value.kind == "UnknownVM"
        with pytest.raises(PermissionDenied):
            node.vm("secret").linux.processes()  # served, but no rule lets analyst read it
    finally:
        node.close()
    records = [json.loads(line) for line in (root / "n1" / "audit.jsonl").read_text().split("\n")
               if line.startswith("{")]
    refused = [(r["op"], r["result"]) for r in records if "read-only" in r.get("detail", "")]
    assert refused == [("kill", "error"), ("write_physical", "error"), ("exec", "error"),
                       ("pause", "error")]


def test_fleet_ps_from_srv_nodes_with_one_down(cases):
    root, images, agents, dns = cases
    cli = [sys.executable, "-m", "cloudvmi.cli.main"]
    env = {**__import__("os").environ, "CLOUDVMI_INVENTORY": str(root / "inventory.toml"),
           "COLUMNS": "200"}
    fleet = ["--srv", SRV, "--dns", dns.address, "--timeout", "20"]
    ps = subprocess.run([*cli, "ps", "--all", "--json", *fleet], capture_output=True,
                        text=True, env=env, timeout=300)
    assert ps.returncode == 1, ps.stderr  # not every node answered
    answer = json.loads(ps.stdout)
    assert list(answer) == ["n1.cases.test", "n2.cases.test", "n3.cases.test"]
    assert "unreachable" in answer["n3.cases.test"]["error"]
    with attach(str(images / "6.1.elf")) as local:
        mine = [[p.pid, p.comm, p.cmdline] for p in local.linux.processes().items]
    for node, vm in (("n1.cases.test", "case-elf"), ("n1.cases.test", "case-raw"),
                     ("n2.cases.test", "case-two")):
        assert [[p["pid"], p["comm"], p["cmdline"]] for p in answer[node][vm]["items"]] == mine
    table = subprocess.run([*cli, "ps", "--all", *fleet], capture_output=True, text=True,
                           env=env, timeout=300)
    errors = [line for line in table.stderr.splitlines() if "n3.cases.test" in line]
    assert table.returncode == 1 and len(errors) == 1 and "unreachable" in errors[0]
    assert "case-two@n2.cases.test" in table.stdout
    vms = subprocess.run([*cli, "vms", *fleet], capture_output=True, text=True, env=env,
                         timeout=120)
    rows = [line.split()[0] for line in vms.stdout.splitlines() if "@" in line]
    assert vms.returncode == 1 and rows == [
        "case-elf@n1.cases.test", "case-raw@n1.cases.test", "case-two@n2.cases.test",
        "?@n3.cases.test"]


def test_reads_share_one_stream_and_a_refusal_does_not_end_it(cases):
    """Small reads go over one kept stream (the Reads RPC), each authorized, audited and
    answered as a unary Read answers it: a refused read raises as it would, and the next
    read still comes over the same stream; a change sent on it is refused, not made."""
    from cloudvmi.remote.proto import cloudvmi_pb2 as pb

    root, images, agents, _ = cases
    node = _node(root, agents["n1"], "n1")
    try:
        vm = node.vm("case-elf")
        with attach(str(images / "6.1.elf")) as local:
            want = [local.read_physical(a, 4096) for a in range(0x100000, 0x110000, 4096)]
        assert [vm.read_physical(a, 4096) for a in range(0x100000, 0x110000, 4096)] == want
        stream = node._reads
        assert stream is not None and stream.usable
        with pytest.raises(PermissionDenied):
            node.vm("secret").read_physical(0, 16)
        with pytest.raises(RemoteError, match="no VM") as unknown:
            node.vm("case-nosuch").read_physical(0, 16)
        assert unknown.value.kind == "UnknownVM"
        assert vm.read_physical(0x100000, 4096) == want[0]
        assert node._reads is stream and stream.usable  # the refusals did not end it
        refused = stream.ask(pb.Call(vm="case-elf", capability="guest.kill",
                                     args_json=json.dumps({"pid": 1, "signal": 9})))
        assert refused[0] is None and refused[1]["type"] == "ValueError"
        assert "not a read" in refused[1]["message"]
    finally:
        node.close()
    assert node._reads.broken


def test_streams_of_reads_are_bounded_and_never_starve_calls(cases):
    """A client keeps at most two streams of reads open on an agent; a third is refused and
    its reads go unary, and streams hold none of the client's call slots: with two streams
    open, four more calls at once (the client's whole share) still run."""
    from concurrent.futures import ThreadPoolExecutor

    root, images, agents, _ = cases
    nodes = [_node(root, agents["n1"], "n1") for _ in range(3)]
    try:
        with attach(str(images / "6.1.elf")) as local:
            want = local.read_physical(0x100000, 4096)
            procs = local.linux.processes()
        assert all(n.vm("case-elf").read_physical(0x100000, 4096) == want for n in nodes)
        assert [n._reads.usable for n in nodes] == [True, True, False]
        assert nodes[2]._streams_refused_until > 0
        with ThreadPoolExecutor(4) as pool:
            lists = list(pool.map(lambda _: nodes[2].vm("case-elf").linux.processes(),
                                  range(4)))
        assert all(p == procs for p in lists)
    finally:
        for n in nodes:
            n.close()

"""Nodes from beyond the inventory's [[node]] tables: a static list and DNS SRV records
(asked of a DNS server this test starts on loopback), and dump file names an agent lists."""

import os

import pytest
from dns_server import DNSServer

from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import dumps, nodesource
from cloudvmi.remote.inventory import load

SRV = "_cloudvmi._tcp.fleet.test"


@pytest.fixture
def dns():
    server = DNSServer({
        (SRV, "SRV"): ["10 5 7443 b.fleet.test.", "0 5 7444 a.fleet.test.",
                       "10 9 7445 c.fleet.test."],
        ("a.fleet.test", "A"): ["127.0.0.11"], ("b.fleet.test", "A"): ["127.0.0.12"],
        ("c.fleet.test", "A"): ["127.0.0.13"],
    })
    yield server
    server.close()


def test_srv_records_give_nodes_in_priority_then_weight_order(dns):
    nodes = nodesource.srv(SRV, dns.address)
    assert [(n.name, n.address, n.server_name) for n in nodes] == [
        ("a.fleet.test", "127.0.0.11:7444", "a.fleet.test"),
        ("c.fleet.test", "127.0.0.13:7445", "c.fleet.test"),
        ("b.fleet.test", "127.0.0.12:7443", "b.fleet.test")]
    assert dns.queries == [(SRV + ".", "SRV")]  # the addresses came as glue


def test_srv_targets_without_glue_are_resolved(dns):
    dns.glue = False
    assert [n.address for n in nodesource.srv(SRV, dns.address)] == [
        "127.0.0.11:7444", "127.0.0.13:7445", "127.0.0.12:7443"]
    assert ("a.fleet.test.", "A") in dns.queries
    with pytest.raises(CloudVMIError, match="SRV _none._tcp.fleet.test"):
        nodesource.srv("_none._tcp.fleet.test", dns.address)


def test_inventory_merges_its_nodes_sources_and_the_command_line(dns, tmp_path):
    inv = tmp_path / "inventory.toml"
    inv.write_text(f'[client]\nca = "ca.pem"\ncert = "me.pem"\nkey = "me.key"\n\n'
                   f'[[node]]\nname = "a.fleet.test"\naddress = "127.0.0.11:7444"\n\n'
                   f'[sources]\nsrv = ["{SRV}"]\ndns = "{dns.address}"\ntimeout = 7\n')
    got = load(inv, nodes="n9=127.0.0.9:7000,127.0.0.13:7445,127.0.0.12:1")
    assert {n: (e.address, e.server_name) for n, e in got.nodes.items()} == {
        "a.fleet.test": ("127.0.0.11:7444", None),  # listed once, by its address
        "c.fleet.test": ("127.0.0.13:7445", "c.fleet.test"),
        "b.fleet.test": ("127.0.0.12:7443", "b.fleet.test"),
        "n9": ("127.0.0.9:7000", None),
        "127.0.0.12": ("127.0.0.12:1", None)}
    assert got.timeout == 7
    assert load(tmp_path / "absent.toml", nodes="127.0.0.1:1").nodes["127.0.0.1"].address \
        == "127.0.0.1:1"  # credentials are asked for when a node is dialled
    for bad in ("", "nohost", "127.0.0.1:99999"):
        with pytest.raises(CloudVMIError):
            nodesource.static(bad)
    inv.write_text('[sources]\nsrvs = ["x"]\n')
    with pytest.raises(CloudVMIError, match="unknown key 'srvs'"):
        load(inv)


def test_dump_names_are_stems_or_deduplicated_stably(tmp_path):
    for rel in ("a/case1.elf", "a/guest.elf", "b/guest.elf", "a/we ird@x.raw", "a/web1.raw",
                "a/empty.raw"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"" if "empty" in rel else b"\0" * 4096)
    os.mkfifo(tmp_path / "a" / "fifo.raw")
    (tmp_path / "a" / "link.elf").symlink_to(tmp_path / "a" / "case1.elf")
    globs = dumps.patterns([tmp_path / "a", tmp_path / "b" / "*.elf"])
    found, more = dumps.find(globs, 100, taken=frozenset({"web1"}))
    names = {d.name: os.path.relpath(d.path, tmp_path) for d in found}
    assert not more and set(names.values()) == {
        "a/case1.elf", "a/guest.elf", "b/guest.elf", "a/we ird@x.raw", "a/web1.raw",
        "a/link.elf"}  # no empty file, no fifo
    assert names["case1"] == "a/case1.elf" and names["link"] == "a/link.elf"
    hashed = {n for n in names if n not in ("case1", "link")}
    assert all(dumps.SAFE_NAME.fullmatch(n) for n in hashed) and len(hashed) == 4
    assert {n.rsplit("-", 1)[0] for n in hashed} == {"guest", "we_ird_x", "web1"}
    again, _ = dumps.find(globs, 100, taken=frozenset({"web1"}))
    assert again == found  # the same names each time
    few, more = dumps.find(globs, 2)
    assert more and len(few) == 2

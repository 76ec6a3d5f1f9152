"""The network configuration views (ifaces, routes) against the guest's own view of the same
moment: /sys/class/net, `ip addr`, `ip -6 addr`, `ip route` and /proc/net/route, parsed
generically (no literal addresses); and hostile edits of a real 6.1 guest image."""

import ipaddress
import re
import shutil
import struct

import pytest
from test_hostile import _edit, _timed

from cloudvmi.os.linux.views.ifaces import IfaceReader, NetReader, ifaces
from cloudvmi.os.linux.views.routes import FibReader, routes
from cloudvmi.vm import attach

# The link flags busybox's `ip` can show (iproute2 shows these and more).
BUSYBOX_LINK_FLAGS = {"LOOPBACK", "BROADCAST", "POINTOPOINT", "MULTICAST", "NOARP", "UP",
                      "LOWER_UP"}
ROUTE_TYPES = {"unicast", "local", "broadcast", "anycast", "multicast", "blackhole",
               "unreachable", "prohibit", "throw", "nat"}
RTF_UP, RTF_GATEWAY, RTF_HOST, RTF_REJECT = 0x1, 0x2, 0x4, 0x200
VIEW_READS = 50_000  # reads a hostile case may make once the kernel is found (normal: ~100)


# -- the guest's own view ------------------------------------------------------------------

def _sysfs(truth) -> dict[str, dict]:
    """/sys/class/net as captured: NAME IFINDEX MAC MTU FLAGS(hex) per line."""
    out = {}
    for line in (truth / "net" / "sysfs").read_text().splitlines():
        if line.strip():
            name, index, mac, mtu, flags = line.split()
            out[name] = {"index": int(index), "mac": mac, "mtu": int(mtu),
                         "flags": int(flags, 16)}
    return out


def _ip_addr(text: str) -> dict[str, dict]:
    """`ip addr` output: per interface its index, flags, mtu and its inet/inet6 lines as
    token lists."""
    out: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        head = re.match(r"(\d+): ([^:@]+)[^:]*: <([^>]*)>(.*)", line)
        if head:
            rest = head.group(4).split()
            current = out[head.group(2)] = {
                "index": int(head.group(1)), "flags": [f for f in head.group(3).split(",") if f],
                "mtu": int(rest[rest.index("mtu") + 1]), "inet": [], "inet6": []}
        elif current is not None and line.split()[:1] in (["inet"], ["inet6"]):
            tokens = line.split()
            current[tokens[0]].append(tokens[1:])
    return out


def _keyword(tokens: list[str], key: str) -> str | None:
    return tokens[tokens.index(key) + 1] if key in tokens[:-1] else None


def _cidr(text: str) -> tuple[str, int]:
    net = ipaddress.ip_interface(text if "/" in text else text + "/32")
    return str(net.ip), net.network.prefixlen


def _ip_route(truth) -> list[dict]:
    """`ip route` (the main table): per line its type, destination, prefix length and
    keyword values (via, dev, scope, src, metric, proto)."""
    out = []
    for line in (truth / "net" / "ip-route").read_text().splitlines():
        tokens = line.split()
        if not tokens:
            continue
        kind = tokens.pop(0) if tokens[0] in ROUTE_TYPES else "unicast"
        dest = tokens.pop(0)
        address, plen = ("0.0.0.0", 0) if dest == "default" else _cidr(dest)
        out.append({"type": kind, "destination": address, "prefixlen": plen,
                    **{k: _keyword(tokens, k) for k in ("via", "dev", "scope", "src",
                                                        "metric", "proto")}})
    return out


def _proc_route(truth, endian: str) -> set[tuple]:
    """/proc/net/route rows: (iface, destination, gateway, flags, metric, mask); addresses
    are __be32 printed as the guest's native integers."""
    def address(word: str) -> str:
        return str(ipaddress.IPv4Address(struct.pack(endian + "I", int(word, 16))))

    rows = set()
    for line in (truth / "net" / "route").read_text().splitlines()[1:]:
        f = line.split()
        if f:
            rows.add((f[0], address(f[1]), address(f[2]), int(f[3], 16), int(f[6]),
                      address(f[7])))
    return rows


# -- our view of it --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def network(seen):
    """(interfaces of the initial namespace by name, all routes, truth dir, vm)."""
    vm, truth = seen
    interfaces = vm.linux.ifaces()
    routes = vm.linux.routes()
    assert interfaces.partial is None and routes.partial is None
    init = interfaces.items[0].namespace  # init_net heads net_namespace_list
    by_name = {i.name: i for i in interfaces.items if i.namespace == init}
    return by_name, [r for r in routes.items if r.namespace == init], truth, vm


def test_interfaces_match_sysfs(network):
    ours, _, truth, _ = network
    sysfs = _sysfs(truth)
    assert set(ours) == set(sysfs)
    for name, want in sysfs.items():
        i = ours[name]
        assert (i.index, i.mac, i.mtu, i.flags_value) == (want["index"], want["mac"],
                                                          want["mtu"], want["flags"]), name
        assert not i.errors


def test_link_flags_match_ip(network):
    ours, _, truth, _ = network
    for name, want in _ip_addr((truth / "net" / "ip-link").read_text()).items():
        shown = BUSYBOX_LINK_FLAGS | set(want["flags"])
        assert [f for f in ours[name].flags if f in shown] == want["flags"], name
        assert (ours[name].index, ours[name].mtu) == (want["index"], want["mtu"])


def test_ipv4_addresses_match_ip_addr(network):
    ours, _, truth, _ = network
    listed = _ip_addr((truth / "net" / "ip-addr").read_text())
    assert any(want["inet"] for want in listed.values())
    for name, want in listed.items():
        got = ours[name].ipv4
        assert [(a.address, a.prefixlen) for a in got] == [_cidr(t[0]) for t in want["inet"]]
        for a, tokens in zip(got, want["inet"], strict=True):
            assert a.scope == (_keyword(tokens, "scope") or "global")
            assert a.broadcast == _keyword(tokens, "brd")
            assert a.label == tokens[-1]


@pytest.mark.parametrize("source", ["ip-addr", "ip6-addr"])
def test_ipv6_addresses_match_ip(network, source):
    ours, _, truth, _ = network
    listed = _ip_addr((truth / "net" / source).read_text())
    assert any(want["inet6"] for want in listed.values())
    for name, want in listed.items():
        got = [(a.address, a.prefixlen, a.scope) for a in ours[name].ipv6]
        assert got == [(*_cidr(t[0]), _keyword(t, "scope")) for t in want["inet6"]], name


def test_main_table_matches_ip_route(network):
    _, routes, truth, _ = network
    main = {(r.destination, r.prefixlen, r.type): r for r in routes if r.table == "main"}
    listed = _ip_route(truth)
    assert listed and {(w["destination"], w["prefixlen"], w["type"]) for w in listed} == \
        set(main)
    for want in listed:
        r = main[(want["destination"], want["prefixlen"], want["type"])]
        assert r.gateway == want["via"] and r.device == want["dev"]
        assert r.scope == (want["scope"] or "global")
        assert r.source == want["src"]
        assert r.metric == int(want["metric"] or 0)
        if want["proto"]:
            assert r.protocol == want["proto"]
        assert not r.errors


def test_main_table_matches_proc_net_route(network):
    _, routes, truth, vm = network
    endian = vm.linux.kernel.btf.endian
    rows = set()
    for r in routes:
        if r.table != "main" or r.type in ("broadcast", "multicast"):
            continue
        mask = str(ipaddress.IPv4Network(f"0.0.0.0/{r.prefixlen}").netmask)
        flags = RTF_UP | (RTF_GATEWAY if r.gateway else 0)
        flags |= (RTF_HOST if r.prefixlen == 32 else 0)
        flags |= RTF_REJECT if r.type in ("unreachable", "prohibit") else 0
        rows.add((r.device or "*", r.destination, r.gateway or "0.0.0.0", flags, r.metric,
                  mask))
    assert rows == _proc_route(truth, endian)


def test_local_table_has_the_addresses(network):
    """Every IPv4 address of the guest is a local route of the local table (which shares
    the main table's trie when the guest has no custom rules)."""
    ours, routes, _, _ = network
    local = {(r.destination, r.device) for r in routes
             if r.table == "local" and r.type == "local"}
    for i in ours.values():
        for a in i.ipv4:
            assert (a.address, i.name) in local


# -- hostile memory ---------------------------------------------------------------------------

@pytest.fixture
def raw_copy(guest_images, tmp_path):
    path = tmp_path / "ram.raw"
    shutil.copyfile(guest_images("6.1") / "6.1.raw", path)
    return path


def _write_pointer(kernel, address: int, value: int) -> None:
    kernel.space.write(address, kernel.arch.pointer.pack(value))


def _view(path, name: str):
    """View NAME of the edited image, its reads counted once the kernel is found."""
    with attach(str(path), profile_cache=None) as vm:
        vm.linux.kernel  # noqa: B018  (locating the kernel is not the view's work)
        return _timed(getattr(vm.linux, name), VIEW_READS)


def test_intact_copy_is_complete(raw_copy):
    assert _view(raw_copy, "ifaces").partial is None
    assert _view(raw_copy, "routes").partial is None


def test_cyclic_device_list_gives_a_marked_partial_result(raw_copy):
    mem, kernel, _ = _edit(raw_copy)
    nets = kernel.helper(NetReader)
    (net, _), *_ = nets.namespaces()[0]
    devices, _ = nets.devices(net, 100)
    assert len(devices) >= 2
    # The last device's next now leads back to the first: the ring never reaches its head.
    _write_pointer(kernel, devices[-1] + nets.dev_list_offset, devices[0] + nets.dev_list_offset)
    mem.close()
    result = _view(raw_copy, "ifaces")
    assert result.partial and "loops" in result.partial
    assert [i.address for i in result.items] == devices


def test_cyclic_address_list_marks_the_device(raw_copy):
    mem, kernel, _ = _edit(raw_copy)
    reader = kernel.helper(IfaceReader)
    victim = next(i for i in ifaces(kernel).items if i.ipv4)
    in_dev = reader.dev.read(kernel, victim.address)["ip_ptr"]
    first = reader.in_device.read(kernel, in_dev)["ifa_list"]
    _write_pointer(kernel, first + reader.in_ifaddr.offset("next"), first)  # ifa_next -> self
    mem.close()
    result = _view(raw_copy, "ifaces")
    hit = next(i for i in result.items if i.address == victim.address)
    assert hit.errors and "loops" in hit.errors[0]
    assert [a.address for a in hit.ipv4] == [victim.ipv4[0].address]
    assert result.partial and victim.name in result.partial


def _main_trie_root(kernel) -> tuple[FibReader, int]:
    fib = kernel.helper(FibReader)
    (net, _), *_ = kernel.helper(NetReader).namespaces()[0]
    tables, _ = fib.tables(net)
    trie = dict(tables)[254]
    return fib, kernel.read_u64(trie + fib.root)


def test_trie_node_pointing_at_itself(raw_copy):
    mem, kernel, _ = _edit(raw_copy)
    before = routes(kernel).items
    fib, root = _main_trie_root(kernel)
    kv = fib.kv.read(kernel, root)
    assert kv["bits"], "the main trie's root is an inner node"
    size = fib.pointer.size
    raw = kernel.read(root + fib.children, size << kv["bits"])
    index = next(i for i, (slot,) in enumerate(fib.pointer.iter_unpack(raw)) if slot)
    kernel.space.write(root + fib.children + size * index, fib.pointer.pack(root))  # itself
    mem.close()
    result = _view(raw_copy, "routes")
    assert result.partial and "twice" in result.partial
    after = {(r.table, r.destination, r.prefixlen, r.type) for r in result.items}
    whole = {(r.table, r.destination, r.prefixlen, r.type) for r in before}
    assert after and after < whole  # the other children's routes are still there


def test_trie_node_claiming_every_key_is_not_read(raw_copy):
    """An inner node that claims 2^32 children (pos 0, bits 32: still below its parent) is
    passed over by the walk's budget instead of being read."""
    mem, kernel, _ = _edit(raw_copy)
    fib, root = _main_trie_root(kernel)
    kernel.space.write(root + fib.kv.offset("pos"), b"\0")
    kernel.space.write(root + fib.kv.offset("bits"), bytes([32]))
    mem.close()
    result = _view(raw_copy, "routes")
    assert result.partial and "budget" in result.partial

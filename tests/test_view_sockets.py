"""The `sockets` view against the guest's own /proc/net/{tcp,tcp6,udp,udp6,unix} and
/proc/PID/fd, on 5.10, 6.1 and 6.12 (the `seen` fixture); and on hostile copies of a 6.1
image (bogus and cyclic chains): bounded work, a result marked partial."""

import contextlib
import ipaddress
import shutil
import struct
import time
from collections import Counter
from pathlib import Path

import pytest
from test_hostile import _edit, _timed

from cloudvmi.os.linux.views import sockets as sockets_mod
from cloudvmi.os.linux.views.sockets import SocketReader, sockets
from cloudvmi.vm import attach

# /proc/net/tcp's `st` column (include/net/tcp_states.h) as ss names the states.
PROC_STATES = {0x01: "ESTAB", 0x02: "SYN-SENT", 0x03: "SYN-RECV", 0x04: "FIN-WAIT-1",
               0x05: "FIN-WAIT-2", 0x06: "TIME-WAIT", 0x07: "UNCONN", 0x08: "CLOSE-WAIT",
               0x09: "LAST-ACK", 0x0A: "LISTEN", 0x0B: "CLOSING"}
UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
SO_ACCEPTCON = 0x10000  # /proc/net/unix Flags of a listening socket
SS_CONNECTING, SS_CONNECTED = 2, 3
PORT = 9000  # /bin/workload net 9000
HOSTILE_READS = 20_000  # reads of guest memory a hostile case may cost (intact: ~3,000)


@pytest.fixture(scope="module")
def viewed_sockets(seen):
    vm, truth = seen
    return vm, truth, vm.linux.sockets()


def _proc_address(text: str):
    """An address as /proc/net prints it: each 32-bit word in the guest's (little-endian)
    order, as hex."""
    raw = bytes.fromhex(text)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def _proc_inet(truth: Path, protocol: str, family: str, name: str) -> Counter:
    rows: Counter = Counter()
    for line in (truth / "net" / name).read_text().splitlines()[1:]:
        parts = line.split()
        if not parts:
            continue
        (local, lport), (remote, rport) = (p.split(":") for p in parts[1:3])
        rows[(protocol, family, _proc_address(local), int(lport, 16), _proc_address(remote),
              int(rport, 16), PROC_STATES[int(parts[3], 16)], int(parts[9]),
              int(parts[7]))] += 1
    return rows


def _view_inet(result, protocol: str, family: str) -> Counter:
    return Counter((s.protocol, s.family, ipaddress.ip_address(s.local_address), s.local_port,
                    ipaddress.ip_address(s.remote_address), s.remote_port, s.state, s.inode,
                    s.uid)
                   for s in result.items if (s.protocol, s.family) == (protocol, family))


def _proc_unix(truth: Path) -> Counter:
    """(type, state as ss says it, inode, path) of every /proc/net/unix line. /proc gives
    the socket's SS_* state; ss the sk_state: LISTEN, ESTAB (connected, or connected but not
    yet accepted), else UNCONN."""
    rows: Counter = Counter()
    for line in (truth / "net" / "unix").read_text().splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) < 7:
            continue
        flags, kind, st = int(parts[3], 16), int(parts[4], 16), int(parts[5], 16)
        state = ("LISTEN" if flags & SO_ACCEPTCON else
                 "ESTAB" if st in (SS_CONNECTING, SS_CONNECTED) else "UNCONN")
        rows[(UNIX_TYPES[kind], state, int(parts[6]),
              parts[7] if len(parts) > 7 else "")] += 1
    return rows


def _fd_owners(truth: Path) -> dict[int, set[int]]:
    """Socket inode -> pids holding it, from the guest's /proc/PID/fd links."""
    owners: dict[int, set[int]] = {}
    for fd in (truth / "proc").glob("*/fd"):
        for line in fd.read_text().splitlines():
            _, _, target = line.partition("\t")
            if target.startswith("socket:[") and target.endswith("]"):
                owners.setdefault(int(target[8:-1]), set()).add(int(fd.parent.name))
    return owners


def test_complete(viewed_sockets):
    _, _, result = viewed_sockets
    assert result.partial is None, result.partial
    assert len(result.items) > 200


@pytest.mark.parametrize("protocol,family,name", [
    ("tcp", "ipv4", "tcp"), ("tcp", "ipv6", "tcp6"), ("udp", "ipv4", "udp"),
    ("udp", "ipv6", "udp6")])
def test_inet_tables_equal_proc_net(viewed_sockets, protocol, family, name):
    """Every line of /proc/net/NAME, and nothing else: addresses, ports, state, inode, uid."""
    _, truth, result = viewed_sockets
    expected = _proc_inet(truth, protocol, family, name)
    got = _view_inet(result, protocol, family)
    assert got == expected, (f"missing {expected - got}", f"extra {got - expected}")


def test_unix_table_equals_proc_net(viewed_sockets):
    _, truth, result = viewed_sockets
    expected = _proc_unix(truth)
    got = Counter((s.type, s.state, s.inode, s.path) for s in result.items
                  if s.protocol == "unix")
    assert got == expected, (f"missing {expected - got}", f"extra {got - expected}")


def test_workload_sockets(viewed_sockets):
    """What `workload net 9000` holds, named as ss names it."""
    _, _, result = viewed_sockets
    inet = {(s.protocol, s.state, s.local_address, s.local_port) for s in result.items}
    assert {("tcp", "LISTEN", "0.0.0.0", PORT), ("tcp", "LISTEN", "127.0.0.1", PORT + 1),
            ("tcp", "LISTEN", "::", PORT + 2), ("tcp", "LISTEN", "::1", PORT + 3),
            ("udp", "UNCONN", "0.0.0.0", PORT + 10), ("udp", "UNCONN", "127.0.0.1", PORT + 11),
            ("udp", "UNCONN", "::", PORT + 12), ("udp", "UNCONN", "::1", PORT + 13)} <= inet
    established = [s for s in result.items if s.protocol == "tcp" and s.state == "ESTAB"]
    assert len(established) >= 200
    ends = {(s.local_address, s.local_port, s.remote_address, s.remote_port)
            for s in established}
    assert all((r, rp, la, lp) in ends for la, lp, r, rp in ends)  # both ends held
    mapped = [s for s in established if s.local_address.startswith("::ffff:")]
    assert mapped and all(s.family == "ipv6" and s.remote_address == "::ffff:127.0.0.1"
                          for s in mapped)
    unix = {(s.type, s.state, s.path) for s in result.items if s.protocol == "unix"}
    assert {("stream", "LISTEN", "/run/wl-9000.sock"), ("stream", "LISTEN", "@wl-9000"),
            ("dgram", "UNCONN", "/run/wl-9000.dgram"),
            ("seqpacket", "LISTEN", "/run/wl-9000.seq")} <= unix


def test_unix_peers(viewed_sockets):
    """A connected UNIX socket names its peer's inode; socketpairs name each other."""
    _, _, result = viewed_sockets
    unix = {s.inode: s for s in result.items if s.protocol == "unix" and s.inode}
    assert all(s.peer_inode in unix for s in unix.values() if s.peer_inode)
    pairs = [s for s in unix.values() if s.peer_inode and unix[s.peer_inode].peer_inode == s.inode
             and not s.path]
    assert len(pairs) >= 4  # a stream and a datagram socketpair, both ends
    clients = [s for s in unix.values() if s.path == "/run/wl-9000.sock" and s.state == "ESTAB"]
    assert clients  # the accepted end of a client connection carries the listener's path


def test_owners_equal_proc_fd(viewed_sockets):
    """The pids of each socket are the processes whose /proc/PID/fd links to it."""
    _, truth, result = viewed_sockets
    owners = _fd_owners(truth)
    by_inode = {s.inode: s for s in result.items if s.inode}
    for inode, pids in owners.items():
        if inode in by_inode:
            assert set(by_inode[inode].pids) == pids, inode
    for s in by_inode.values():
        assert set(s.pids) == owners.get(s.inode, set()), s
    workload = [s for s in result.items if s.protocol == "tcp" and s.local_port == PORT + 1]
    assert workload and all(s.pids for s in workload if s.state == "LISTEN")


def test_namespace(viewed_sockets):
    """The workload runs in the initial namespace: its sockets carry init_net's inode."""
    vm, _, result = viewed_sockets
    init = vm.linux.kernel.variable("init_net", "struct net").ns.inum.value_()
    assert init
    assert all(s.netns == init for s in result.items
               if s.protocol == "unix" and s.path.startswith("/run/wl."))
    assert all(s.netns == init for s in result.items if s.local_port in range(PORT, PORT + 14))


def test_one_read_per_object(viewed_sockets, monkeypatch):
    """Each socket costs its struct sock, its socket inode and (UNIX) its name, no more;
    bucket arrays are read in chunks, not bucket by bucket. The warm view is fast."""
    vm, _, _ = viewed_sockets
    kernel = vm.linux.kernel
    monkeypatch.setattr(sockets_mod, "_owners", lambda k: ({}, None))
    sockets(kernel)  # compile the layouts
    space = kernel.space
    original = type(space).read
    calls = 0

    def counting(self, address, size):
        nonlocal calls
        calls += 1
        return original(self, address, size)

    monkeypatch.setattr(type(space), "read", counting)
    start = time.perf_counter()
    result = sockets(kernel)
    elapsed = time.perf_counter() - start
    named = sum(1 for s in result.items if s.path)
    assert calls <= 2 * len(result.items) + named + 64, calls
    assert elapsed < 0.1, elapsed


# ----- hostile copies of a 6.1 image


@pytest.fixture(scope="module")
def hostile_copy(guest_images, tmp_path_factory):
    """One writable copy of a real 6.1 guest's RAM for the module: each test edits it and
    puts the bytes back (see `_patched`)."""
    path = tmp_path_factory.mktemp("sockets-hostile") / "ram.raw"
    shutil.copyfile(guest_images("6.1") / "6.1.raw", path)
    yield path
    path.unlink()


@contextlib.contextmanager
def _patched(path):
    """(kernel, reader, intact view, write) over the copy; every write is undone after."""
    mem, kernel, _ = _edit(path)
    undo: list[tuple[int, bytes]] = []

    def write(address: int, data: bytes) -> None:
        undo.append((address, kernel.read(address, len(data))))
        kernel.space.write(address, data)

    try:
        yield kernel, kernel.helper(SocketReader), sockets(kernel), write
    finally:
        for address, data in reversed(undo):
            kernel.space.write(address, data)
        mem.close()


def _view(path):
    with attach(str(path), profile_cache=None) as vm:
        assert vm.linux.kernel  # locating the kernel is not the view's work
        return _timed(vm.linux.sockets, HOSTILE_READS)


def _victim(intact, protocol: str):
    return next(s for s in intact.items if s.protocol == protocol and s.inode and
                (protocol != "tcp" or s.state == "ESTAB"))


@pytest.mark.parametrize("target", ["unmapped", "not a socket"])
def test_bogus_socket_pointer_in_a_chain(hostile_copy, target):
    with _patched(hostile_copy) as (kernel, reader, intact, write):
        victim = _victim(intact, "tcp")
        wild = (kernel.page_offset + (64 << 30) if target == "unmapped"  # beyond RAM
                else kernel.symbols.lookup("empty_zero_page") + reader.node)  # zeros
        write(victim.address + reader.node, struct.pack("<Q", wild))
        result = _view(hostile_copy)
    assert result.partial and "TCP ehash" in result.partial, result.partial
    if target == "not a socket":
        assert "family 0" in result.partial
    found = {s.address for s in result.items}
    assert victim.address in found
    assert len(found) >= len(intact.items) - 8  # only that chain's tail is lost
    assert {s.address for s in intact.items if s.protocol != "tcp"} <= found


@pytest.mark.parametrize("protocol", ["tcp", "unix"])
def test_cyclic_chain(hostile_copy, protocol):
    """A socket whose next link leads back to itself: the walk stops, marked partial."""
    with _patched(hostile_copy) as (kernel, reader, intact, write):
        victim = _victim(intact, protocol)
        write(victim.address + reader.node, struct.pack("<Q", victim.address + reader.node))
        result = _view(hostile_copy)
    assert result.partial and "loops" in result.partial, result.partial
    assert [s.address for s in result.items].count(victim.address) == 1
    assert len(result.items) >= len(intact.items) - 8


def test_cyclic_namespace_list(hostile_copy):
    """init_net pointing to itself instead of back to net_namespace_list."""
    with _patched(hostile_copy) as (kernel, reader, intact, write):
        init = kernel.symbols.lookup("init_net") + reader.net_list
        write(init, struct.pack("<Q", init))
        result = _view(hostile_copy)
    assert result.partial and "namespace list" in result.partial, result.partial
    assert {s.address for s in result.items} == {s.address for s in intact.items}


def test_huge_hash_mask(hostile_copy):
    """A 16 Mi-bucket established table: read up to the bound, in chunks, marked partial."""
    with _patched(hostile_copy) as (kernel, reader, intact, write):
        mask = kernel.symbols.lookup("tcp_hashinfo") + reader.hashinfo.offset("ehash_mask")
        write(mask, struct.pack("<I", (1 << 24) - 1))
        result = _view(hostile_copy)
    assert result.partial and "buckets" in result.partial, result.partial
    assert {s.address for s in intact.items} <= {s.address for s in result.items}

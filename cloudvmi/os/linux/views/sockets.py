"""Sockets (TCP, UDP, UDP-Lite over IPv4 and IPv6; UNIX), as `ss -anp` shows them.

They come from the kernel's own socket hash tables, the ones /proc/net/{tcp,udp,unix} walk:
`inet_hashinfo` (listening and established/time-wait chains), `udp_table`/`udplite_table`,
and the UNIX table (global `unix_socket_table`, or `net->unx.table` per namespace). Which
tables exist and how they chain is probed from BTF members and symbols, never from version
numbers. The owning processes come from the `files` view (socket inode -> pids).

Every bucket array is read in large chunks (most buckets are empty); every chain is bounded
and cycle-checked, and `hlist_nulls` chains end at an odd "nulls" marker, not at NULL.
"""

import bisect
import ipaddress
import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cloudvmi.capability import Column, view
from cloudvmi.errors import CloudVMIError, GuestMemoryError, ProfileError
from cloudvmi.os.linux.btf import Kind
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.os.linux.views.common import ListWalkError, Problems, ViewResult, list_nodes
from cloudvmi.os.linux.views.files import files

# Bounds on walks over guest structures (hostile input): far above any real guest.
MAX_NAMESPACES = 1 << 12
MAX_BUCKETS = 1 << 22  # per hash table (TCP's established table defaults to at most 512 Ki)
MAX_CHAIN = 1 << 14  # sockets in one bucket's chain
MAX_SOCKETS = 1 << 20  # sockets in all tables together
MAX_BAD_CHAINS = 64  # broken chains in one table before it is given up as garbage
BUCKET_CHUNK = 1 << 16  # bytes of a bucket array read at once
MAX_REASONS = 3  # problems named in `partial` (the first ones; the rest are counted)
UNIX_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), the uapi's fixed size
DEFAULT_UNIX_BUCKETS = 512  # UNIX_HASH_SIZE, when no symbol tells the per-net table's size

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
INET_FAMILIES = frozenset({AF_INET, AF_INET6})
TCP_TIME_WAIT, TCP_LISTEN, TCP_NEW_SYN_RECV = 6, 10, 12
# ss's names of the TCP states (sk_state); UDP and UNIX sockets use the same numbers.
STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
          6: "TIME-WAIT", 7: "UNCONN", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
          11: "CLOSING", 12: "SYN-RECV"}
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 4: "rdm", 5: "seqpacket"}
UNIX_NETIDS = {"stream": "u_str", "dgram": "u_dgr", "seqpacket": "u_seq"}


@dataclass
class Socket:
    netns: int  # inode number of the socket's network namespace (net->ns.inum)
    protocol: str  # tcp, udp, udplite, unix
    family: str  # ipv4, ipv6, unix
    type: str  # stream, dgram, seqpacket
    state: str  # as ss names it: LISTEN, ESTAB, TIME-WAIT, UNCONN, ...
    local_address: str  # IP address ('' for UNIX); IPv4-mapped IPv6 as ::ffff:a.b.c.d
    local_port: int
    remote_address: str
    remote_port: int
    path: str  # UNIX: the bound path, '@name' if abstract, '' if unnamed
    peer_inode: int  # UNIX: the connected peer's inode (0: none, or not accepted yet)
    inode: int  # 0 when no socket file holds it (time-wait, not accepted yet)
    uid: int
    pids: list[int] = field(default_factory=list)  # processes with a descriptor on it
    address: int = 0  # struct sock


def _netid(s: Socket) -> str:
    return UNIX_NETIDS.get(s.type, s.type) if s.protocol == "unix" else s.protocol


def _endpoint(address: str, port: int, family: str) -> str:
    return f"[{address}]:{port}" if family == "ipv6" else f"{address}:{port}"


def _local(s: Socket) -> str:
    if s.protocol == "unix":
        return s.path or "*"
    return _endpoint(s.local_address, s.local_port, s.family)


def _peer(s: Socket) -> str:
    if s.protocol == "unix":
        return f"* {s.peer_inode}"
    return _endpoint(s.remote_address, s.remote_port, s.family)


class _Bytes:
    """Memory already read, served to Record.read: one guest read per object, however many
    Records (sock_common, sock, a time-wait or UNIX socket) unpack it."""

    def __init__(self, address: int, data: bytes) -> None:
        self.address, self.data = address, data

    def read(self, address: int, size: int) -> bytes:
        start = address - self.address
        if start < 0 or start + size > len(self.data):
            raise GuestMemoryError(f"{address:#x}+{size} is outside the object read")
        return self.data[start:start + size]


@dataclass(frozen=True)
class _Buckets:
    """A hash table's bucket array: COUNT heads of STRIDE bytes from BASE, the first pointer
    of each at HEAD; chains link each object's NODE (its offset in the object)."""

    name: str
    base: int
    count: int
    stride: int
    head: int
    node: int


class SocketReader:
    """Compiled layouts of the socket structures of one kernel, probed once from BTF."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        self.order = "little" if btf.endian == "<" else "big"
        self.common = Record(btf, "sock_common", {
            "family": "skc_family", "state": "skc_state", "daddr": "skc_daddr",
            "saddr": "skc_rcv_saddr", "dport": "skc_dport", "num": "skc_num",
            "daddr6": "skc_v6_daddr", "saddr6": "skc_v6_rcv_saddr", "net": "skc_net.net",
            "next": "skc_node.next", "listener": "skc_listener",
        }, optional=("daddr6", "saddr6", "net", "listener"))
        # The kernel casts between these and sock_common (sk_to_full_sk, inet_twsk,
        # unix_sk): each starts with it, so one read of the object serves every Record.
        self.sock = Record(btf, "sock", {"socket": "sk_socket", "uid": "sk_uid.val",
                                         "type": "sk_type"}, optional=("uid",))
        self.tw = Record(btf, "inet_timewait_sock", {"substate": "tw_substate"})
        self.node = self.common.offset("next")  # skc_node and skc_nulls_node share it
        self.inet_span = max(self.common.span[1], self.sock.span[1], self.tw.span[1])
        self.small_span = max(self.common.span[1], self.tw.span[1])
        self.socket = Record(btf, "socket_alloc", {"ino": "vfs_inode.i_ino"})
        self._unix_layout(btf)
        self.net = self._net_record(btf)
        self.net_list = btf.struct("net").offset("list")
        self._hashinfo_layout(btf)
        self.udp = Record(btf, "udp_table", {"hash": "hash", "mask": "mask"})
        slot = btf.struct("udp_hslot")
        self.udp_slot = (slot.size, slot.offset("head"))
        self.unix_buckets = self._unix_buckets()

    def _unix_layout(self, btf) -> None:
        """unix_sock and its address. A kernel whose af_unix is a module has them only in
        the module's BTF: `unix_error` then says why UNIX sockets are left out."""
        self.unix_error: str | None = None
        try:
            self.unix = Record(btf, "unix_sock", {"addr": "addr", "peer": "peer"})
            self.unix_address = Record(btf, "unix_address", {"len": "len"})
            self.sun_path = (btf.struct("unix_address").offset("name")
                             + btf.struct("sockaddr_un").offset("sun_path"))
        except LookupError as exc:
            self.unix_error = f"UNIX sockets left out: {exc}"
            return
        self.unix_span = max(self.common.span[1], self.sock.span[1], self.unix.span[1])

    @staticmethod
    def _net_record(btf) -> Record:
        """struct net: its inode number and, where the kernel keeps them per namespace, its
        TCP, UDP and UNIX tables (probed: each path is optional)."""
        fields = {"inum": "ns.inum", "unix_buckets": "unx.table.buckets",
                  "udp_table": "ipv4.udp_table"}
        net = btf.struct("net")
        try:
            row = net.field("ipv4.tcp_death_row")
            if btf.kind(btf.resolve(row.type_id)) == Kind.PTR:
                fields["death_row"] = "ipv4.tcp_death_row"
            else:
                fields["hashinfo"] = "ipv4.tcp_death_row.hashinfo"
        except LookupError:
            pass
        return Record(btf, "net", fields, optional=tuple(f for f in fields if f != "inum"))

    def _hashinfo_layout(self, btf) -> None:
        """Where inet_hashinfo keeps its listeners: the fixed `listening_hash` array (its
        chains link sk_nulls_node), else `lhash2`, chained through sk_nulls_node when its
        buckets are nulls heads, else through icsk_listen_portaddr_node."""
        info = btf.struct("inet_hashinfo")
        self.hashinfo = Record(btf, "inet_hashinfo", {
            "ehash": "ehash", "ehash_mask": "ehash_mask", "lhash2": "lhash2",
            "lhash2_mask": "lhash2_mask"}, optional=("lhash2", "lhash2_mask"))
        bucket = btf.struct("inet_listen_hashbucket")
        head = "nulls_head" if "nulls_head" in bucket else "head"
        self.listen_stride, self.listen_head = bucket.size, bucket.offset(head)
        self.listen_fixed: tuple[int, int] | None = None
        self.listen_node = self.node
        if "listening_hash" in info:
            f = info.field("listening_hash")
            self.listen_fixed = (f.offset, btf.type(btf.resolve(f.type_id)).nelems)
        elif head == "head":
            icsk = btf.struct("inet_connection_sock")
            self.listen_node = icsk.offset("icsk_listen_portaddr_node")
        self.death_row_hashinfo = btf.struct("inet_timewait_death_row").offset("hashinfo")

    # -- small helpers -----------------------------------------------------------------------
    def ipv4(self, value: int) -> str:
        return str(ipaddress.IPv4Address(value.to_bytes(4, self.order)))

    def port(self, value: int) -> int:
        """A __be16 unpacked in the guest's order, back to a number."""
        return int.from_bytes(value.to_bytes(2, self.order), "big")

    def read_object(self, address: int, span: int) -> _Bytes:
        """One read of an object's first SPAN bytes; a smaller one if the object ends RAM."""
        try:
            return _Bytes(address, self.kernel.read(address, span))
        except GuestMemoryError:
            return _Bytes(address, self.kernel.read(address, min(span, self.small_span)))

    def _unix_buckets(self) -> int:
        """Buckets of a per-namespace UNIX table (UNIX_HASH_SIZE): twice the global
        bsd_socket_buckets array, whose size the symbol after it gives."""
        size = _symbol_size(self.kernel, "bsd_socket_buckets")
        if size is None or size < 8:
            return DEFAULT_UNIX_BUCKETS
        count = 2 * (size // 8)
        return 1 << (count.bit_length() - 1)  # round padding away: the size is a power of 2


def _ipv6(raw: bytes) -> str:
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def _symbol_size(kernel: LinuxKernel, name: str) -> int | None:
    """Bytes from a symbol to the next higher one: the size of a static array, padding
    included (BTF does not type globals)."""
    start = kernel.symbols.get(name)
    if start is None:
        return None
    addresses = kernel.symbols.addresses
    i = bisect.bisect_right(addresses, start)
    if i >= len(addresses):
        return None
    return addresses[i] - start


class _ChainError(Exception):
    """A chain that loops, runs too long or leaves readable memory."""


class _Walk(Problems):
    """One pass over every socket table: the sockets found, the bucket arrays walked (a
    table shared by namespaces is walked once), the namespaces by struct net, and what
    went wrong."""

    def __init__(self, reader: SocketReader) -> None:
        super().__init__(MAX_REASONS)
        self.reader = reader
        self.kernel = reader.kernel
        self.items: list[Socket] = []
        self.seen: set[int] = set()
        self.walked: set[int] = set()  # bucket arrays already walked
        self.netns: dict[int, int] = {}
        self.full = False
        self.uids: dict[int, int] = {}  # listener -> uid, for its request sockets
        self.init_net = self.kernel.symbols.get("init_net", 0)  # sk_net without CONFIG_NET_NS
        self.peers: dict[int, int] = {}  # UNIX socket -> its peer's struct sock

    def namespace(self, net: int) -> int:
        """The inode number of the namespace at NET (read once, for a namespace the list
        did not give)."""
        inum = self.netns.get(net)
        if inum is None:
            try:
                inum = self.reader.net.read(self.kernel, net)["inum"] if net else 0
            except GuestMemoryError as exc:
                self.problem(f"network namespace {net:#x}: {exc}")
                inum = 0
            self.netns[net] = inum
        return inum

    def masked(self, name: str, mask: int) -> bool:
        """Whether a table's size mask is one (2**n - 1): anything else is not a table."""
        if mask & (mask + 1):
            self.problem(f"{name}: size mask {mask:#x} is not 2**n - 1")
            return False
        return True

    def heads(self, buckets: _Buckets) -> Iterator[int]:
        """The first node of every non-empty bucket: the array is read BUCKET_CHUNK bytes at
        a time, and empty heads (NULL, or an odd nulls marker) are skipped unread."""
        count = buckets.count
        if count > MAX_BUCKETS:
            self.problem(f"{buckets.name}: {count} buckets, more than {MAX_BUCKETS}")
            count = MAX_BUCKETS
        if buckets.stride % 8 or buckets.head % 8:
            self.problem(f"{buckets.name}: buckets of {buckets.stride} bytes, head at "
                         f"{buckets.head}: not an array of pointers")
            return
        step, first_word = buckets.stride // 8, buckets.head // 8
        per_chunk = max(1, BUCKET_CHUNK // buckets.stride)
        for first in range(0, count, per_chunk):
            n = min(per_chunk, count - first)
            at = buckets.base + first * buckets.stride
            try:
                raw = self.kernel.read(at, n * buckets.stride)
            except GuestMemoryError as exc:
                self.problem(f"{buckets.name} buckets at {at:#x}: {exc}")
                continue
            words = array("Q", raw)
            if (self.reader.order == "little") != (sys.byteorder == "little"):
                words.byteswap()
            yield from (w for w in words[first_word::step] if w and not w & 1)

    def chain(self, buckets: _Buckets, node: int, span: int) -> Iterator[tuple[int, _Bytes]]:
        """Each object of the chain starting at NODE, read once (SPAN bytes): bounded,
        cycle-checked, ended by NULL or by a nulls marker (an odd value)."""
        visited: set[int] = set()
        while node and not node & 1:
            if node in visited:
                raise _ChainError(f"chain loops back to {node:#x}")
            if len(visited) >= MAX_CHAIN:
                raise _ChainError(f"chain longer than {MAX_CHAIN}")
            if node < self.kernel.page_offset:  # sockets are slab objects, in the direct map
                raise _ChainError(f"link to {node:#x}, outside the kernel's direct map")
            visited.add(node)
            address = node - buckets.node
            try:
                obj = self.reader.read_object(address, span)
                nxt = int.from_bytes(obj.read(node, 8), self.reader.order)
            except GuestMemoryError as exc:
                raise _ChainError(f"socket {address:#x}: {exc}") from exc
            yield address, obj
            node = nxt

    def table(self, buckets: _Buckets, span: int, take: Callable[[int, _Bytes], Socket]) -> None:
        """Every socket of one table, made by TAKE; a bad chain ends that chain only, and
        too many bad chains end the table (it is not a socket table at all)."""
        if buckets.base in self.walked:  # per-namespace hashinfos share the global lhash2
            return
        self.walked.add(buckets.base)
        bad = 0
        for head in self.heads(buckets):
            try:
                for address, obj in self.chain(buckets, head, span):
                    if address in self.seen:  # each socket is in one chain of one table
                        raise _ChainError(f"chain joins another at socket {address:#x}")
                    if len(self.seen) >= MAX_SOCKETS:
                        self.full = True
                        self.problem(f"more than {MAX_SOCKETS} sockets")
                        return
                    self.seen.add(address)
                    try:
                        self.items.append(take(address, obj))
                    except GuestMemoryError as exc:  # its next link was fine: go on
                        self.problem(f"{buckets.name}: socket {address:#x}: {exc}")
            except _ChainError as exc:
                self.problem(f"{buckets.name}: {exc}")
                bad += 1
                if bad >= MAX_BAD_CHAINS:
                    self.problem(f"{buckets.name}: {bad} bad chains, the rest not walked")
                    return
            if self.full:
                return

    # -- inet sockets -------------------------------------------------------------------------
    def inet_common(self, address: int, obj: _Bytes, protocol: str) -> tuple[dict, Socket]:
        """The sock_common part shared by full, time-wait and request sockets."""
        r = self.reader
        c = r.common.read(obj, address)
        family = c["family"]
        if family not in INET_FAMILIES:
            raise _ChainError(f"socket {address:#x} in the {protocol} table has family "
                              f"{family}: not an IPv4 or IPv6 socket")
        if family == AF_INET6 and "saddr6" in c:
            version, local, remote = "ipv6", _ipv6(c["saddr6"]), _ipv6(c["daddr6"])
        else:
            version, local, remote = "ipv4", r.ipv4(c["saddr"]), r.ipv4(c["daddr"])
        state = c["state"]
        sock = Socket(
            netns=self.namespace(c.get("net", self.init_net)), protocol=protocol, family=version,
            type="stream" if protocol == "tcp" else "dgram",
            state=STATES.get(state, str(state)), local_address=local, local_port=c["num"],
            remote_address=remote, remote_port=r.port(c["dport"]), path="", peer_inode=0,
            inode=0, uid=0, address=address)
        return c, sock

    def full_socket(self, address: int, obj: _Bytes, sock: Socket) -> None:
        """Fill in what a full socket adds: its inode (from its socket file) and uid."""
        s = self.reader.sock.read(obj, address)
        sock.uid = s.get("uid", 0)
        sock.type = SOCK_TYPES.get(s["type"], str(s["type"]))
        sock.inode = self.inode(s["socket"])

    def inode(self, socket: int) -> int:
        """sock_i_ino(): the inode of the socket file, or 0 when no file holds the socket."""
        if not socket:
            return 0
        try:
            return self.reader.socket.read(self.kernel, socket)["ino"]
        except GuestMemoryError as exc:
            self.problem(f"socket file {socket:#x}: {exc}")
            return 0

    def tcp(self, address: int, obj: _Bytes) -> Socket:
        c, sock = self.inet_common(address, obj, "tcp")
        if c["state"] == TCP_TIME_WAIT:  # an inet_timewait_sock: /proc shows its substate
            substate = self.reader.tw.read(obj, address)["substate"]
            sock.state = STATES.get(substate, str(substate))
        elif c["state"] == TCP_NEW_SYN_RECV:  # a request_sock: the listener's uid
            sock.uid = self.uids.get(c.get("listener", 0), 0)
        else:
            self.full_socket(address, obj, sock)
            if c["state"] == TCP_LISTEN:
                self.uids[address] = sock.uid
        return sock

    def udp(self, protocol: str) -> Callable[[int, _Bytes], Socket]:
        def take(address: int, obj: _Bytes) -> Socket:
            _, sock = self.inet_common(address, obj, protocol)
            self.full_socket(address, obj, sock)
            return sock
        return take

    def tcp_tables(self, hashinfo: int) -> None:
        """Listeners first (request sockets take their uid), then established/time-wait."""
        r = self.reader
        try:
            h = r.hashinfo.read(self.kernel, hashinfo)
        except GuestMemoryError as exc:
            self.problem(f"inet_hashinfo {hashinfo:#x}: {exc}")
            return
        if r.listen_fixed is not None:
            offset, count = r.listen_fixed
            listen = _Buckets("TCP listening_hash", hashinfo + offset, count, r.listen_stride,
                              r.listen_head, r.listen_node)
        elif "lhash2" in h and self.masked("TCP lhash2", h["lhash2_mask"]):
            listen = _Buckets("TCP lhash2", h["lhash2"], h["lhash2_mask"] + 1, r.listen_stride,
                              r.listen_head, r.listen_node)
        else:
            listen = None
        if listen is not None and listen.base:
            self.table(listen, r.inet_span, self.tcp)
        if h["ehash"] and self.masked("TCP ehash", h["ehash_mask"]):
            self.table(_Buckets("TCP ehash", h["ehash"], h["ehash_mask"] + 1, 8, 0, r.node),
                       r.inet_span, self.tcp)

    def udp_table(self, table: int, protocol: str) -> None:
        r = self.reader
        try:
            u = r.udp.read(self.kernel, table)
        except GuestMemoryError as exc:
            self.problem(f"{protocol} table {table:#x}: {exc}")
            return
        stride, head = r.udp_slot
        if u["hash"] and self.masked(f"{protocol} hash", u["mask"]):
            self.table(_Buckets(f"{protocol} hash", u["hash"], u["mask"] + 1, stride, head,
                                r.node), r.inet_span, self.udp(protocol))

    # -- UNIX sockets -------------------------------------------------------------------------
    def unix(self, address: int, obj: _Bytes) -> Socket:
        r = self.reader
        c = r.common.read(obj, address)
        if c["family"] != AF_UNIX:
            raise _ChainError(f"socket {address:#x} in the UNIX table has family "
                              f"{c['family']}")
        s = r.sock.read(obj, address)
        u = r.unix.read(obj, address)
        state = c["state"]
        sock = Socket(
            netns=self.namespace(c.get("net", self.init_net)), protocol="unix", family="unix",
            type=SOCK_TYPES.get(s["type"], str(s["type"])), state=STATES.get(state, str(state)),
            local_address="", local_port=0, remote_address="", remote_port=0,
            path=self.unix_path(u["addr"]), peer_inode=0, inode=self.inode(s["socket"]),
            uid=s.get("uid", 0), address=address)
        self.peers[address] = u["peer"]
        return sock

    def unix_path(self, addr: int) -> str:
        """The name /proc/net/unix prints: the path, or '@' and the abstract name (its NULs
        shown as '@'); '' for an unnamed socket."""
        if not addr:
            return ""
        r = self.reader
        try:
            raw = self.kernel.read(addr, r.sun_path + UNIX_PATH_MAX)
        except GuestMemoryError as exc:
            self.problem(f"unix_address {addr:#x}: {exc}")
            return ""
        length = r.unix_address.read(_Bytes(addr, raw), addr)["len"]
        name = raw[r.sun_path:r.sun_path + max(0, min(length - 2, UNIX_PATH_MAX))]
        if name[:1] == b"\0":
            name = b"@" + name[1:]
        elif name:
            name = name[:-1]
        return name.replace(b"\0", b"@").decode("utf-8", "surrogateescape")

    def unix_table(self, base: int, count: int) -> None:
        if self.reader.unix_error:
            self.problem(self.reader.unix_error)
            return
        self.table(_Buckets("UNIX table", base, count, 8, 0, self.reader.node),
                   self.reader.unix_span, self.unix)

    def link_peers(self) -> None:
        """A UNIX socket's peer inode, from the peers found in the tables (no more reads)."""
        peers = self.peers
        inodes = {s.address: s.inode for s in self.items if s.protocol == "unix"}
        for s in self.items:
            if s.protocol == "unix":
                s.peer_inode = inodes.get(peers.get(s.address, 0), 0)


def _namespaces(walk: _Walk) -> list[dict]:
    """Every network namespace the kernel lists (net_namespace_list), else init_net: each
    as its net Record plus its address."""
    kernel, reader = walk.kernel, walk.reader
    head = kernel.symbols.get("net_namespace_list")
    if head is None:
        addresses = [walk.init_net] if walk.init_net else []
    else:
        addresses = []
        try:
            for node in list_nodes(kernel.read_u64, head, MAX_NAMESPACES):
                addresses.append(node - reader.net_list)
        except ListWalkError as exc:
            walk.problem(f"network namespace list: {exc.reason}")
    nets = []
    for address in addresses:
        try:
            net = reader.net.read(kernel, address)
        except GuestMemoryError as exc:
            walk.problem(f"network namespace {address:#x}: {exc}")
            continue
        walk.netns[address] = net["inum"]
        nets.append({**net, "address": address})
    return nets


def _hashinfo_of(walk: _Walk, net: dict) -> int | None:
    """The namespace's TCP table (net->ipv4.tcp_death_row's hashinfo), else tcp_hashinfo."""
    kernel, reader = walk.kernel, walk.reader
    if net.get("hashinfo"):
        return net["hashinfo"]
    if net.get("death_row"):
        try:
            return kernel.read_u64(net["death_row"] + reader.death_row_hashinfo)
        except GuestMemoryError as exc:
            walk.problem(f"tcp_death_row of namespace {net['inum']}: {exc}")
    return kernel.symbols.get("tcp_hashinfo")


def _tables(walk: _Walk, nets: list[dict]) -> list[tuple[str, int, int]]:
    """The distinct tables to walk, as (kind, address, buckets): shared tables once."""
    kernel, symbols = walk.kernel, walk.kernel.symbols
    tables: dict[tuple[str, int, int], None] = {}

    def add(kind: str, address: int | None, count: int = 0) -> None:
        if address:
            tables[(kind, address, count)] = None

    for net in nets:
        add("tcp", _hashinfo_of(walk, net))
        add("udp", net.get("udp_table") or symbols.get("udp_table"))
        add("unix", net.get("unix_buckets"), walk.reader.unix_buckets)
    add("udplite", symbols.get("udplite_table"))
    size = _symbol_size(kernel, "unix_socket_table") or 8 * DEFAULT_UNIX_BUCKETS
    add("unix", symbols.get("unix_socket_table"), size // 8)
    return list(tables)


def _owners(kernel: LinuxKernel) -> tuple[dict[int, list[int]], str | None]:
    """Socket inode -> pids holding a descriptor on it, from the `files` view."""
    try:
        result = files(kernel)
    except (CloudVMIError, LookupError) as exc:  # the sockets are still worth listing
        return {}, f"owning processes: {exc}"
    owners: dict[int, set[int]] = {}
    for f in result.items:
        if f.path.startswith("socket:["):
            owners.setdefault(f.inode, set()).add(f.pid)
    return ({inode: sorted(pids) for inode, pids in owners.items()},
            f"owning processes: {result.partial}" if result.partial else None)


@view(title="Sockets of {vm}", columns=(
    Column("NETID", _netid), Column("STATE", "state"), Column("LOCAL", _local),
    Column("PEER", _peer), Column("INODE", "inode", True), Column("UID", "uid", True),
    Column("PIDS", lambda s: ",".join(map(str, s.pids))), Column("NETNS", "netns", True)))
def sockets(kernel: LinuxKernel) -> ViewResult[Socket]:
    """List TCP, UDP and UNIX sockets of every network namespace, like `ss -anp`."""
    try:
        reader = kernel.helper(SocketReader)
    except (ProfileError, LookupError) as exc:
        return ViewResult(partial=f"socket structures not understood: {exc}")
    walk = _Walk(reader)
    nets = _namespaces(walk)
    for kind, address, count in _tables(walk, nets):
        if walk.full:
            break
        if kind == "tcp":
            walk.tcp_tables(address)
        elif kind == "unix":
            walk.unix_table(address, count)
        else:
            walk.udp_table(address, kind)
    walk.link_peers()
    owners, problem = _owners(kernel)
    if problem:
        walk.problem(problem)
    for s in walk.items:
        s.pids = owners.get(s.inode, []) if s.inode else []
    return ViewResult(items=walk.items, partial=walk.partial)

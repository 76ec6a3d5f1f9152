"""IPv4 routes of every network namespace, from the kernel's FIB tries, as `ip route show
table all` lists them (and /proc/net/route for the main table).

Each namespace's tables hang off net->ipv4.fib_table_hash; a table's tb_data is a trie of
key_vectors (net/ipv4/fib_trie.c): inner nodes (bits > 0) hold 2^bits child pointers, leaves
hold the routes of one key as a list of fib_alias, each pointing to a fib_info whose
nexthops are inline fib_nh entries or a nexthop object (net/ipv4/nexthop.c). Without custom
rules the local table shares the main table's trie, so each alias says its own table.
"""

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.btf import MemberNotFound, TypeNotFound
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record
from cloudvmi.os.linux.views.common import ViewResult
from cloudvmi.os.linux.views.ifaces import RT_SCOPES, NetReader, ipv4_text

# Bounds on walks over guest structures (hostile input): far above any real guest.
MAX_TABLES = 1 << 12  # fib_tables of one namespace
MAX_TRIE_NODES = 1 << 21  # key_vectors of one trie (a full Internet table is ~1.5M)
MAX_TRIE_SLOTS = 1 << 23  # child pointers read from one trie's inner nodes
MAX_ALIASES = 1 << 12  # fib_aliases of one leaf (one key: prefix lengths, tos, priority)
MAX_NEXTHOPS = 1 << 10  # nexthops of one route, or entries of one nexthop group
SLOT_CHUNK = 512  # child pointers per read of an inner node
KEYLENGTH = 32  # bits of an IPv4 trie key

# FIB_TABLE_HASHSZ: a kernel built with multiple tables (net->ipv4.fib_main exists) hashes
# them into 256 buckets, else main and local into 2.
TABLE_BUCKETS_MULTIPLE, TABLE_BUCKETS_SINGLE = 256, 2

# UAPI constants (ABI, the same in every kernel), named as iproute2 names them.
AF_INET, AF_INET6 = 2, 10
RT_TABLES = {253: "default", 254: "main", 255: "local"}
RTN_TYPES = ("unspec", "unicast", "local", "broadcast", "anycast", "multicast", "blackhole",
             "unreachable", "prohibit", "throw", "nat", "xresolve")
RT_PROTOS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
             9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
             15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived", 42: "babel",
             99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}
RTNH_FLAGS = (("dead", 1), ("pervasive", 2), ("onlink", 4), ("offload", 8),
              ("linkdown", 16), ("unresolved", 32), ("trap", 64))


@dataclass
class NextHop:
    gateway: str | None  # None for a directly connected route
    device: str | None
    weight: int
    flags: list[str]  # RTNH_F_*: dead, onlink, linkdown, ...


@dataclass
class Route:
    namespace: int  # the network namespace's inode number
    table: str  # main, local, default, or the number
    type: str  # unicast, local, broadcast, blackhole, ...
    destination: str
    prefixlen: int
    gateway: str | None  # of the first nexthop, as /proc/net/route shows it
    device: str | None  # of the first nexthop
    source: str | None  # preferred source address (ip's "src")
    scope: str  # global, link, host, ...
    protocol: str  # kernel, boot, static, dhcp, ... or the number
    metric: int  # fib_priority
    tos: int
    nexthops: list[NextHop]
    nexthop_id: int | None = None  # the nexthop object's id (ip's "nhid"), if it uses one
    errors: list[str] = field(default_factory=list)  # parts that could not be read


class FibReader:
    """Layouts of the FIB (fib_table, trie, key_vector, fib_alias, fib_info, fib_nh and the
    nexthop objects), probed from BTF: fa_dscp or fa_tos, nexthop objects or none."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        self.endian = btf.endian
        self.pointer = kernel.arch.pointer  # child slots and hash buckets are pointers
        self.netns = Record(btf, "net", {"hash": "ipv4.fib_table_hash",
                                         "main": "ipv4.fib_main"}, optional=("main",))
        self.buckets = TABLE_BUCKETS_MULTIPLE if "main" in self.netns else TABLE_BUCKETS_SINGLE
        self.table = Record(btf, "fib_table", {"next": "tb_hlist.next", "id": "tb_id",
                                               "data": "tb_data"})
        self.table_link = self.table.struct.offset("tb_hlist")
        self.kv = Record(btf, "key_vector", {"key": "key", "pos": "pos", "bits": "bits",
                                             "leaf": "leaf.first"})
        self.children = self.kv.struct.offset("tnode")
        self.root = btf.struct("trie").offset("kv") + self.children  # t->kv[0].tnode[0]
        self.alias = Record(btf, "fib_alias", {
            "next": "fa_list.next", "info": "fa_info", "dscp": "fa_dscp", "tos": "fa_tos",
            "type": "fa_type", "slen": "fa_slen", "tb_id": "tb_id"}, optional=("dscp", "tos"))
        self.alias_link = self.alias.struct.offset("fa_list")
        self.info = Record(btf, "fib_info", {
            "protocol": "fib_protocol", "scope": "fib_scope", "prefsrc": "fib_prefsrc",
            "priority": "fib_priority", "nhs": "fib_nhs", "nh": "nh"}, optional=("nh",))
        fib_nh = btf.struct("fib_nh")
        self.fib_nh = self.info.struct.offset("fib_nh") + fib_nh.offset("nh_common")
        self.fib_nh_size = fib_nh.size
        self.nhc = Record(btf, "fib_nh_common", {
            "dev": "nhc_dev", "gw_family": "nhc_gw_family", "gw4": "nhc_gw.ipv4",
            "gw6": "nhc_gw.ipv6", "weight": "nhc_weight", "flags": "nhc_flags"})
        self.nexthops = "nh" in self.info
        if self.nexthops:
            self.nexthop = Record(btf, "nexthop", {"id": "id", "is_group": "is_group",
                                                   "info": "nh_info", "group": "nh_grp"})
            self.nh_info_nhc = btf.struct("nh_info").offset("fib_nhc")
            self.group = Record(btf, "nh_group", {"num": "num_nh"})
            self.group_entries = self.group.struct.offset("nh_entries")
            self.entry = Record(btf, "nh_grp_entry", {"nh": "nh", "weight": "weight"})
            self.entry_size = self.entry.struct.size

    def ipv4(self, be32: int) -> str:
        return ipv4_text(be32, self.endian)

    def tables(self, net: int) -> tuple[list[tuple[int, int]], str | None]:
        """(table id, trie address) of every table of namespace NET, in hash order, from
        its fib_table_hash (and fib_main, should the hash miss it), and why the list is
        incomplete, if it is."""
        n = self.netns.read(self.kernel, net)
        out: list[tuple[int, int]] = []
        seen: set[int] = set()
        partial = None
        try:
            size = self.buckets * self.pointer.size
            raw = self.kernel.read(n["hash"], size) if n["hash"] else b""
        except GuestMemoryError as exc:
            raw, partial = b"", f"fib_table_hash of namespace {net:#x}: {exc}"
        for bucket, (node,) in enumerate(self.pointer.iter_unpack(raw)):
            problem = self.bucket_tables(bucket, node, seen, out)
            partial = partial or problem
        main = n.get("main", 0)
        if main and main + self.table_link not in seen:
            try:
                t = self.table.read(self.kernel, main)
                out.append((t["id"], t["data"]))
            except GuestMemoryError as exc:
                partial = partial or f"fib_main {main:#x}: {exc}"
        return out, partial

    def bucket_tables(self, bucket: int, node: int, seen: set[int],
                      out: list[tuple[int, int]]) -> str | None:
        """Append the tables of one hash bucket (an hlist) to OUT; the reason the bucket
        was left early, if it was. SEEN bounds the walk over every bucket."""
        while node:
            if node in seen or len(seen) >= MAX_TABLES:
                return f"table list of hash bucket {bucket} loops or runs on"
            seen.add(node)
            try:
                t = self.table.read(self.kernel, node - self.table_link)
            except GuestMemoryError as exc:
                return f"fib_table {node - self.table_link:#x}: {exc}"
            if t["id"] % self.buckets != bucket:  # the kernel hashes id & (HASHSZ - 1)
                return f"table {t['id']} is in hash bucket {bucket}"
            out.append((t["id"], t["data"]))
            node = t["next"]
        return None

    def leaves(self, trie: int, walk: "TrieWalk") -> Iterator[tuple[int, int]]:
        """(key, first fib_alias node) of every leaf of the trie at TRIE, in key order.
        Malformed parts are skipped and noted in WALK; the walk is bounded by its budget."""
        stack = [(self.kernel.read_u64(trie + self.root), 0, KEYLENGTH, 0)]
        while stack:
            node, parent_key, parent_pos, index = stack.pop()
            if not node:
                continue
            kv = walk.visit(self, node, parent_key, parent_pos, index)
            if kv is None:
                continue
            if not kv["bits"]:
                yield kv["key"], kv["leaf"]
                continue
            slots = walk.children(self, node, kv["bits"])
            stack.extend((child, kv["key"], kv["pos"], i)
                         for i, child in reversed(list(enumerate(slots))))


class TrieWalk:
    """The budget and the findings of one trie walk: nodes seen (a node reached twice is a
    cycle), child slots read, and the first problem met."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.slots = 0
        self.problem: str | None = None

    def note(self, problem: str) -> None:
        self.problem = self.problem or problem

    def visit(self, reader: FibReader, node: int, parent_key: int, parent_pos: int,
              index: int) -> dict | None:
        """NODE's key_vector if it may stand where it was found, else None (noted).

        A node must sit below its parent (pos + bits <= the parent's pos, so the depth is
        at most KEYLENGTH) at the index its key selects (get_cindex in fib_trie.c)."""
        if node in self.seen:
            self.note(f"trie node {node:#x} is reached twice (a cycle)")
            return None
        if len(self.seen) >= MAX_TRIE_NODES:
            self.note(f"trie has more than {MAX_TRIE_NODES} nodes")
            return None
        self.seen.add(node)
        try:
            kv = reader.kv.read(reader.kernel, node)
        except GuestMemoryError as exc:
            self.note(f"trie node {node:#x}: {exc}")
            return None
        if kv["pos"] + kv["bits"] > parent_pos:
            self.note(f"trie node {node:#x} (pos {kv['pos']}, bits {kv['bits']}) "
                      f"is not below its parent (pos {parent_pos})")
            return None
        if (kv["key"] ^ parent_key) >> parent_pos != index:
            self.note(f"trie node {node:#x} (key {kv['key']:#010x}) is not at its index")
            return None
        return kv

    def children(self, reader: FibReader, node: int, bits: int) -> list[int]:
        """The 2^bits child pointers of an inner node, read in chunks, within the budget."""
        count = 1 << bits
        if self.slots + count > MAX_TRIE_SLOTS:
            self.note(f"trie node {node:#x} has 2^{bits} children: over the walk's budget")
            return []
        self.slots += count
        out: list[int] = []
        base, size = node + reader.children, reader.pointer.size
        for start in range(0, count, SLOT_CHUNK):
            n = min(SLOT_CHUNK, count - start)
            try:
                raw = reader.kernel.read(base + start * size, n * size)
            except GuestMemoryError as exc:
                self.note(f"children of trie node {node:#x}: {exc}")
                break
            out.extend(slot for (slot,) in reader.pointer.iter_unpack(raw))
        return out


class RouteBuilder:
    """Routes of one view call: reads leaves' aliases, their fib_info and nexthops, and
    names devices (cached: many routes share a few)."""

    def __init__(self, kernel: LinuxKernel) -> None:
        self.kernel = kernel
        self.fib = kernel.helper(FibReader)
        self.nets = kernel.helper(NetReader)
        self.names: dict[int, str] = {}

    def aliases(self, first: int, walk: TrieWalk) -> list[dict]:
        """The fib_aliases of one leaf (an hlist, NULL-terminated), bounded."""
        out: list[dict] = []
        node, seen = first, set()
        while node:
            if node in seen or len(out) >= MAX_ALIASES:
                walk.note(f"alias list at {first:#x} loops or runs on")
                break
            seen.add(node)
            try:
                a = self.fib.alias.read(self.kernel, node - self.fib.alias_link)
            except GuestMemoryError as exc:
                walk.note(f"fib_alias {node:#x}: {exc}")
                break
            out.append(a)
            node = a["next"]
        return out

    def device(self, dev: int) -> str | None:
        return self.nets.device_name(dev, self.names) if dev else None

    def hop(self, nhc: int, weight: int | None = None) -> NextHop:
        """One nexthop from its fib_nh_common (inline in fib_info, or in an nh_info)."""
        h = self.fib.nhc.read(self.kernel, nhc)
        gateway = None
        if h["gw_family"] == AF_INET:
            gateway = self.fib.ipv4(h["gw4"])
        elif h["gw_family"] == AF_INET6:
            gateway = str(ipaddress.IPv6Address(h["gw6"]))
        return NextHop(gateway=gateway, device=self.device(h["dev"]),
                       weight=h["weight"] if weight is None else weight,
                       flags=[name for name, bit in RTNH_FLAGS if h["flags"] & bit])

    def inline_hops(self, info: int, count: int, errors: list[str]) -> list[NextHop]:
        """fib_info->fib_nh[0..fib_nhs): a route without a nexthop object."""
        if not 0 <= count <= MAX_NEXTHOPS:
            errors.append(f"fib_info {info:#x} claims {count} nexthops")
            count = max(0, min(count, MAX_NEXTHOPS))
        base = info + self.fib.fib_nh
        return [self.hop(base + i * self.fib.fib_nh_size) for i in range(count)]

    def object_hops(self, nh: int, errors: list[str]) -> tuple[int, list[NextHop]]:
        """The id and the hops of a nexthop object: one nh_info, or a group of them."""
        fib = self.fib
        o = fib.nexthop.read(self.kernel, nh)
        if not o["is_group"]:
            return o["id"], [self.hop(o["info"] + fib.nh_info_nhc)]
        count = fib.group.read(self.kernel, o["group"])["num"]
        if count > MAX_NEXTHOPS:
            errors.append(f"nexthop group {o['id']} claims {count} entries")
            count = MAX_NEXTHOPS
        hops = []
        for i in range(count):
            e = fib.entry.read(self.kernel, o["group"] + fib.group_entries + i * fib.entry_size)
            member = fib.nexthop.read(self.kernel, e["nh"])
            if member["is_group"]:  # groups hold single nexthops only
                errors.append(f"nexthop group {o['id']} holds a group")
                continue
            hops.append(self.hop(member["info"] + fib.nh_info_nhc, e["weight"]))
        return o["id"], hops

    def route(self, namespace: int, key: int, a: dict) -> Route:
        """One route from a leaf key and one of its aliases."""
        errors: list[str] = []
        info: dict = {"protocol": 0, "scope": 0, "prefsrc": 0, "priority": 0}
        hops: list[NextHop] = []
        nexthop_id = None
        try:
            info = self.fib.info.read(self.kernel, a["info"])
            if info.get("nh"):
                nexthop_id, hops = self.object_hops(info["nh"], errors)
            else:
                hops = self.inline_hops(a["info"], info["nhs"], errors)
        except GuestMemoryError as exc:
            errors.append(f"fib_info {a['info']:#x}: {exc}")
        first = hops[0] if hops else None
        return Route(
            namespace=namespace, table=RT_TABLES.get(a["tb_id"], str(a["tb_id"])),
            type=RTN_TYPES[a["type"]] if a["type"] < len(RTN_TYPES) else str(a["type"]),
            destination=str(ipaddress.IPv4Address(key)), prefixlen=KEYLENGTH - a["slen"],
            gateway=first.gateway if first else None, device=first.device if first else None,
            source=self.fib.ipv4(info["prefsrc"]) if info["prefsrc"] else None,
            scope=RT_SCOPES.get(info["scope"], str(info["scope"])),
            protocol=RT_PROTOS.get(info["protocol"], str(info["protocol"])),
            metric=info["priority"], tos=a.get("dscp", a.get("tos", 0)), nexthops=hops,
            nexthop_id=nexthop_id, errors=errors,
        )

    def trie_routes(self, namespace: int, trie: int, tables: set[int]
                    ) -> tuple[dict[int, list[Route]], str | None]:
        """The routes of one trie by table, for TABLES only (tables that share a trie each
        own their aliases, as fib_table_dump filters them by tb_id), and the first problem
        met, if any."""
        walk = TrieWalk()
        out: dict[int, list[Route]] = {}
        try:
            for key, first in self.fib.leaves(trie, walk):
                for a in self.aliases(first, walk):
                    if a["tb_id"] not in tables:
                        continue
                    if a["slen"] > KEYLENGTH:
                        walk.note(f"alias of {key:#010x} has suffix length {a['slen']}")
                        continue
                    route = self.route(namespace, key, a)
                    out.setdefault(a["tb_id"], []).append(route)
                    if route.errors:
                        walk.note(f"route {route.destination}/{route.prefixlen}: "
                                  f"{route.errors[0]}")
        except GuestMemoryError as exc:
            walk.note(f"trie {trie:#x}: {exc}")
        return out, walk.problem

    def namespace_routes(self, net: int, inum: int, result: ViewResult[Route]) -> None:
        """Every table of one namespace, in hash order as `ip route show table all` lists
        them; each trie is walked once, however many tables share it."""
        try:
            tables, problem = self.fib.tables(net)
        except GuestMemoryError as exc:
            tables, problem = [], f"tables of namespace {inum}: {exc}"
        result.partial = result.partial or problem
        tries: dict[int, set[int]] = {}
        for table_id, trie in tables:
            tries.setdefault(trie, set()).add(table_id)
        by_table: dict[int, list[Route]] = {}
        for trie, ids in tries.items():
            if trie:
                found, problem = self.trie_routes(inum, trie, ids)
                by_table.update(found)
                result.partial = result.partial or problem
        for table_id, _ in tables:
            result.items.extend(by_table.pop(table_id, []))


def _destination(r: Route) -> str:
    return "default" if r.prefixlen == 0 else f"{r.destination}/{r.prefixlen}"


@view(title="IPv4 routes of {vm}", columns=(
    Column("NETNS", "namespace", True), Column("TABLE", "table"), Column("TYPE", "type"),
    Column("DESTINATION", _destination), Column("GATEWAY", lambda r: r.gateway or ""),
    Column("DEV", lambda r: r.device or ""), Column("SRC", lambda r: r.source or ""),
    Column("SCOPE", "scope"), Column("PROTO", "protocol"), Column("METRIC", "metric", True)))
def routes(kernel: LinuxKernel) -> ViewResult[Route]:
    """List the IPv4 routes of every namespace and table (main, local, ...), from the FIB."""
    try:
        builder = RouteBuilder(kernel)
    except (MemberNotFound, TypeNotFound) as exc:
        return ViewResult(partial=f"FIB structures not understood: {exc}")
    spaces, partial = builder.nets.namespaces()
    result: ViewResult[Route] = ViewResult(partial=partial)
    for net, inum in spaces:
        builder.namespace_routes(net, inum, result)
    return result

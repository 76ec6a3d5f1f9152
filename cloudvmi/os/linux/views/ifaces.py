"""Network interfaces of every network namespace with their IPv4 and IPv6 addresses, as
`ip addr` and /sys/class/net show them: net_namespace_list, each namespace's dev_base_head,
and each device's in_device (ifa_list) and inet6_dev (addr_list).

The namespace walk and the device-name reader live here too: routes.py shares them.
"""

import ipaddress
import struct
from dataclasses import dataclass, field

from cloudvmi.capability import Column, view
from cloudvmi.errors import GuestMemoryError
from cloudvmi.os.linux.btf import Kind, MemberNotFound, TypeNotFound
from cloudvmi.os.linux.kernel import LinuxKernel
from cloudvmi.os.linux.records import Record, cstring
from cloudvmi.os.linux.views.common import ListWalkError, ViewResult, list_nodes

# Bounds on walks over guest structures (hostile input): far above any real guest.
MAX_NAMESPACES = 1 << 14  # network namespaces
MAX_DEVICES = 1 << 16  # net_devices, over all namespaces together
MAX_ADDRESSES = 1 << 14  # addresses of one family on one device

# UAPI constants (ABI, the same in every kernel); the kernel-internal netdev_state_t bits
# come from BTF instead.
# (name, IFF_* bit) in the order iproute2's print_link_flags shows them.
LINK_FLAGS = (
    ("LOOPBACK", 0x8), ("BROADCAST", 0x2), ("POINTOPOINT", 0x10), ("MULTICAST", 0x1000),
    ("NOARP", 0x80), ("ALLMULTI", 0x200), ("PROMISC", 0x100), ("MASTER", 0x400),
    ("SLAVE", 0x800), ("DEBUG", 0x4), ("DYNAMIC", 0x8000), ("AUTOMEDIA", 0x4000),
    ("PORTSEL", 0x2000), ("NOTRAILERS", 0x20), ("UP", 0x1), ("LOWER_UP", 0x10000),
    ("DORMANT", 0x20000), ("ECHO", 0x40000),
)
IFF_UP, IFF_RUNNING, IFF_LOWER_UP, IFF_DORMANT = 0x1, 0x40, 0x10000, 0x20000
IFF_PROMISC, IFF_ALLMULTI = 0x100, 0x200
IF_OPER = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
RT_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
# inet6_ifaddr.scope holds IPV6_ADDR_* type bits; rtnetlink reports them as rt_scope().
IPV6_SCOPE_BITS = ((0x10, "host"), (0x20, "link"), (0x40, "site"))  # LOOPBACK, LINKLOCAL, SITE
ARPHRD = {1: "ether", 32: "infiniband", 280: "can", 512: "ppp", 768: "ipip", 769: "tunnel6",
          772: "loopback", 776: "sit", 778: "gre", 801: "ieee802.11", 823: "ip6gre",
          824: "netlink", 65534: "none", 65535: "void"}


@dataclass
class Address:
    address: str
    prefixlen: int
    scope: str  # global, link, host, site, or the number
    broadcast: str | None = None  # IPv4 only
    label: str | None = None  # IPv4 only (ifa_label, "eth0:1" for aliases)
    peer: str | None = None  # IPv4 point-to-point peer, when it differs from the address


@dataclass
class Interface:
    namespace: int  # the network namespace's inode number (as /proc/PID/ns/net names it)
    name: str
    index: int
    mac: str  # dev_addr, addr_len bytes, as /sys/class/net/NAME/address shows it
    broadcast: str  # the link-layer broadcast address
    link_type: str  # ether, loopback, none, ... (ARPHRD_*), "[N]" when not known
    mtu: int
    flags: list[str]  # as `ip link` shows them (dev_get_flags: with LOWER_UP, DORMANT)
    flags_value: int  # dev->flags, as /sys/class/net/NAME/flags shows it
    operstate: str  # UNKNOWN, DOWN, UP, ...
    ipv4: list[Address]
    ipv6: list[Address]
    address: int  # struct net_device
    errors: list[str] = field(default_factory=list)  # parts that could not be read


def guest_string(raw: bytes) -> str:
    """A C string from the guest, for display: hostile bytes never raise."""
    return cstring(raw).decode("utf-8", "replace")


def ipv4_text(be32: int, endian: str) -> str:
    """A __be32 as a Record reads it (an integer in the guest's byte order) back to its
    dotted quad."""
    return str(ipaddress.IPv4Address(struct.pack(endian + "I", be32)))


def hex_bytes(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class NetReader:
    """struct net: the namespace list, each namespace's inode number and device list.
    Shared by the interface and route views (kernel.helper(NetReader))."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        self.net = Record(btf, "net", {"inum": "ns.inum"})
        self.list_offset = self.net.struct.offset("list")
        self.dev_base_offset = self.net.struct.offset("dev_base_head")
        self.dev_list_offset = btf.struct("net_device").offset("dev_list")
        self.dev_name = Record(btf, "net_device", {"name": "name"})

    def namespaces(self) -> tuple[list[tuple[int, int]], str | None]:
        """(struct net address, inode number) of every namespace, init_net first, and the
        reason the list is incomplete, if it is."""
        symbols = self.kernel.symbols
        head = symbols.get("net_namespace_list")
        if head is None:  # no list to walk: the initial namespace is all there is
            nets, partial = [symbols.lookup("init_net")], None
        else:
            nets, partial = [], None
            try:
                for node in list_nodes(self.kernel.read_u64, head, MAX_NAMESPACES):
                    nets.append(node - self.list_offset)
            except ListWalkError as exc:
                partial = f"namespace list: {exc.reason}"
        out = []
        for net in nets:
            try:
                out.append((net, self.net.read(self.kernel, net)["inum"]))
            except GuestMemoryError as exc:
                partial = partial or f"namespace {net:#x}: {exc}"
        return out, partial

    def devices(self, net: int, limit: int) -> tuple[list[int], str | None]:
        """The net_device addresses of namespace NET (at most LIMIT), and why the list is
        incomplete, if it is."""
        head = net + self.dev_base_offset
        out: list[int] = []
        try:
            for node in list_nodes(self.kernel.read_u64, head, limit):
                out.append(node - self.dev_list_offset)
        except ListWalkError as exc:
            return out, f"device list of namespace {net:#x}: {exc.reason}"
        return out, None

    def device_name(self, dev: int, cache: dict[int, str]) -> str:
        """A net_device's name (cached per view call: routes name few devices often)."""
        name = cache.get(dev)
        if name is None:
            name = cache[dev] = guest_string(self.dev_name.read(self.kernel, dev)["name"])
        return name


class IfaceReader:
    """Layouts of net_device, in_device/in_ifaddr and inet6_dev/inet6_ifaddr, probed from
    BTF: dev_addr is an array in some kernels and a (const) pointer in others."""

    def __init__(self, kernel: LinuxKernel) -> None:
        btf = kernel.btf
        self.kernel = kernel
        self.endian = btf.endian
        self.dev = Record(btf, "net_device", {
            "name": "name", "ifindex": "ifindex", "dev_addr": "dev_addr",
            "addr_len": "addr_len", "broadcast": "broadcast", "type": "type", "mtu": "mtu",
            "flags": "flags", "gflags": "gflags", "state": "state", "operstate": "operstate",
            "ip_ptr": "ip_ptr", "ip6_ptr": "ip6_ptr",
        }, optional=("ip_ptr", "ip6_ptr", "gflags"))
        self.max_addr_len = self.dev.size_of("broadcast")  # MAX_ADDR_LEN, from BTF
        dev_addr = self.dev.struct.field("dev_addr")
        self.dev_addr_inline = btf.kind(btf.resolve(dev_addr.type_id)) == Kind.ARRAY
        self.state_bits = _enum(btf, "netdev_state_t")
        self.in_device = Record(btf, "in_device", {"ifa_list": "ifa_list"})
        self.in_ifaddr = Record(btf, "in_ifaddr", {
            "next": "ifa_next", "local": "ifa_local", "address": "ifa_address",
            "broadcast": "ifa_broadcast", "scope": "ifa_scope", "prefixlen": "ifa_prefixlen",
            "label": "ifa_label",
        })
        self.addr_list_offset = btf.struct("inet6_dev").offset("addr_list")
        self.inet6_ifaddr = Record(btf, "inet6_ifaddr", {
            "addr": "addr", "prefix_len": "prefix_len", "scope": "scope"})
        self.if_list_offset = self.inet6_ifaddr.struct.offset("if_list")

    def ipv4(self, be32: int) -> str:
        return ipv4_text(be32, self.endian)

    def mac(self, d: dict, errors: list[str]) -> str:
        length = d["addr_len"]
        if length > self.max_addr_len:
            errors.append(f"addr_len {length} is over MAX_ADDR_LEN")
            length = self.max_addr_len
        if self.dev_addr_inline:
            return hex_bytes(d["dev_addr"][:length])
        if not d["dev_addr"] or not length:
            return ""
        try:
            return hex_bytes(self.kernel.read(d["dev_addr"], length))
        except GuestMemoryError as exc:
            errors.append(f"dev_addr: {exc}")
            return ""

    def state_bit(self, d: dict, name: str) -> bool | None:
        """Bit NAME of dev->state (enum netdev_state_t, kernel-internal: numbered from BTF);
        None when this kernel has no such bit."""
        bit = self.state_bits.get(name)
        return None if bit is None else bool(d["state"] >> bit & 1)

    def link_flags(self, d: dict) -> list[str]:
        """The flags `ip link` shows: dev_get_flags() (net/core/dev.c), which adds the
        operational bits (LOWER_UP, DORMANT) from dev->state to dev->flags."""
        value = d["flags"] & ~(IFF_PROMISC | IFF_ALLMULTI | IFF_RUNNING | IFF_LOWER_UP
                               | IFF_DORMANT)
        value |= d.get("gflags", 0) & (IFF_PROMISC | IFF_ALLMULTI)
        running = self.state_bit(d, "__LINK_STATE_START")
        if running or (running is None and value & IFF_UP):  # RUNNING: ip does not show it
            if self.state_bit(d, "__LINK_STATE_NOCARRIER") is False:
                value |= IFF_LOWER_UP
            if self.state_bit(d, "__LINK_STATE_DORMANT"):
                value |= IFF_DORMANT
        names = [name for name, bit in LINK_FLAGS if value & bit]
        if value & IFF_UP and not value & IFF_LOWER_UP:
            names.insert(0, "NO-CARRIER")  # as ip shows a device that is up with no link
        return names

    def ipv4_addresses(self, in_dev: int) -> tuple[list[Address], str | None]:
        """The device's IPv4 addresses (in_device->ifa_list, NULL-terminated), bounded."""
        out: list[Address] = []
        if not in_dev:
            return out, None
        ifa = self.in_device.read(self.kernel, in_dev)["ifa_list"]
        seen: set[int] = set()
        while ifa:
            if ifa in seen:
                return out, f"IPv4 address list loops back to {ifa:#x}"
            if len(out) >= MAX_ADDRESSES:
                return out, f"more than {MAX_ADDRESSES} IPv4 addresses"
            seen.add(ifa)
            try:
                a = self.in_ifaddr.read(self.kernel, ifa)
            except GuestMemoryError as exc:
                return out, f"IPv4 address {ifa:#x}: {exc}"
            local, address = a["local"], a["address"]
            out.append(Address(
                address=self.ipv4(local), prefixlen=a["prefixlen"],
                scope=RT_SCOPES.get(a["scope"], str(a["scope"])),
                broadcast=self.ipv4(a["broadcast"]) if a["broadcast"] else None,
                label=guest_string(a["label"]),
                peer=self.ipv4(address) if address != local else None,
            ))
            ifa = a["next"]
        return out, None

    def ipv6_addresses(self, in6_dev: int) -> tuple[list[Address], str | None]:
        """The device's IPv6 addresses (inet6_dev->addr_list, a ring), bounded."""
        out: list[Address] = []
        if not in6_dev:
            return out, None
        head = in6_dev + self.addr_list_offset
        try:
            for node in list_nodes(self.kernel.read_u64, head, MAX_ADDRESSES):
                try:
                    a = self.inet6_ifaddr.read(self.kernel, node - self.if_list_offset)
                except GuestMemoryError as exc:
                    return out, f"IPv6 address {node - self.if_list_offset:#x}: {exc}"
                out.append(Address(
                    address=str(ipaddress.IPv6Address(a["addr"])), prefixlen=a["prefix_len"],
                    scope=next((n for bit, n in IPV6_SCOPE_BITS if a["scope"] & bit),
                               "global")))
        except ListWalkError as exc:
            return out, f"IPv6 address list: {exc.reason}"
        return out, None

    def interface(self, namespace: int, dev: int) -> tuple[Interface, str | None]:
        """One device; parts that cannot be read are recorded in its errors, and the first
        one is returned as the reason the view is partial."""
        d = self.dev.read(self.kernel, dev)
        errors: list[str] = []
        families: dict[str, list[Address]] = {"ipv4": [], "ipv6": []}
        for family, key, walk in (("ipv4", "ip_ptr", self.ipv4_addresses),
                                  ("ipv6", "ip6_ptr", self.ipv6_addresses)):
            try:
                families[family], problem = walk(d.get(key, 0))
            except GuestMemoryError as exc:
                problem = f"{family} addresses: {exc}"
            if problem:
                errors.append(problem)
        name = guest_string(d["name"])
        return Interface(
            namespace=namespace, name=name, index=d["ifindex"], mac=self.mac(d, errors),
            broadcast=hex_bytes(d["broadcast"][:min(d["addr_len"], self.max_addr_len)]),
            link_type=ARPHRD.get(d["type"], f"[{d['type']}]"), mtu=d["mtu"],
            flags=self.link_flags(d), flags_value=d["flags"],
            operstate=IF_OPER[d["operstate"]] if d["operstate"] < len(IF_OPER)
            else str(d["operstate"]),
            ipv4=families["ipv4"], ipv6=families["ipv6"], address=dev, errors=errors,
        ), (f"{name}: {errors[0]}" if errors else None)


def _enum(btf, name: str) -> dict[str, int]:
    """The enumerators of enum NAME, by name (empty when this kernel has no such enum)."""
    t = btf.find_type(name, (Kind.ENUM, Kind.ENUM64))
    return {e.name: e.value for e in t.enumerators} if t is not None else {}


def _addresses(i: Interface) -> str:
    return " ".join(f"{a.address}/{a.prefixlen}" for a in (*i.ipv4, *i.ipv6))


@view(title="Network interfaces of {vm}", columns=(
    Column("NETNS", "namespace", True), Column("IDX", "index", True), Column("NAME", "name"),
    Column("MAC", "mac"), Column("MTU", "mtu", True), Column("STATE", "operstate"),
    Column("FLAGS", lambda i: ",".join(i.flags)), Column("ADDRESSES", _addresses)))
def ifaces(kernel: LinuxKernel) -> ViewResult[Interface]:
    """List the network interfaces of every namespace, with their IPv4 and IPv6 addresses."""
    try:
        nets = kernel.helper(NetReader)
        reader = kernel.helper(IfaceReader)
    except (MemberNotFound, TypeNotFound) as exc:
        return ViewResult(partial=f"network structures not understood: {exc}")
    spaces, partial = nets.namespaces()
    result: ViewResult[Interface] = ViewResult(partial=partial)
    budget = MAX_DEVICES
    for net, inum in spaces:
        devices, problem = nets.devices(net, budget)
        budget -= len(devices)
        for dev in devices:
            try:
                interface, trouble = reader.interface(inum, dev)
            except GuestMemoryError as exc:
                result.partial = result.partial or f"device {dev:#x}: {exc}"
                continue
            result.items.append(interface)
            result.partial = result.partial or trouble
        result.partial = result.partial or problem
    return result

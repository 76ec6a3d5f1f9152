"""link_set, set_address: bring an interface up or down, set its IPv4 address (ioctls on
a datagram socket, as ifconfig does)."""

import ipaddress
import struct

from cloudvmi.capability import operation
from cloudvmi.write.errors import check
from cloudvmi.write.recipes.common import close
from cloudvmi.write.session import GuestSession


@operation()
def link_set(ops, iface: str, up: bool) -> None:
    """Bring a guest network interface up or down."""
    with ops.session() as s:
        abi = s.abi
        sock, ifreq = _ifreq_socket(s, iface)
        try:
            b = s.batch()
            i = b.add(abi.nr("ioctl"), sock, abi.SIOCGIFFLAGS, ifreq)
            check(s.run(b)[i], f"get flags of {iface}")
            flags = struct.unpack("<H", s.read(ifreq + 16, 2))[0]
            flags = flags | abi.IFF_UP if up else flags & ~abi.IFF_UP
            s.injector.write_user(ifreq + 16, struct.pack("<H", flags))
            b = s.batch()
            i = b.add(abi.nr("ioctl"), sock, abi.SIOCSIFFLAGS, ifreq)
            check(s.run(b)[i], f"set {iface} {'up' if up else 'down'}")
        finally:
            close(s, sock)


@operation()
def set_address(ops, iface: str, cidr: str) -> None:
    """Set a guest interface's IPv4 address and netmask (CIDR: 10.0.0.7/24)."""
    net = ipaddress.IPv4Interface(cidr)
    with ops.session() as s:
        abi = s.abi
        sock, _ = _ifreq_socket(s, iface)
        try:
            b = s.batch()
            calls = []
            for request, address in ((abi.SIOCSIFADDR, net.ip),
                                     (abi.SIOCSIFNETMASK, net.network.netmask)):
                req = s.put(_ifreq(iface, struct.pack("<HH4s8x", abi.AF_INET, 0,
                                                      address.packed)))
                calls.append(b.add(abi.nr("ioctl"), sock, request, req))
            results = s.run(b)
            check(results[calls[0]], f"set address of {iface}")
            check(results[calls[1]], f"set netmask of {iface}")
        finally:
            close(s, sock)


def _ifreq_socket(s: GuestSession, iface: str) -> tuple[int, int]:
    abi = s.abi
    b = s.batch()
    sock = b.add(abi.nr("socket"), abi.AF_INET, abi.SOCK_DGRAM | abi.O_CLOEXEC, 0)
    ifreq = s.put(_ifreq(iface, b""))
    return check(s.run(b)[sock], "socket"), ifreq


def _ifreq(iface: str, union: bytes) -> bytes:
    name = iface.encode()
    if not 0 < len(name) < 16:
        raise ValueError(f"bad interface name {iface!r}")
    return name.ljust(16, b"\0") + union.ljust(24, b"\0")

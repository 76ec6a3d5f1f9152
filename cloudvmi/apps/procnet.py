"""The guest's /proc/net/{tcp,tcp6,udp,udp6} as the kernel prints them, parsed into the
keys `hunt` compares with the socket tables read from memory."""

import ipaddress

# /proc/net/tcp's st column, as ss names the states
TCP_STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
              6: "TIME-WAIT", 7: "UNCONN", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW-SYN-RECV"}


def address(hex_address: str) -> str:
    """"0100007F:1F90" -> "127.0.0.1:8080" (the kernel prints each 32-bit word of the
    address in the guest's byte order: little-endian on x86)."""
    addr, port = hex_address.split(":")
    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))
    ip = ipaddress.ip_address(raw)
    return endpoint(str(ip), int(port, 16))


def endpoint(ip: str, port: int) -> str:
    """"127.0.0.1:80", "[::1]:80"; an IPv4-mapped IPv6 address as the IPv4 one."""
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
        a = a.ipv4_mapped
    return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"


def parse(text: str) -> set[tuple]:
    """Sections "== tcp" ... followed by the file's lines: (protocol, local, remote, state,
    inode) for every socket."""
    out, protocol = set(), ""
    for line in text.splitlines():
        if line.startswith("== "):
            protocol = line[3:].strip()
            continue
        fields = line.split()
        if len(fields) < 10 or not fields[0].endswith(":") or not fields[0][:-1].isdigit():
            continue
        state = TCP_STATES.get(int(fields[3], 16), fields[3])
        out.add((protocol, address(fields[1]), address(fields[2]), state, int(fields[9])))
    return out

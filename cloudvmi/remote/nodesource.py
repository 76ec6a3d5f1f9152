"""Where a client learns of nodes besides its inventory's [[node]] tables: a static list
(`--nodes host:port,...`) and DNS SRV records (`--srv _cloudvmi._tcp.example.internal`).

An SRV record names a target host and a port; the node is dialled at the target's address
with the target's name as the TLS server name, so its agent certificate must carry that
name (`cloudvmi certs issue NODE --kind agent --host node1.example.internal`). Answers are
bounded in count; a name that does not resolve is an error naming it, not an empty fleet.
"""

from dataclasses import dataclass

from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import schema

MAX_NODES = 4096  # nodes one source may give
DNS_TIMEOUT = 5.0  # seconds for all of one name's queries


@dataclass(frozen=True)
class Source:
    """A node an extra source gives: NAME, dialled at ADDRESS, whose certificate must be
    for SERVER_NAME (when it differs from the address's host)."""

    name: str
    address: str
    server_name: str | None = None


def static(text: str) -> list[Source]:
    """`host:port,host:port` or `name=host:port,...`: nodes named by their host unless a
    name is given."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.rpartition("=")
        host, _ = schema.host_port(address, "--nodes entry")
        out.append(Source(name if sep else host, address))
        if len(out) > MAX_NODES:
            raise CloudVMIError(f"--nodes lists more than {MAX_NODES} nodes")
    if not out:
        raise CloudVMIError("--nodes names no node (HOST:PORT,HOST:PORT...)")
    return out


def resolver(server: str | None = None, timeout: float = DNS_TIMEOUT):
    """The system's DNS resolver, or one asking only SERVER (HOST:PORT)."""
    import dns.resolver

    if server:
        host, port = schema.host_port(server, "DNS server")
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [host]
        r.port = port
    else:
        r = dns.resolver.Resolver()
    r.lifetime = timeout
    return r


def srv(name: str, server: str | None = None, timeout: float = DNS_TIMEOUT) -> list[Source]:
    """The nodes NAME's SRV records give, in priority then weight order, each at its
    target's address (A records first, then AAAA)."""
    import dns.exception
    import dns.resolver

    r = resolver(server, timeout)
    try:
        answer = r.resolve(name, "SRV")
    except (dns.exception.DNSException, OSError) as exc:
        raise CloudVMIError(f"SRV {name}: {exc}") from None
    records = sorted(answer, key=lambda rec: (rec.priority, -rec.weight, str(rec.target)))
    if len(records) > MAX_NODES:
        raise CloudVMIError(f"SRV {name}: {len(records)} records, over {MAX_NODES}")
    glue = _glue(answer.response)
    out, seen = [], set()
    for rec in records:
        target = str(rec.target).rstrip(".")
        if not target or (target, rec.port) in seen:  # "." means: no service here
            continue
        seen.add((target, rec.port))
        host = glue.get(target.lower()) or _address(r, target)
        address = f"[{host}]:{rec.port}" if ":" in host else f"{host}:{rec.port}"
        out.append(Source(target, address, target))
    return out


def _glue(response) -> dict[str, str]:
    """Addresses the server sent along with the SRV answer (its additional section)."""
    import dns.rdatatype

    out: dict[str, str] = {}
    for rrset in getattr(response, "additional", []):
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            for rdata in rrset:
                out.setdefault(str(rrset.name).rstrip(".").lower(), rdata.address)
    return out


def _address(r, target: str) -> str:
    import dns.exception

    for kind in ("A", "AAAA"):
        try:
            return next(iter(r.resolve(target, kind))).address
        except (dns.exception.DNSException, OSError):
            continue
    raise CloudVMIError(f"SRV target {target} has no address")

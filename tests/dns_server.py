"""A tiny authoritative DNS server on loopback for tests of SRV node discovery: it answers
from a fixed table (SRV and A records), built with dnspython's message API, and stops by
itself when closed."""

import socket
import threading

import dns.exception
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DNSServer:
    def __init__(self, records: dict[tuple[str, str], list[str]], glue: bool = True) -> None:
        """RECORDS: (name, type) -> rdata texts, e.g. ("_x._tcp.t.", "SRV"): ["0 5 7443 a.t."].
        With GLUE, an SRV answer carries its targets' A records in the additional section."""
        self.records = {(n.lower().rstrip(".") + ".", t): v for (n, t), v in records.items()}
        self.glue = glue
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _rrset(self, name: str, kind: str):
        texts = self.records.get((name, kind))
        if not texts:
            return None
        return dns.rrset.from_text_list(name, 60, dns.rdataclass.IN, kind, texts)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            reply = dns.message.make_response(query)
            reply.flags |= 0x0400  # authoritative
            q = query.question[0]
            name, kind = q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)
            self.queries.append((name, kind))
            answer = self._rrset(name, kind)
            if answer is None:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            else:
                reply.answer.append(answer)
                if kind == "SRV" and self.glue:
                    for rdata in answer:
                        a = self._rrset(rdata.target.to_text().lower(), "A")
                        if a is not None:
                            reply.additional.append(a)
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

"""Network namespaces as host nodes for cross-node tests: each node and the client get a
namespace; the client reaches each node over its own veth pair (10.201.N.0/24, addresses
that exist only inside these namespaces). Everything is removed afterwards."""

import subprocess
import uuid


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Topology:
    def __init__(self, nodes: int) -> None:
        tag = uuid.uuid4().hex[:5]
        self.client = f"cvc{tag}"
        self.nodes = [f"cvn{i}{tag}" for i in range(1, nodes + 1)]
        self.addresses: dict[str, str] = {}
        self._created: list[str] = []
        try:
            self._build(tag)
        except BaseException:
            self.remove()
            raise

    def _build(self, tag: str) -> None:
        for ns in (self.client, *self.nodes):
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for i, ns in enumerate(self.nodes, start=1):
            a, b = f"vc{i}{tag}", f"vn{i}{tag}"
            _ip("link", "add", a, "netns", self.client, "type", "veth", "peer", "name", b,
                "netns", ns)
            _ip("-n", self.client, "addr", "add", f"10.201.{i}.1/24", "dev", a)
            _ip("-n", ns, "addr", "add", f"10.201.{i}.2/24", "dev", b)
            _ip("-n", self.client, "link", "set", a, "up")
            _ip("-n", ns, "link", "set", b, "up")
            self.addresses[ns] = f"10.201.{i}.2"

    def run_in(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def remove(self) -> None:
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        self._created.clear()

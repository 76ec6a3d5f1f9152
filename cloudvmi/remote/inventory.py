"""The client's inventory: which nodes exist, where their agents listen, and this client's
credentials; and `VM@NODE` names resolved through it. Read strictly (`schema`): wrong types
and unknown keys are errors, and plaintext (`insecure`) only reaches a loopback address.

Nodes come from its [[node]] tables, and from the sources its [sources] table or the command
line names (a static list, DNS SRV records: `nodesource`); those always use mutual TLS.

The gRPC client is imported only when a node is reached: `open_target` of a local VM or a
dump file (`cloudvmi ps guest.elf`) costs no gRPC import."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import nodesource, schema
from cloudvmi.remote.schema import Setting

if TYPE_CHECKING:
    from cloudvmi.remote.client import TLS, Node

CLIENT_SETTINGS = {name: Setting(str, required=True, low=1) for name in ("ca", "cert", "key")}
NODE_SETTINGS = {
    "name": Setting(str, required=True, low=1),
    "address": Setting(str, required=True, low=1),
    "server_name": Setting(str, low=1),
    "insecure": Setting(bool),
}
SOURCE_SETTINGS = {
    "nodes": Setting(list, str, low=1),  # HOST:PORT or NAME=HOST:PORT
    "srv": Setting(list, str, low=1),  # DNS names whose SRV records list nodes
    "dns": Setting(str, low=1),  # HOST:PORT of the DNS server to ask (default: the system's)
    "timeout": Setting(int, low=1, high=3600),  # seconds one node may take in a fleet command
}
FILE_SETTINGS = {"client": Setting(dict), "node": Setting(list, dict),
                 "sources": Setting(dict)}
FLEET_TIMEOUT = 30.0  # seconds one node may take in a fleet command
MAX_PARALLEL_NODES = 64  # nodes asked at once


@dataclass
class NodeEntry:
    name: str
    address: str
    server_name: str | None = None
    insecure: bool = False


class NodeTimeout(CloudVMIError):
    """A node did not answer a fleet command within its time."""


@dataclass
class Inventory:
    nodes: dict[str, NodeEntry]
    tls: TLS | None
    timeout: float = FLEET_TIMEOUT  # per node, in fleet commands
    sources: dict = field(default_factory=dict)  # the file's [sources] table

    def add(self, sources: list[nodesource.Source]) -> None:
        """Nodes from another source; one already listed (by address) is not added twice,
        and one whose name is taken is named by its address."""
        known = {e.address for e in self.nodes.values()}
        for src in sources:
            if src.address in known:
                continue
            known.add(src.address)
            name = src.name if src.name not in self.nodes else src.address
            self.nodes[name] = NodeEntry(name, src.address, src.server_name)

    def node(self, name: str, timeout: float = 60.0) -> Node:
        entry = self.nodes.get(name)
        if entry is None:
            raise CloudVMIError(f"no node {name!r} in the inventory "
                                f"(known: {', '.join(sorted(self.nodes)) or 'none'})")
        if not entry.insecure and self.tls is None:
            raise CloudVMIError("the inventory has no [client] credentials for mutual TLS")
        from cloudvmi.remote.client import Node

        return Node(entry.address, None if entry.insecure else self.tls, name=entry.name,
                    timeout=timeout, server_name=entry.server_name)

    def fan_out(self, fn, timeout: float | None = None) -> dict[str, object]:
        """FN(node) on every node at once: node name -> result, or the exception it raised
        (NodeTimeout for a node that took over TIMEOUT seconds, default the inventory's),
        sorted by node name. Each call to a node has that deadline too, so a node that hangs
        holds nothing past it."""
        from concurrent import futures

        timeout = self.timeout if timeout is None else timeout
        results: dict[str, object] = {}
        pool = futures.ThreadPoolExecutor(
            max_workers=max(1, min(len(self.nodes), MAX_PARALLEL_NODES)),
            thread_name_prefix="cloudvmi-node")
        try:
            jobs = {pool.submit(self._on, name, fn, timeout): name for name in self.nodes}
            deadline = time.monotonic() + timeout + 1.0  # queued nodes get their time too
            if len(self.nodes) > MAX_PARALLEL_NODES:
                deadline += timeout * (len(self.nodes) // MAX_PARALLEL_NODES)
            done, late = futures.wait(jobs, timeout=max(0.0, deadline - time.monotonic()))
            for job in done:
                results[jobs[job]] = job.result()
            for job in late:
                results[jobs[job]] = NodeTimeout(f"no answer within {timeout:g} s")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return dict(sorted(results.items()))

    def _on(self, name: str, fn, timeout: float):
        try:
            node = self.node(name, timeout)
        except CloudVMIError as exc:
            return exc
        try:
            return fn(node)
        except (CloudVMIError, ValueError) as exc:
            return exc
        finally:
            node.close()


def default_path() -> Path:
    return Path(os.environ.get("CLOUDVMI_INVENTORY")
                or Path.home() / ".config" / "cloudvmi" / "inventory.toml")


def load(path: str | Path | None = None, nodes: str | None = None, srv: str | None = None,
         dns: str | None = None, timeout: float | None = None) -> Inventory:
    """The inventory file's nodes, then those of its [sources], then NODES (a static list,
    "HOST:PORT,...") and SRV (a DNS name whose SRV records list nodes, asked of DNS, a
    HOST:PORT, or the system's resolver)."""
    inventory = _read(Path(path) if path else default_path(), optional=bool(nodes or srv))
    sources = inventory.sources
    dns = dns or sources.get("dns")
    for text in sources.get("nodes", []):
        inventory.add(nodesource.static(text))
    for name in sources.get("srv", []):
        inventory.add(nodesource.srv(name, dns))
    if nodes:
        inventory.add(nodesource.static(nodes))
    if srv:
        inventory.add(nodesource.srv(srv, dns))
    if timeout is not None:
        inventory.timeout = timeout
    elif "timeout" in sources:
        inventory.timeout = float(sources["timeout"])
    return inventory


def _read(path: Path, optional: bool) -> Inventory:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if optional:  # nodes from elsewhere; they will ask for credentials
            return Inventory({}, None)
        raise CloudVMIError(f"no inventory at {path} (set CLOUDVMI_INVENTORY)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CloudVMIError(f"cannot read inventory {path}: {exc}") from exc
    where = f"inventory {path}"
    schema.table(data, FILE_SETTINGS, where)
    base = path.parent
    tls = None
    if "client" in data:
        client = schema.table(data["client"], CLIENT_SETTINGS, f"{where}: [client]")
        from cloudvmi.remote.client import TLS

        tls = TLS(*(base / client[k] for k in ("ca", "cert", "key")))
    nodes = {}
    for i, n in enumerate(schema.tables(data.get("node", []), NODE_SETTINGS,
                                        f"{where}: [[node]]"), start=1):
        what = f"{where}: [[node]] #{i}"
        if n.get("insecure", False):
            host, _ = schema.host_port(n["address"], f"{what}: address")
            if not schema.is_loopback(host):
                raise CloudVMIError(f"{what}: insecure (plaintext) only to a loopback "
                                    f"address, not {n['address']!r}")
        if n["name"] in nodes:
            raise CloudVMIError(f"{what}: node {n['name']!r} is listed twice")
        nodes[n["name"]] = NodeEntry(n["name"], n["address"], n.get("server_name"),
                                     n.get("insecure", False))
    return Inventory(nodes, tls, sources=schema.table(data.get("sources", {}), SOURCE_SETTINGS,
                                                      f"{where}: [sources]"))


def open_target(target: str, writable: bool = False):
    """A VM by any name the CLI takes: VM@NODE (through its agent), a VM a finder knows (a
    lab guest), a QMP socket, or a dump file."""
    if "@" in target and not Path(target).exists():
        vm, _, node = target.rpartition("@")
        if not vm or not node:
            raise CloudVMIError(f"{target!r}: a remote VM is VM@NODE, both named")
        from cloudvmi.remote.client import RemoteVM

        return RemoteVM(load().node(node), vm, owns_node=True)
    from cloudvmi.vm import attach

    return attach(target, writable=writable)

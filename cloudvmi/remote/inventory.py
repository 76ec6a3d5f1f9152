"""The client's inventory: which nodes exist, where their agents listen, and this client's
credentials; and `VM@NODE` names resolved through it. Read strictly (`schema`): wrong types
and unknown keys are errors, and plaintext (`insecure`) only reaches a loopback address."""

import os
import tomllib
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import schema
from cloudvmi.remote.client import TLS, Node, RemoteVM
from cloudvmi.remote.schema import Setting

CLIENT_SETTINGS = {name: Setting(str, required=True, low=1) for name in ("ca", "cert", "key")}
NODE_SETTINGS = {
    "name": Setting(str, required=True, low=1),
    "address": Setting(str, required=True, low=1),
    "server_name": Setting(str, low=1),
    "insecure": Setting(bool),
}
FILE_SETTINGS = {"client": Setting(dict), "node": Setting(list, dict)}


@dataclass
class NodeEntry:
    name: str
    address: str
    server_name: str | None = None
    insecure: bool = False


@dataclass
class Inventory:
    nodes: dict[str, NodeEntry]
    tls: TLS | None

    def node(self, name: str, timeout: float = 60.0) -> Node:
        entry = self.nodes.get(name)
        if entry is None:
            raise CloudVMIError(f"no node {name!r} in the inventory "
                                f"(known: {', '.join(sorted(self.nodes)) or 'none'})")
        if not entry.insecure and self.tls is None:
            raise CloudVMIError("the inventory has no [client] credentials for mutual TLS")
        return Node(entry.address, None if entry.insecure else self.tls, name=entry.name,
                    timeout=timeout, server_name=entry.server_name)

    def fan_out(self, fn, timeout: float = 60.0) -> dict[str, object]:
        """FN(node) on every node at once: node name -> result, or the exception it raised."""
        results: dict[str, object] = {}
        with futures.ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
            jobs = {pool.submit(self._on, name, fn, timeout): name for name in self.nodes}
            for job in futures.as_completed(jobs):
                results[jobs[job]] = job.result()
        return dict(sorted(results.items()))

    def _on(self, name: str, fn, timeout: float):
        try:
            node = self.node(name, timeout)
        except CloudVMIError as exc:
            return exc
        try:
            return fn(node)
        except CloudVMIError as exc:
            return exc
        finally:
            node.close()


def default_path() -> Path:
    return Path(os.environ.get("CLOUDVMI_INVENTORY")
                or Path.home() / ".config" / "cloudvmi" / "inventory.toml")


def load(path: str | Path | None = None) -> Inventory:
    path = Path(path) if path else default_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CloudVMIError(f"no inventory at {path} (set CLOUDVMI_INVENTORY)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CloudVMIError(f"cannot read inventory {path}: {exc}") from exc
    where = f"inventory {path}"
    schema.table(data, FILE_SETTINGS, where)
    base = path.parent
    tls = None
    if "client" in data:
        client = schema.table(data["client"], CLIENT_SETTINGS, f"{where}: [client]")
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
    return Inventory(nodes, tls)


def open_target(target: str, writable: bool = False):
    """A VM by any name the CLI takes: VM@NODE (through its agent), a VM a finder knows (a
    lab guest), a QMP socket, or a dump file."""
    if "@" in target and not Path(target).exists():
        vm, _, node = target.rpartition("@")
        if not vm or not node:
            raise CloudVMIError(f"{target!r}: a remote VM is VM@NODE, both named")
        return RemoteVM(load().node(node), vm, owns_node=True)
    from cloudvmi.vm import attach

    return attach(target, writable=writable)

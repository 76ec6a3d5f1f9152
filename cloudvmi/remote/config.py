"""The agent's configuration file (TOML): where to listen, its credentials, which VMs it
serves, and who may do what to which VM."""

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cloudvmi.errors import CloudVMIError

PERMISSIONS = ("read", "write", "operate")  # views and reads; memory writes; guest operations


@dataclass
class Rule:
    identity: str  # the client certificate's common name ("*" matches any)
    vms: list[str]  # glob patterns of VM names
    permissions: list[str]

    def allows(self, identity: str, vm: str, permission: str) -> bool:
        return (fnmatch.fnmatchcase(identity, self.identity)
                and permission in self.permissions
                and any(fnmatch.fnmatchcase(vm, pattern) for pattern in self.vms))


@dataclass
class AgentConfig:
    node: str
    listen: str = "127.0.0.1:7443"
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False  # plaintext, for loopback development only
    audit_log: Path = Path("audit.jsonl")
    audit_key: Path | None = None  # the forward-secure key state; default <audit_log>.key
    audit_initial_key: Path | None = None  # K_1 for the auditor; default <audit_log>.key.initial
    audit_checkpoints: Path | None = None  # signed checkpoints; default <audit_log>.checkpoints
    audit_redact_args: bool = False  # record only the digest of each call's arguments
    lab: bool = True  # serve this host's lab guests
    qmp_dirs: list[Path] = field(default_factory=list)
    max_message_bytes: int = 8 << 20
    max_concurrent_rpcs: int = 64
    workers: int = 16
    calls_per_identity: int = 4  # calls one client may have in flight (others keep workers)
    bytes_per_identity: int = 512 << 20  # payload bytes one client may have in flight
    payload_idle: float = 30.0  # seconds a call's payload may stall before it is cut off
    metrics_listen: str = ""  # "127.0.0.1:9464": serve Prometheus metrics there
    rules: list[Rule] = field(default_factory=list)

    def allowed(self, identity: str, vm: str, permission: str) -> bool:
        return any(rule.allows(identity, vm, permission) for rule in self.rules)


def load(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CloudVMIError(f"cannot read agent config {path}: {exc}") from exc
    agent = data.get("agent", {})
    base = path.parent

    def rel(value: str | None) -> Path | None:
        return None if value is None else (base / value).resolve()

    try:
        cfg = AgentConfig(
            node=agent["node"], listen=agent.get("listen", "127.0.0.1:7443"),
            ca=rel(agent.get("ca")), cert=rel(agent.get("cert")), key=rel(agent.get("key")),
            insecure=bool(agent.get("insecure", False)),
            audit_log=rel(agent.get("audit_log", "audit.jsonl")),
            audit_key=rel(agent.get("audit_key")),
            audit_initial_key=rel(agent.get("audit_initial_key")),
            audit_checkpoints=rel(agent.get("audit_checkpoints")),
            audit_redact_args=bool(agent.get("audit_redact_args", False)),
            lab=bool(agent.get("lab", True)),
            qmp_dirs=[rel(d) for d in agent.get("qmp_dirs", [])],
            max_message_bytes=int(agent.get("max_message_bytes", 8 << 20)),
            max_concurrent_rpcs=int(agent.get("max_concurrent_rpcs", 64)),
            workers=int(agent.get("workers", 16)),
            calls_per_identity=int(agent.get("calls_per_identity", 4)),
            bytes_per_identity=int(agent.get("bytes_per_identity", 512 << 20)),
            payload_idle=float(agent.get("payload_idle", 30.0)),
            metrics_listen=str(agent.get("metrics_listen", "")),
            rules=[Rule(r["identity"], list(r.get("vms", ["*"])), list(r["permissions"]))
                   for r in data.get("allow", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CloudVMIError(f"agent config {path}: missing or bad setting {exc}") from exc
    for rule in cfg.rules:
        bad = set(rule.permissions) - set(PERMISSIONS)
        if bad:
            raise CloudVMIError(f"agent config {path}: unknown permissions {sorted(bad)}")
    if cfg.insecure:
        host = cfg.listen.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise CloudVMIError("insecure (plaintext) mode only listens on loopback")
    elif not (cfg.ca and cfg.cert and cfg.key):
        raise CloudVMIError(f"agent config {path}: ca, cert and key are required (mutual TLS)")
    return cfg

"""The agent's configuration file (TOML): where to listen, its credentials, which VMs it
serves, who may do what to which VM, and which client certificates are revoked.

Read strictly (`schema`): a wrong type or an unknown key is an error naming the key, so a
typo cannot silently weaken what the file says."""

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import certs, dumps, schema
from cloudvmi.remote.schema import Setting

PERMISSIONS = ("read", "write", "operate")  # views and reads; memory writes; guest operations
# The agent streams replies in 4 MiB chunks: a message limit below that (and its framing)
# would fail every bulk read.
MIN_MESSAGE_BYTES = (4 << 20) + (64 << 10)
MAX_MESSAGE_BYTES = 1 << 30

AGENT_SETTINGS = {
    "node": Setting(str, required=True, low=1),
    "listen": Setting(str, low=1),
    "ca": Setting(str, low=1),
    "cert": Setting(str, low=1),
    "key": Setting(str, low=1),
    "insecure": Setting(bool),
    "audit_log": Setting(str, low=1),
    "audit_key": Setting(str, low=1),
    "audit_initial_key": Setting(str, low=1),
    "audit_checkpoints": Setting(str, low=1),
    "audit_redact_args": Setting(bool),
    "lab": Setting(bool),
    "libvirt": Setting(bool),
    "libvirt_uri": Setting(str, low=1),
    "qmp_dirs": Setting(list, str, low=1),
    "dumps": Setting(list, str, low=1),  # globs (or directories) of memory dump files
    "max_dumps": Setting(int, low=1, high=100_000),
    "dumps_attached": Setting(int, low=1, high=4096),
    "max_message_bytes": Setting(int, low=MIN_MESSAGE_BYTES, high=MAX_MESSAGE_BYTES),
    "max_concurrent_rpcs": Setting(int, low=1, high=100_000),
    "workers": Setting(int, low=1, high=1024),
    "calls_per_identity": Setting(int, low=1, high=1024),
    "bytes_per_identity": Setting(int, low=1, high=1 << 40),
    "payload_idle": Setting(int, low=1, high=3600),  # seconds
    "metrics_listen": Setting(str),
    "revoked": Setting(list, str, low=1),  # serial numbers (hex) of revoked client certs
    "crl": Setting(str, low=1),  # a CRL signed by the CA
}
RULE_SETTINGS = {
    "identity": Setting(str, required=True, low=1),
    "vms": Setting(list, str, low=1),
    "permissions": Setting(list, str, required=True, choices=PERMISSIONS),
}
ALLOWED_KEPT = 4096  # answers of AgentConfig.allowed kept
FILE_SETTINGS = {"agent": Setting(dict, required=True), "allow": Setting(list, dict)}


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
    libvirt: bool = False  # serve the running domains of this host's libvirtd
    libvirt_uri: str = ""  # its connection (default: the settings', else qemu:///system)
    qmp_dirs: list[Path] = field(default_factory=list)
    dumps: list[str] = field(default_factory=list)  # globs of dump files served read-only
    max_dumps: int = 1024  # dump files listed at most
    dumps_attached: int = 16  # dumps kept attached at once (each maps its file)
    max_message_bytes: int = 8 << 20
    max_concurrent_rpcs: int = 64
    workers: int = 16
    calls_per_identity: int = 4  # calls one client may have in flight (others keep workers)
    bytes_per_identity: int = 512 << 20  # payload bytes one client may have in flight
    payload_idle: float = 30.0  # seconds a call's payload may stall before it is cut off
    metrics_listen: str = ""  # "127.0.0.1:9464": serve Prometheus metrics there
    rules: list[Rule] = field(default_factory=list)
    crl: Path | None = None  # the CRL read at load (its serials are in `revoked`)
    revoked: frozenset[int] = frozenset()  # serials refused: `revoked` and the CRL's
    _answers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Here, not only in load(): a config built in code cannot serve plaintext off-host.
        if self.insecure:
            host, _ = schema.host_port(self.listen, "listen")
            if not schema.is_loopback(host):
                raise CloudVMIError(f"insecure (plaintext) mode only listens on loopback, "
                                    f"not {self.listen!r}")

    def allowed(self, identity: str, vm: str, permission: str) -> bool:
        """Whether a rule lets IDENTITY have PERMISSION on VM. Answers are kept (the rules
        do not change while the agent runs), up to ALLOWED_KEPT of them: the names asked
        about are the clients'."""
        key = (identity, vm, permission)
        answer = self._answers.get(key)
        if answer is None:
            answer = any(rule.allows(identity, vm, permission) for rule in self.rules)
            if len(self._answers) >= ALLOWED_KEPT:
                self._answers.clear()
            self._answers[key] = answer
        return answer


def load(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CloudVMIError(f"cannot read agent config {path}: {exc}") from exc
    where = f"agent config {path}"
    schema.table(data, FILE_SETTINGS, where)
    agent = schema.table(data["agent"], AGENT_SETTINGS, f"{where}: [agent]")
    rules = schema.tables(data.get("allow", []), RULE_SETTINGS, f"{where}: [[allow]]")
    if agent.get("metrics_listen"):
        schema.host_port(agent["metrics_listen"], f"{where}: [agent] metrics_listen",
                         empty_host=True)
    try:
        revoked = frozenset(certs.parse_serial(s) for s in agent.get("revoked", []))
    except certs.CertError as exc:
        raise CloudVMIError(f"{where}: [agent] revoked: {exc}") from None
    try:
        cfg = _build(agent, rules, path.parent, revoked)
    except CloudVMIError as exc:  # insecure off loopback
        raise CloudVMIError(f"{where}: [agent] {exc}") from None
    if not cfg.insecure and not (cfg.ca and cfg.cert and cfg.key):
        raise CloudVMIError(f"{where}: ca, cert and key are required (mutual TLS)")
    if cfg.crl is not None:
        cfg.revoked = cfg.revoked | _crl_serials(cfg, where)
    return cfg


def _build(agent: dict, rules: list[dict], base: Path, revoked: frozenset[int]
           ) -> AgentConfig:
    """The config from checked tables (paths relative to the file's directory)."""

    def rel(value: str | None) -> Path | None:
        return None if value is None else (base / value).resolve()

    return AgentConfig(
        node=agent["node"], listen=agent.get("listen", "127.0.0.1:7443"),
        ca=rel(agent.get("ca")), cert=rel(agent.get("cert")), key=rel(agent.get("key")),
        insecure=agent.get("insecure", False),
        audit_log=rel(agent.get("audit_log", "audit.jsonl")),
        audit_key=rel(agent.get("audit_key")),
        audit_initial_key=rel(agent.get("audit_initial_key")),
        audit_checkpoints=rel(agent.get("audit_checkpoints")),
        audit_redact_args=agent.get("audit_redact_args", False),
        lab=agent.get("lab", True),
        libvirt=agent.get("libvirt", False), libvirt_uri=agent.get("libvirt_uri", ""),
        qmp_dirs=[rel(d) for d in agent.get("qmp_dirs", [])],
        dumps=dumps.patterns([base / d for d in agent.get("dumps", [])]),
        max_dumps=agent.get("max_dumps", 1024),
        dumps_attached=agent.get("dumps_attached", 16),
        max_message_bytes=agent.get("max_message_bytes", 8 << 20),
        max_concurrent_rpcs=agent.get("max_concurrent_rpcs", 64),
        workers=agent.get("workers", 16),
        calls_per_identity=agent.get("calls_per_identity", 4),
        bytes_per_identity=agent.get("bytes_per_identity", 512 << 20),
        payload_idle=agent.get("payload_idle", 30),
        metrics_listen=agent.get("metrics_listen", ""),
        rules=[Rule(r["identity"], list(r.get("vms", ["*"])), list(r["permissions"]))
               for r in rules],
        crl=rel(agent.get("crl")), revoked=revoked,
    )


def _crl_serials(cfg: AgentConfig, where: str) -> frozenset[int]:
    """The serials of the configured CRL, which must verify against the configured CA."""
    if cfg.ca is None:
        raise CloudVMIError(f"{where}: crl needs ca (the CRL is checked against it)")
    try:
        return certs.read_crl(cfg.crl.read_bytes(), cfg.ca.read_bytes())
    except OSError as exc:
        raise CloudVMIError(f"{where}: crl: cannot read {cfg.crl}: {exc.strerror}") from None
    except certs.CertError as exc:
        raise CloudVMIError(f"{where}: crl {cfg.crl}: {exc}") from None

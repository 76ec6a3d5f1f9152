"""Signed checkpoints of the audit chain, written to a sink apart from the log.

A checkpoint is one canonical JSON line::

    {"v": 1, "chain", "seq", "head", "time", "alg", "key", "sig"}

signed by the agent's own private key (its TLS key: ECDSA P-256 with SHA-256, or Ed25519)
over a fixed context string and the canonical JSON of the other fields. `chain` is the
commitment to the chain's initial MAC key (audit_key.chain_id), `head` the hash of record
`seq`, `key` the SHA-256 of the signer's public key (SubjectPublicKeyInfo, DER), so a
verifier holding the agent's certificate can check every checkpoint, and hence every
record up to the last one, without any secret.
"""

import base64
import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cloudvmi.remote.audit_record import AuditError, canonical, sha256

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
FIELDS = frozenset({"v", "chain", "seq", "head", "time", "alg", "key", "sig"})
_CONTEXT = b"cloudvmi-audit/checkpoint\0"
_TAIL_CHUNK = 1 << 14


def key_id(public_key: PublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return sha256(der)


def _alg(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    return f"ecdsa-{key.curve.name}-sha256"


class Signer:
    """The agent's private key, signing checkpoints."""

    def __init__(self, private_key: PrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise AuditError("checkpoints are signed with an EC or Ed25519 key, not "
                             f"{type(private_key).__name__}")
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        self.alg = _alg(private_key)

    @classmethod
    def from_file(cls, path: Path | str) -> "Signer":
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise AuditError(f"cannot load the checkpoint signing key {path}: {exc}") from exc
        return cls(key)  # type: ignore[arg-type]

    def sign(self, message: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(message)
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def load_public_key(source: Any) -> PublicKey:
    """A public key from a key object, or a certificate or public key (PEM or DER) given as
    bytes or as a file path."""
    if isinstance(source, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return source
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    loaders = (lambda d: x509.load_pem_x509_certificate(d).public_key(),
               serialization.load_pem_public_key,
               lambda d: x509.load_der_x509_certificate(d).public_key(),
               serialization.load_der_public_key)
    for load in loaders:
        try:
            key = load(data)
        except (ValueError, TypeError):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            return key
        raise AuditError(f"unsupported checkpoint key type {type(key).__name__}")
    raise AuditError("not a certificate or public key (PEM or DER)")


def make(signer: Signer, chain: str, seq: int, head: str) -> dict:
    body = {"v": 1, "chain": chain, "seq": seq, "head": head,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "alg": signer.alg, "key": signer.key_id}
    sig = signer.sign(_CONTEXT + canonical(body))
    return {**body, "sig": base64.b64encode(sig).decode("ascii")}


def check_signature(cp: dict, keys: dict[str, PublicKey]) -> str | None:
    """Why CP's signature does not hold under KEYS (by key id), or None."""
    key = keys.get(cp["key"])
    if key is None:
        return f"signed by key {cp['key'][:16]}..., which is not among the keys given"
    if _alg(key) != cp["alg"]:
        return f"algorithm {cp['alg']!r} does not match the key"
    try:
        sig = base64.b64decode(cp["sig"], validate=True)
        message = _CONTEXT + canonical({k: v for k, v in cp.items() if k != "sig"})
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, message)
        else:
            key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return "bad signature: the checkpoint was forged or edited"
    return None


def parse(line: bytes) -> tuple[dict | None, str | None]:
    try:
        cp = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, "not a JSON checkpoint"
    if not isinstance(cp, dict) or set(cp) != FIELDS:
        return None, "wrong fields"
    if cp["v"] != 1 or type(cp["seq"]) is not int or cp["seq"] < 0:
        return None, "bad version or seq"
    if not all(isinstance(cp[k], str) for k in FIELDS - {"v", "seq"}):
        return None, "a field is not a string"
    if canonical(cp) != line:
        return None, "not in canonical form"
    return cp, None


class CheckpointSink:
    """The append-only file of checkpoints (appended under the log's lock)."""

    def __init__(self, path: Path | str, mode: int = 0o644) -> None:
        self.path = Path(path)
        self._mode = mode

    def append(self, cp: dict) -> None:
        data = canonical(cp) + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         self._mode)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError("short write")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditError(f"cannot append a checkpoint to {self.path}: {exc}") from exc

    def repair(self) -> None:
        """Drop a torn last line (a crash mid-append: that checkpoint was never relied on)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise AuditError(f"cannot open the checkpoint sink {self.path}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data, start = b"", size
                while start > 0 and b"\n" not in data:
                    n = min(_TAIL_CHUNK, start)
                    start -= n
                    data = os.pread(fd, n, start) + data
                os.ftruncate(fd, start + data.rfind(b"\n") + 1 if b"\n" in data else 0)
                os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"cannot repair the torn end of {self.path}: {exc}") from exc
        finally:
            os.close(fd)

    def last(self) -> dict | None:
        """The last checkpoint (its signature not checked), None if there is none; read
        from the end, so opening a long-lived agent's sink costs one block."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                data, start = b"", size
                while start > 0 and data.count(b"\n") < 2:
                    n = min(_TAIL_CHUNK, start)
                    start -= n
                    f.seek(start)
                    data = f.read(n) + data
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read the checkpoint sink {self.path}: {exc}") from exc
        if not data:
            return None
        if not data.endswith(b"\n"):
            raise AuditError(f"{self.path}: the last checkpoint is incomplete")
        cp, problem = parse(data[:-1].rsplit(b"\n", 1)[-1])
        if cp is None:
            raise AuditError(f"{self.path}: the last checkpoint is corrupt ({problem})")
        return cp

    def lines(self) -> Iterator[tuple[int, dict | None, str | None]]:
        """(line number, checkpoint, problem) for each line, streamed."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below; streamed
        except FileNotFoundError:
            return
        except OSError as exc:
            yield 0, None, f"cannot read {self.path}: {exc.strerror}"
            return
        with f:
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    yield lineno, None, f"checkpoint line {lineno} is incomplete"
                    return
                cp, problem = parse(raw[:-1])
                yield lineno, cp, (f"checkpoint line {lineno}: {problem}" if problem else None)


def keyring(sources: Iterable[Any]) -> dict[str, PublicKey]:
    keys = [load_public_key(s) for s in sources]
    return {key_id(k): k for k in keys}

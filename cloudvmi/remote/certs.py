"""A small PKI for mutual TLS between CloudVMI agents and clients (`cloudvmi certs`).

One self-signed CA (EC P-256: every TLS stack, gRPC's BoringSSL included, accepts it) signs
agent certificates (serverAuth, with the hosts clients dial as SANs) and client certificates
(clientAuth). Authorization uses the certificate's Common Name as the identity, so a name
must be unique per CA; `peer_identity` also checks the EKU so an agent's certificate cannot
pass as a client's. A directory holds `ca.pem` plus `NAME.pem` / `NAME.key` per holder, the
layout `load_credentials` and the remote client read.

Revocation: `revoke` adds serials to `crl.pem` in the CA directory, a CRL signed by the CA;
an agent's `crl` setting points at a copy, verified against its CA when the config loads.
"""

import datetime as dt
import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudvmi.errors import CloudVMIError

Kind = Literal["agent", "client"]
KINDS: tuple[str, ...] = ("agent", "client")
EKU = {"agent": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
INDEX = "issued.jsonl"  # in the CA directory: one line per certificate issued (serials)
CRL = "crl.pem"  # in the CA directory: every serial revoked, signed by the CA
SKEW = dt.timedelta(minutes=5)  # backdate notBefore so slightly slow peer clocks accept it

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


class CertError(CloudVMIError):
    """A certificate could not be created, issued or read."""


@dataclass(frozen=True)
class CAFiles:
    directory: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class IssuedFiles:
    cert: Path  # NAME.pem: the leaf certificate alone (the CA is the root, no intermediates)
    key: Path  # NAME.key, 0600
    ca: Path  # ca.pem next to them, the trust anchor for the peer
    identity: str  # the Common Name, what authorization matches
    kind: str
    serial: int
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a key."""
    if path.exists() and not force:
        raise CertError(f"{path} exists (use force to overwrite)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_name(name: str) -> None:
    if not _NAME.match(name) or name.lower() == "ca":
        raise CertError(f"bad certificate name {name!r}: use 1-64 of A-Z a-z 0-9 . _ - "
                        "(not starting with . _ -), and not 'ca'")


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    dns = host.lower().rstrip(".")
    if not _HOSTNAME.match(dns) or len(dns) > 253:
        raise CertError(f"{host!r} is neither an IP address nor a host name")
    return x509.DNSName(dns)


def init_ca(directory: Path, name: str = "CloudVMI CA", days: int = 3650,
            force: bool = False) -> CAFiles:
    """Create the CA in DIRECTORY; overwriting one (force) orphans every certificate it signed."""
    directory = Path(directory).expanduser()
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not force and (cert_path.exists() or key_path.exists()):
        raise CertError(f"a CA already exists in {directory} (use force to replace it)")
    if days < 1:
        raise CertError("days must be at least 1")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CloudVMI")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), 0o600, force=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force=True)
    return CAFiles(directory, cert_path, key_path)


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(f"no CA in {ca_dir} ({exc.filename} missing): "
                        "run `cloudvmi certs init` first") from exc
    except ValueError as exc:
        raise CertError(f"the CA in {ca_dir} is unreadable: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CertError(f"{ca_dir / CA_KEY} does not belong to {ca_dir / CA_CERT}")
    return cert, key


def _issued_kinds(ca_dir: Path, name: str) -> set[str]:
    try:
        lines = (ca_dir / INDEX).read_text().splitlines()
    except FileNotFoundError:
        return set()
    kinds = set()
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("name") == name:
            kinds.add(entry.get("kind"))
    return kinds


def issue(ca_dir: Path, out_dir: Path, name: str, kind: Kind, hosts: Iterable[str] = (),
          days: int = 825, force: bool = False) -> IssuedFiles:
    """Issue NAME's certificate and key into OUT_DIR, with the CA's `ca.pem` beside them.

    NAME becomes the Common Name, the identity authorization rules match, and the file stem.
    Agent certificates carry NAME and HOSTS as SANs (IPs as IP addresses) because clients
    check the address they dial against them. Validity is capped at the CA's own expiry.
    """
    ca_dir, out_dir = Path(ca_dir).expanduser(), Path(out_dir).expanduser()
    _check_name(name)
    if kind not in KINDS:
        raise CertError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if days < 1:
        raise CertError("days must be at least 1")
    ca_cert, ca_key = _load_ca(ca_dir)
    others = _issued_kinds(ca_dir, name) - {kind}
    if others and not force:
        raise CertError(f"{name!r} was already issued as {', '.join(sorted(others))}: "
                        "an identity should name one holder (use force to allow it)")
    sans: list[x509.GeneralName] = []
    if kind == "agent":
        for host in [name, *hosts]:
            san = _san(host)
            if san not in sans:
                sans.append(san)
    elif hosts:
        raise CertError("hosts are for agent certificates (clients are identified by name)")

    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    for path in (cert_path, key_path):
        if path.exists() and not force:
            raise CertError(f"{path} exists (use force to re-issue)")
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    ca_path = out_dir / CA_CERT
    if ca_path.exists() and ca_path.read_bytes() != ca_pem and not force:
        raise CertError(f"{ca_path} is a different CA's certificate: use another directory")

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=False, crl_sign=False, encipher_only=False,
                          decipher_only=False)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                           kind)]))
               .issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - SKEW).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(usage, critical=True)
               .add_extension(x509.ExtendedKeyUsage([EKU[kind]]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                   ca_ski), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())

    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(key_path, _key_pem(key), 0o600, force=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force=True)
    if not ca_path.exists() or ca_path.read_bytes() != ca_pem:
        _write(ca_path, ca_pem, 0o644, force=True)
    entry = {"serial": f"{cert.serial_number:x}", "name": name, "kind": kind,
             "hosts": [str(s.value) for s in sans], "not_after": not_after.isoformat(),
             "issued": now.isoformat(), "out": str(out_dir.resolve())}
    with open(ca_dir / INDEX, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return IssuedFiles(cert_path, key_path, ca_path, name, kind, cert.serial_number, not_after)


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse a certificate given as PEM or DER."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertError(f"not a certificate: {exc}") from exc


def common_names(cert: x509.Certificate) -> list[str]:
    """Every Common Name in the certificate's subject (an identity needs exactly one)."""
    return [v.decode() if isinstance(v, bytes) else v for v in
            (n.value for n in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))]


def cert_kind(cert: x509.Certificate) -> str | None:
    """'agent' or 'client' from the EKU (None if it has neither or both)."""
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    kinds = [k for k, oid in EKU.items() if oid in usages]
    return kinds[0] if len(kinds) == 1 else None


def identity_of(cert_pem_or_der: bytes) -> str:
    """The identity authorization uses: the certificate's (single) Common Name."""
    names = common_names(load_certificate(cert_pem_or_der))
    if len(names) != 1:
        raise CertError(f"certificate has {len(names)} common names, expected exactly one")
    return names[0]


def kind_of(cert_pem_or_der: bytes) -> str | None:
    """'agent' or 'client' from the EKU (None if it has neither or both)."""
    return cert_kind(load_certificate(cert_pem_or_der))


def peer_identity(auth_context: Mapping[str, Sequence[bytes]], kind: Kind = "client"
                  ) -> str | None:
    """The verified peer's CN from a gRPC `context.auth_context()`, if its EKU says KIND.

    gRPC has already checked the chain against the CA; this only refuses, e.g., an agent's
    certificate presented as a client's (the TLS stack may not enforce the EKU).
    None means no usable identity: deny.
    """
    pem = (auth_context.get("x509_pem_cert") or [b""])[0]
    if not pem:
        return None
    try:
        if kind_of(pem) != kind:
            return None
        return identity_of(pem)
    except CertError:
        return None


def load_credentials(directory: Path, name: str) -> tuple[bytes, bytes, bytes]:
    """(ca_pem, cert_pem, key_pem) for grpc.ssl_server_credentials / ssl_channel_credentials."""
    directory = Path(directory).expanduser()
    _check_name(name)
    try:
        return ((directory / CA_CERT).read_bytes(), (directory / f"{name}.pem").read_bytes(),
                (directory / f"{name}.key").read_bytes())
    except FileNotFoundError as exc:
        raise CertError(f"missing credential file {exc.filename}") from exc


# -- revocation ------------------------------------------------------------------------------
_SERIAL = re.compile(r"^(0x)?[0-9a-f]{1,40}$")


def parse_serial(text: str) -> int:
    """A serial number as `certs issue --json` prints it (hex; 0x and colons allowed)."""
    clean = text.strip().lower().replace(":", "")
    if not _SERIAL.match(clean):
        raise CertError(f"{text!r} is not a certificate serial number (hex)")
    return int(clean.removeprefix("0x"), 16)


def read_crl(data: bytes, ca_certs_pem: bytes) -> frozenset[int]:
    """The serials a CRL revokes, once its signature verifies with one of the CA
    certificates (a CRL anyone could write would let them pick who is trusted)."""
    try:
        crl = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN")
               else x509.load_der_x509_crl(data))
        cas = x509.load_pem_x509_certificates(ca_certs_pem)
    except ValueError as exc:
        raise CertError(f"not a CRL or CA certificate: {exc}") from exc
    for ca in cas:
        if crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key()):
            return frozenset(r.serial_number for r in crl)
    raise CertError("the CRL is not signed by the CA")


def make_crl(ca_dir: Path, serials: Iterable[int], days: int = 365) -> Path:
    """Write `crl.pem` in CA_DIR revoking exactly SERIALS, signed by the CA; its path."""
    ca_dir = Path(ca_dir).expanduser()
    if days < 1:
        raise CertError("days must be at least 1")
    ca_cert, ca_key = _load_ca(ca_dir)
    now = _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now).next_update(now + dt.timedelta(days=days)))
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
            .build())
    crl = builder.sign(ca_key, hashes.SHA256())
    path = ca_dir / CRL
    _write(path, crl.public_bytes(serialization.Encoding.PEM), 0o644, force=True)
    return path


def revoke(ca_dir: Path, who: str, days: int = 365) -> tuple[Path, list[int]]:
    """Revoke a certificate by serial, or every one issued to a name (from the CA's index):
    `crl.pem` is rewritten with them added. The CRL's path and the serials added."""
    ca_dir = Path(ca_dir).expanduser()
    ca_pem = (ca_dir / CA_CERT).read_bytes() if (ca_dir / CA_CERT).exists() else b""
    try:
        old = read_crl((ca_dir / CRL).read_bytes(), ca_pem)
    except FileNotFoundError:
        old = frozenset()
    named = _issued_serials(ca_dir, who)
    new = named if named else [parse_serial(who)]
    return make_crl(ca_dir, old | set(new), days), sorted(set(new) - old)


def _issued_serials(ca_dir: Path, name: str) -> list[int]:
    try:
        lines = (ca_dir / INDEX).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
            if entry.get("name") == name:
                out.append(int(entry["serial"], 16))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out

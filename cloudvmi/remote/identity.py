"""Who a verified client is, from its certificate, for the agent's authorization.

gRPC has already checked the chain against the CA in the handshake. This reads the peer's
certificate itself (not only gRPC's `x509_common_name`, which holds one CN of possibly
several) and refuses what the handshake does not: a certificate with more or fewer than
one Common Name (authorizing "the first" would let a CA-signed name smuggle another), one
without the client EKU, and a revoked serial (`revoked` and `crl` in the agent's config).
"""

import functools
import os
import threading
from collections.abc import Mapping, Sequence

from cloudvmi.remote import certs
from cloudvmi.remote.config import AgentConfig

INSECURE_IDENTITY = "insecure-loopback"  # every caller of a plaintext (loopback) agent


class Revocations:
    """The serials refused now: the configured ones and the CRL's. The CRL is read again
    when its file changes, so a revocation takes effect without restarting the agent; a
    CRL that no longer reads or verifies against the CA refuses every client (fail closed)
    until a good one is in place."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._stamp: tuple | None = self._stat()
        self._serials: frozenset[int] | None = config.revoked  # None: refuse everyone

    def _stat(self) -> tuple | None:
        if self.config.crl is None:
            return None
        try:
            st = os.stat(self.config.crl)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def refused(self, serial: int) -> bool:
        if self.config.crl is None:
            return serial in self.config.revoked
        stamp = self._stat()
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._serials = self.config.revoked | certs.read_crl(
                        self.config.crl.read_bytes(), self.config.ca.read_bytes())
                except (OSError, certs.CertError, AttributeError):
                    self._serials = None
            return self._serials is None or serial in self._serials


@functools.lru_cache(maxsize=256)
def _facts(pem: bytes) -> tuple[int, str, tuple[str, ...]] | None:
    """What a certificate says about its holder (serial, kind, CNs), parsed once per
    certificate: a client's calls all carry the same one, and parsing X.509 is not free.
    Revocation is checked on every call, outside this cache."""
    try:
        cert = certs.load_certificate(pem)
    except certs.CertError:
        return None
    return cert.serial_number, certs.cert_kind(cert), tuple(certs.common_names(cert))


def identity_of(auth_context: Mapping[str, Sequence[bytes]], config: AgentConfig,
                revocations: Revocations | None = None) -> str | None:
    """The identity (the single CN) of the peer in a gRPC `context.auth_context()`, or
    None when its certificate is refused: deny the call."""
    if config.insecure:
        return INSECURE_IDENTITY
    pems = auth_context.get("x509_pem_cert") or []
    if len(pems) != 1 or not pems[0]:
        return None
    facts = _facts(bytes(pems[0]))
    if facts is None:
        return None
    serial, kind, names = facts
    refused = (revocations.refused(serial) if revocations is not None
               else serial in config.revoked)
    if refused or kind != "client" or len(names) != 1 or not names[0]:
        return None
    seen = auth_context.get("x509_common_name")
    if seen is not None and [bytes(n).decode("utf-8", "replace") for n in seen] != list(names):
        return None  # gRPC read another name than we did: trust neither
    return names[0]

"""Who a verified client is, from its certificate, for the agent's authorization.

gRPC has already checked the chain against the CA in the handshake. This reads the peer's
certificate itself (not only gRPC's `x509_common_name`, which holds one CN of possibly
several) and refuses what the handshake does not: a certificate with more or fewer than
one Common Name (authorizing "the first" would let a CA-signed name smuggle another), one
without the client EKU, and a revoked serial (`revoked` and `crl` in the agent's config).
"""

from collections.abc import Mapping, Sequence

from cloudvmi.remote import certs
from cloudvmi.remote.config import AgentConfig

INSECURE_IDENTITY = "insecure-loopback"  # every caller of a plaintext (loopback) agent


def identity_of(auth_context: Mapping[str, Sequence[bytes]], config: AgentConfig
                ) -> str | None:
    """The identity (the single CN) of the peer in a gRPC `context.auth_context()`, or
    None when its certificate is refused: deny the call."""
    if config.insecure:
        return INSECURE_IDENTITY
    pems = auth_context.get("x509_pem_cert") or []
    if len(pems) != 1 or not pems[0]:
        return None
    try:
        cert = certs.load_certificate(pems[0])
    except certs.CertError:
        return None
    if cert.serial_number in config.revoked or certs.cert_kind(cert) != "client":
        return None
    names = certs.common_names(cert)
    if len(names) != 1 or not names[0]:
        return None
    seen = auth_context.get("x509_common_name")
    if seen is not None and [bytes(n).decode("utf-8", "replace") for n in seen] != names:
        return None  # gRPC read another name than we did: trust neither
    return names[0]

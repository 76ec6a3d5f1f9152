"""The mutual-TLS PKI: certificates verify with `cryptography`, and real TLS handshakes (Python's
ssl, and gRPC's BoringSSL) accept the right client and refuse the others."""

import ipaddress
import json
import socket
import ssl
import stat
import threading
from concurrent import futures
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import DNSName, PolicyBuilder, Store, VerificationError

from cloudvmi.cli.remote_admin import COMMANDS
from cloudvmi.remote import certs


class PKI:
    def __init__(self, root: Path) -> None:
        self.ca_dir = root / "ca"
        self.other_dir = root / "other-ca"
        self.ca = certs.init_ca(self.ca_dir)
        self.agent = certs.issue(self.ca_dir, self.ca_dir, "agent1", "agent",
                                 ["localhost", "127.0.0.1", "::1"])
        self.client = certs.issue(self.ca_dir, root / "clients", "alice", "client")
        certs.init_ca(self.other_dir, name="Evil CA")
        # the same identity, from a CA the agent does not trust
        self.forged = certs.issue(self.other_dir, self.other_dir, "alice", "client")
        self.forged_agent = certs.issue(self.other_dir, self.other_dir, "agent1", "agent",
                                        ["localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- files and certificate contents ----------------------------------------------------------
def test_files_and_permissions(pki: PKI) -> None:
    assert pki.ca.cert.name == "ca.pem" and mode(pki.ca.key) == 0o600
    assert mode(pki.agent.key) == 0o600 and mode(pki.client.key) == 0o600
    assert (pki.ca_dir / "agent1.pem").exists()
    # the client's directory got the trust anchor next to its cert and key
    assert pki.client.ca.read_bytes() == pki.ca.cert.read_bytes()
    ca, cert, key = certs.load_credentials(pki.client.cert.parent, "alice")
    assert (ca, cert, key) == (pki.ca.cert.read_bytes(), pki.client.cert.read_bytes(),
                               pki.client.key.read_bytes())
    private = serialization.load_pem_private_key(key, password=None)
    assert private.public_key().public_numbers() == load(pki.client.cert).public_key() \
        .public_numbers()


def test_ca_is_not_overwritten(pki: PKI, tmp_path: Path) -> None:
    before = pki.ca.cert.read_bytes()
    with pytest.raises(certs.CertError, match="already exists"):
        certs.init_ca(pki.ca_dir)
    assert pki.ca.cert.read_bytes() == before
    fresh = certs.init_ca(tmp_path / "x")
    first = fresh.cert.read_bytes()
    certs.init_ca(tmp_path / "x", force=True)
    assert fresh.cert.read_bytes() != first


def test_ca_certificate(pki: PKI) -> None:
    ca = load(pki.ca.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    ca.verify_directly_issued_by(ca)  # self-signed
    assert certs.identity_of(pki.ca.cert.read_bytes()) == "CloudVMI CA"


def test_agent_certificate(pki: PKI) -> None:
    ca, leaf = load(pki.ca.cert), load(pki.agent.cert)
    leaf.verify_directly_issued_by(ca)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["agent1", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc <= ca.not_valid_after_utc
    # a full path validation, as a TLS client would do for "localhost"
    chain = (PolicyBuilder().store(Store([ca])).build_server_verifier(DNSName("localhost"))
             .verify(leaf, []))
    assert chain[-1] == ca
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([ca])).build_server_verifier(DNSName("evil.example")) \
            .verify(leaf, [])
    with pytest.raises(VerificationError):  # an agent certificate is not a client's
        PolicyBuilder().store(Store([ca])).build_client_verifier().verify(leaf, [])
    assert certs.kind_of(pki.agent.cert.read_bytes()) == "agent"


def test_client_certificate(pki: PKI) -> None:
    ca, leaf = load(pki.ca.cert), load(pki.client.cert)
    leaf.verify_directly_issued_by(ca)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    pem = pki.client.cert.read_bytes()
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert certs.identity_of(pem) == certs.identity_of(der) == "alice"
    assert certs.kind_of(der) == "client"
    with pytest.raises(ValueError):  # same CN, other CA: the signature does not verify
        load(pki.forged.cert).verify_directly_issued_by(ca)


def test_bad_requests(pki: PKI, tmp_path: Path) -> None:
    for name in ("", "ca", "../x", "a/b", ".hidden", "x" * 65):
        with pytest.raises(certs.CertError):
            certs.issue(pki.ca_dir, tmp_path, name, "client")
    with pytest.raises(certs.CertError, match="kind"):
        certs.issue(pki.ca_dir, tmp_path, "bob", "admin")  # type: ignore[arg-type]
    with pytest.raises(certs.CertError, match="neither"):
        certs.issue(pki.ca_dir, tmp_path, "node", "agent", ["bad host!"])
    with pytest.raises(certs.CertError, match="exists"):
        certs.issue(pki.ca_dir, pki.ca_dir, "agent1", "agent")
    with pytest.raises(certs.CertError, match="already issued as client"):
        certs.issue(pki.ca_dir, tmp_path, "alice", "agent")
    with pytest.raises(certs.CertError, match="no CA"):
        certs.issue(tmp_path / "nowhere", tmp_path, "bob", "client")
    with pytest.raises(certs.CertError, match="different CA"):
        certs.issue(pki.ca_dir, pki.other_dir, "carol", "client")
    with pytest.raises(certs.CertError):
        certs.identity_of(b"not a certificate")


def test_peer_identity_checks_the_eku(pki: PKI) -> None:
    client = {"x509_pem_cert": [pki.client.cert.read_bytes()]}
    agent = {"x509_pem_cert": [pki.agent.cert.read_bytes()]}
    assert certs.peer_identity(client) == "alice"
    assert certs.peer_identity(agent) is None
    assert certs.peer_identity(agent, kind="agent") == "agent1"
    assert certs.peer_identity({}) is None


# -- a real TLS handshake with Python's ssl (OpenSSL) ------------------------------------------
def server_context(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=pki.ca.cert.read_text())
    ctx.load_cert_chain(pki.agent.cert, pki.agent.key)
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca.read_text())
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              hostname: str = "localhost") -> tuple[object, object]:
    """Handshake over a socket pair, exchange one message; (server, client) outcome each:
    the peer's identity / reply bytes, or the exception raised."""
    s_sock, c_sock = socket.socketpair()
    s_sock.settimeout(10)
    c_sock.settimeout(10)
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(s_sock, server_side=True) as tls:
                outcome["server"] = certs.identity_of(tls.getpeercert(binary_form=True))
                tls.sendall(b"pong:" + tls.recv(64))
        except (OSError, ssl.SSLError, certs.CertError) as exc:
            outcome["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(c_sock, server_hostname=hostname) as tls:
            tls.sendall(b"ping")
            client: object = tls.recv(64)
    except (OSError, ssl.SSLError) as exc:
        client = exc
    finally:
        c_sock.close()
        thread.join(15)
        s_sock.close()
    assert not thread.is_alive()
    return outcome["server"], client


def test_tls_accepts_the_right_client(pki: PKI) -> None:
    server, client = handshake(server_context(pki),
                               client_context(pki.client.ca, pki.client.cert, pki.client.key))
    assert server == "alice"
    assert client == b"pong:ping"


@pytest.mark.parametrize("who", ["none", "other CA", "agent cert"])
def test_tls_refuses_other_clients(pki: PKI, who: str) -> None:
    cert = {"none": None, "other CA": pki.forged, "agent cert": pki.agent}[who]
    ctx = client_context(pki.ca.cert, cert and cert.cert, cert and cert.key)
    server, client = handshake(server_context(pki), ctx)
    assert isinstance(server, ssl.SSLError), server
    assert client != b"pong:ping"


def test_tls_client_refuses_an_untrusted_agent(pki: PKI) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=pki.ca.cert.read_text())
    ctx.load_cert_chain(pki.forged_agent.cert, pki.forged_agent.key)
    _, client = handshake(ctx, client_context(pki.ca.cert, pki.client.cert, pki.client.key))
    assert isinstance(client, ssl.SSLCertVerificationError)
    _, client = handshake(server_context(pki),
                          client_context(pki.ca.cert, pki.client.cert, pki.client.key),
                          hostname="evil.example")  # not in the agent's SANs
    assert isinstance(client, ssl.SSLCertVerificationError)


# -- a real gRPC server with mutual TLS (BoringSSL) ---------------------------------------------
try:
    import grpc
except ImportError:  # pragma: no cover - grpcio is a dependency of the remote agent
    grpc = None
needs_grpc = pytest.mark.skipif(grpc is None, reason="grpcio is not installed")


@pytest.fixture(scope="module")
def grpc_server(pki: PKI):
    def whoami(request: bytes, context) -> bytes:
        who = certs.peer_identity(context.auth_context())
        if who is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no client identity")
        return who.encode() + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "cloudvmi.test.Echo", {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    ca, cert, key = certs.load_credentials(pki.ca_dir, "agent1")
    creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                        require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    assert port
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait(10)


def grpc_call(port: int, creds, target: str = "127.0.0.1") -> bytes:
    with grpc.secure_channel(f"{target}:{port}", creds) as channel:
        return channel.unary_unary("/cloudvmi.test.Echo/WhoAmI")(b"hi", timeout=10)


@needs_grpc
def test_grpc_mutual_tls(pki: PKI, grpc_server: int) -> None:
    ca, cert, key = certs.load_credentials(pki.client.cert.parent, "alice")
    creds = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
    assert grpc_call(grpc_server, creds) == b"alice:hi"
    assert grpc_call(grpc_server, creds, target="localhost") == b"alice:hi"


@needs_grpc
@pytest.mark.parametrize("who", ["none", "other CA", "agent cert", "untrusting client"])
def test_grpc_refuses(pki: PKI, grpc_server: int, who: str) -> None:
    ca = pki.ca.cert.read_bytes()
    if who == "none":
        creds = grpc.ssl_channel_credentials(ca)
    elif who == "untrusting client":  # a good client that trusts only the other CA
        creds = grpc.ssl_channel_credentials(
            pki.forged.ca.read_bytes(), private_key=pki.client.key.read_bytes(),
            certificate_chain=pki.client.cert.read_bytes())
    else:
        cert = pki.forged if who == "other CA" else pki.agent
        creds = grpc.ssl_channel_credentials(ca, private_key=cert.key.read_bytes(),
                                             certificate_chain=cert.cert.read_bytes())
    with pytest.raises(grpc.RpcError) as info:
        grpc_call(grpc_server, creds)
    # refused in the handshake: BoringSSL checks the chain and the clientAuth EKU
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_init_and_issue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = {c.name: c for c in COMMANDS}
    runner = CliRunner()
    monkeypatch.setenv("CLOUDVMI_PKI", str(tmp_path / "pki"))
    result = runner.invoke(commands["certs"], ["init", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cert"] == str(tmp_path / "pki" / "ca.pem")
    assert runner.invoke(commands["certs"], ["init"]).exit_code == 1  # exists
    result = runner.invoke(commands["certs"], ["issue", "node1", "--kind", "agent", "--host",
                                               "10.1.2.3", "--host", "node1.lan", "--json"])
    assert result.exit_code == 0, result.output
    leaf = load(tmp_path / "pki" / "node1.pem")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1", "node1.lan"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    out = tmp_path / "bob"
    result = runner.invoke(commands["certs"], ["issue", "bob", "--kind", "client",
                                               "--dir", str(tmp_path / "pki"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert certs.identity_of((out / "bob.pem").read_bytes()) == "bob"
    assert mode(out / "bob.key") == 0o600
    result = runner.invoke(commands["certs"], ["issue", "x", "--kind", "client", "--host", "h"])
    assert result.exit_code == 1

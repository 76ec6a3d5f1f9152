"""Who a client is (`identity_of`): one Common Name or nothing, never a revoked serial
(listed in the config or in a CRL that verifies against the CA), checked on fake gRPC auth
contexts and on a real mutual-TLS gRPC call."""

import datetime as dt
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudvmi.cli.remote_admin import COMMANDS
from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import certs, config
from cloudvmi.remote.identity import INSECURE_IDENTITY, Revocations, identity_of


def two_cn_client(ca_dir: Path, out: Path) -> SimpleNamespace:
    """A client certificate the CA signed with two CNs ("alice" first, "root" second)."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "root")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(exist_ok=True)
    (out / "twocn.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "twocn.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return SimpleNamespace(cert=out / "twocn.pem", key=out / "twocn.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("pki")
    ca, other = root / "ca", root / "other"
    certs.init_ca(ca)
    certs.init_ca(other, name="Other CA")
    return SimpleNamespace(
        root=root, ca=ca, other=other,
        agent=certs.issue(ca, ca, "node1", "agent", ["127.0.0.1"]),
        alice=certs.issue(ca, root / "alice", "alice", "client"),
        bob=certs.issue(ca, root / "bob", "bob", "client"),
        twocn=two_cn_client(ca, root / "twocn"))


def context(cert: Path, cns: list[bytes] | None = None) -> dict[str, list[bytes]]:
    """What gRPC's auth_context() holds for a verified peer (its first CN only)."""
    pem = cert.read_bytes()
    if cns is None:
        cns = [certs.common_names(certs.load_certificate(pem))[0].encode()]
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [pem],
            "x509_common_name": cns}


def agent_config(pki: SimpleNamespace, tmp_path: Path, extra: str = "") -> config.AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nnode = "node1"\nca = "{pki.ca / "ca.pem"}"\n'
                    f'cert = "{pki.ca / "node1.pem"}"\nkey = "{pki.ca / "node1.key"}"\n{extra}')
    return config.load(path)


def test_one_common_name(pki: SimpleNamespace, tmp_path: Path) -> None:
    cfg = agent_config(pki, tmp_path)
    assert identity_of(context(pki.alice.cert), cfg) == "alice"
    assert identity_of(context(pki.bob.cert), cfg) == "bob"


def test_two_common_names_are_refused(pki: SimpleNamespace, tmp_path: Path) -> None:
    cfg = agent_config(pki, tmp_path)
    assert identity_of(context(pki.twocn.cert, [b"alice"]), cfg) is None  # not the first
    with pytest.raises(certs.CertError, match="2 common names"):
        certs.identity_of(pki.twocn.cert.read_bytes())


def test_what_else_is_refused(pki: SimpleNamespace, tmp_path: Path) -> None:
    cfg = agent_config(pki, tmp_path)
    assert identity_of({}, cfg) is None  # no certificate
    assert identity_of({"x509_pem_cert": [b"junk"]}, cfg) is None
    assert identity_of(context(pki.agent.cert), cfg) is None  # an agent's, not a client's
    pem = pki.alice.cert.read_bytes()
    assert identity_of({"x509_pem_cert": [pem, pem]}, cfg) is None
    # gRPC and we must read the same name
    assert identity_of(context(pki.alice.cert, [b"bob"]), cfg) is None
    insecure = config.AgentConfig(node="n", insecure=True)
    assert identity_of({}, insecure) == INSECURE_IDENTITY


def test_revoked_serial_is_refused(pki: SimpleNamespace, tmp_path: Path) -> None:
    cfg = agent_config(pki, tmp_path, f'revoked = ["{pki.bob.serial:x}"]\n')
    assert identity_of(context(pki.bob.cert), cfg) is None
    assert identity_of(context(pki.alice.cert), cfg) == "alice"
    colons = ":".join(f"{pki.bob.serial:040x}"[i:i + 2] for i in range(0, 40, 2))
    cfg = agent_config(pki, tmp_path, f'revoked = ["{colons.upper()}"]\n')  # openssl's way
    assert identity_of(context(pki.bob.cert), cfg) is None


def test_crl_listed_serial_is_refused(pki: SimpleNamespace, tmp_path: Path) -> None:
    crl = certs.make_crl(pki.ca, [pki.bob.serial])
    cfg = agent_config(pki, tmp_path, f'crl = "{crl}"\n')
    assert cfg.revoked == {pki.bob.serial}
    assert identity_of(context(pki.bob.cert), cfg) is None
    assert identity_of(context(pki.alice.cert), cfg) == "alice"


def test_a_crl_changed_while_the_agent_runs_takes_effect(pki: SimpleNamespace,
                                                         tmp_path: Path) -> None:
    """The agent's Revocations re-read the CRL when its file changes: a newly revoked
    client is refused at its next call; a CRL that stops verifying refuses everyone (fail
    closed) until a good one is back."""
    crl = certs.make_crl(pki.ca, [])
    cfg = agent_config(pki, tmp_path, f'crl = "{crl}"\n')
    now = Revocations(cfg)
    assert identity_of(context(pki.bob.cert), cfg, now) == "bob"
    certs.make_crl(pki.ca, [pki.bob.serial])  # `cloudvmi certs revoke` writes the same file
    assert identity_of(context(pki.bob.cert), cfg, now) is None
    assert identity_of(context(pki.alice.cert), cfg, now) == "alice"
    good = crl.read_bytes()
    crl.write_bytes(certs.make_crl(pki.other, []).read_bytes())  # signed by another CA
    assert identity_of(context(pki.alice.cert), cfg, now) is None
    crl.write_bytes(good)
    assert identity_of(context(pki.alice.cert), cfg, now) == "alice"
    assert identity_of(context(pki.bob.cert), cfg, now) is None


def test_crl_signed_by_another_key_is_a_config_error(pki: SimpleNamespace,
                                                     tmp_path: Path) -> None:
    forged = certs.make_crl(pki.other, [pki.alice.serial])  # another CA's key
    with pytest.raises(CloudVMIError, match="crl .*not signed by the CA"):
        agent_config(pki, tmp_path, f'crl = "{forged}"\n')
    # the same issuer name, another key: still refused
    impostor = tmp_path / "impostor"
    certs.init_ca(impostor)  # "CloudVMI CA" too
    forged = certs.make_crl(impostor, [pki.alice.serial])
    with pytest.raises(CloudVMIError, match="not signed by the CA"):
        agent_config(pki, tmp_path, f'crl = "{forged}"\n')
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(CloudVMIError, match="crl"):
        agent_config(pki, tmp_path, f'crl = "{tmp_path / "bad.pem"}"\n')
    with pytest.raises(CloudVMIError, match="cannot read"):
        agent_config(pki, tmp_path, f'crl = "{tmp_path / "missing.pem"}"\n')


def test_revoke_keeps_earlier_revocations(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    certs.init_ca(ca)
    carol = certs.issue(ca, ca, "carol", "client")
    dave = certs.issue(ca, ca, "dave", "client")
    path, added = certs.revoke(ca, "carol")  # by name
    assert added == [carol.serial]
    path, added = certs.revoke(ca, f"{dave.serial:x}")  # by serial
    assert added == [dave.serial]
    assert certs.read_crl(path.read_bytes(), (ca / "ca.pem").read_bytes()) == {
        carol.serial, dave.serial}
    assert certs.revoke(ca, "carol")[1] == []
    with pytest.raises(certs.CertError, match="serial"):
        certs.revoke(ca, "nobody!")
    runner = CliRunner()
    command = {c.name: c for c in COMMANDS}["certs"]
    eve = certs.issue(ca, ca, "eve", "client")
    result = runner.invoke(command, ["revoke", "eve", "--dir", str(ca), "--json"])
    assert result.exit_code == 0, result.output
    assert f"{eve.serial:x}" in result.output


# -- through a real gRPC handshake: what auth_context() really holds ----------------------------
def test_identity_over_grpc(pki: SimpleNamespace, tmp_path: Path) -> None:
    cfg = agent_config(pki, tmp_path, f'revoked = ["{pki.bob.serial:x}"]\n')

    def whoami(request: bytes, ctx) -> bytes:
        return repr(identity_of(ctx.auth_context(), cfg)).encode()

    handler = grpc.method_handlers_generic_handler(
        "cloudvmi.test.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [(pki.agent.key.read_bytes(), pki.agent.cert.read_bytes())],
        root_certificates=(pki.ca / "ca.pem").read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        def ask(who: SimpleNamespace) -> bytes:
            channel_creds = grpc.ssl_channel_credentials(
                (pki.ca / "ca.pem").read_bytes(), private_key=who.key.read_bytes(),
                certificate_chain=who.cert.read_bytes())
            with grpc.secure_channel(f"127.0.0.1:{port}", channel_creds) as channel:
                return channel.unary_unary("/cloudvmi.test.Who/Am")(b"", timeout=10)

        assert ask(pki.alice) == b"'alice'"
        assert ask(pki.bob) == b"None"  # revoked
        assert ask(pki.twocn) == b"None"  # two CNs: gRPC lets it through, we do not
    finally:
        server.stop(None).wait(10)

"""`cloudvmi certs init|issue|revoke` and `cloudvmi audit verify`: the mutual-TLS PKI of
agents and clients, and the check of an agent's hash-chained audit log."""

import os
import sys
from pathlib import Path

import click
from rich.text import Text

from cloudvmi.cli.output import emit_json, error, say, table, wide_option
from cloudvmi.errors import CloudVMIError

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def default_pki() -> Path:
    """$CLOUDVMI_PKI, else ~/.config/cloudvmi/pki: where the CA (and by default the certs) live."""
    return Path(os.environ.get("CLOUDVMI_PKI") or "~/.config/cloudvmi/pki").expanduser()


def _fail(exc: Exception) -> None:
    error(exc)
    sys.exit(1)


dir_option = click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="The CA directory [default: $CLOUDVMI_PKI or ~/.config/cloudvmi/pki].")


@click.group()
def certs() -> None:
    """Create the CA and issue agent and client certificates for mutual TLS.

    A certificate's name is its Common Name: the identity the agent's rules authorize.
    """


@certs.command("init")
@dir_option
@click.option("--name", default="CloudVMI CA", show_default=True, help="The CA's common name.")
@click.option("--days", type=click.IntRange(min=1), default=3650, show_default=True)
@click.option("--force", is_flag=True,
              help="Replace an existing CA (every certificate it issued stops working).")
@json_option
def init(directory: Path | None, name: str, days: int, force: bool, as_json: bool) -> None:
    """Create a self-signed CA (EC P-256): ca.pem and ca.key (0600)."""
    from cloudvmi.remote.certs import init_ca

    directory = directory or default_pki()
    try:
        ca = init_ca(directory, name=name, days=days, force=force)
    except (CloudVMIError, OSError) as exc:
        _fail(exc)
    if as_json:
        return emit_json({"ok": True, "cert": str(ca.cert), "key": str(ca.key)})
    say("CA ", Text(name, style="bold"), f" created: {ca.cert} (key {ca.key}, keep it private)")


@certs.command("issue")
@click.argument("name")
@click.option("--kind", type=click.Choice(["agent", "client"]), required=True,
              help="agent: a server certificate for a node; client: an identity that calls.")
@click.option("--host", "hosts", multiple=True, metavar="H",
              help="A DNS name or IP clients dial the agent at (repeatable; agents only).")
@dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where NAME.pem, NAME.key and ca.pem go [default: the CA directory].")
@click.option("--days", type=click.IntRange(min=1), default=825, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite NAME's existing files.")
@json_option
@wide_option
def issue_cmd(name: str, kind: str, hosts: tuple[str, ...], directory: Path | None,
              out: Path | None, days: int, force: bool, as_json: bool) -> None:
    """Issue NAME's certificate, signed by the CA; NAME is its identity (the Common Name)."""
    from cloudvmi.remote.certs import issue

    directory = directory or default_pki()
    try:
        issued = issue(directory, out or directory, name, kind, list(hosts), days=days,
                       force=force)
    except (CloudVMIError, OSError) as exc:
        _fail(exc)
    if as_json:
        return emit_json({"ok": True, "identity": issued.identity, "kind": issued.kind,
                          "cert": str(issued.cert), "key": str(issued.key),
                          "ca": str(issued.ca), "serial": f"{issued.serial:x}",
                          "not_after": issued.not_after.isoformat()})
    rows = [("identity", issued.identity), ("kind", issued.kind), ("cert", issued.cert),
            ("key", issued.key), ("ca", issued.ca), ("expires", issued.not_after.date())]
    if kind == "agent":
        rows.insert(2, ("hosts", ", ".join([name, *hosts])))
    table(f"Issued {kind} certificate", ["FIELD", "VALUE"], rows)


@certs.command("revoke")
@click.argument("who", metavar="SERIAL|NAME")
@dir_option
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True,
              help="The CRL's next-update date, this many days ahead.")
@json_option
def revoke_cmd(who: str, directory: Path | None, days: int, as_json: bool) -> None:
    """Revoke a certificate (its hex serial, or every one issued to NAME): rewrites crl.pem
    in the CA directory. Copy it to each agent (`crl` in its config) and restart it."""
    from cloudvmi.remote.certs import revoke

    directory = directory or default_pki()
    try:
        crl, added = revoke(directory, who, days=days)
    except (CloudVMIError, OSError) as exc:
        _fail(exc)
    if as_json:
        return emit_json({"ok": True, "crl": str(crl), "revoked": [f"{s:x}" for s in added]})
    say(f"revoked {', '.join(f'{s:x}' for s in added) or 'nothing new'}: {crl}")


@click.group()
def audit() -> None:
    """Check an agent's append-only, hash-chained, MACed and checkpointed audit log."""


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@audit.command("verify")
@click.argument("file", type=_FILE)
@click.option("--initial-key", type=_FILE, default=None, metavar="FILE",
              help="The chain's initial key (the agent's audit_initial_key, kept by the "
                   "auditor): checks every record's MAC.")
@click.option("--cert", "certs_", type=_FILE, multiple=True, metavar="PEM",
              help="The agent's certificate or public key (repeat for a renewed key): "
                   "checks the signed checkpoints.")
@click.option("--checkpoints", type=_FILE, default=None, metavar="FILE",
              help="The agent's checkpoint sink (needs --cert): every checkpoint must match "
                   "the log, and the log must not be shorter than the last.")
@click.option("--key-file", type=_FILE, default=None, metavar="FILE",
              help="The agent's key state: it must describe the log's last record.")
@click.option("--head", default=None, metavar="HASH",
              help="A record hash kept elsewhere: it must still be in the chain "
                   "(detects deleted trailing records).")
@click.option("--records", type=click.IntRange(min=0), default=None, metavar="N",
              help="At least N records must remain (with --head: HASH is record N's).")
@json_option
def verify_cmd(file: Path, initial_key: Path | None, certs_: tuple[Path, ...],
               checkpoints: Path | None, key_file: Path | None, head: str | None,
               records: int | None, as_json: bool) -> None:
    """Verify FILE; exit 0 if intact, 1 at the first problem."""
    from cloudvmi.remote.audit import AuditError, verify
    from cloudvmi.remote.audit_key import read_initial

    try:
        key = None if initial_key is None else bytes(read_initial(initial_key))
    except AuditError as exc:
        _fail(exc)
    if checkpoints is not None and not certs_:
        _fail(CloudVMIError("--checkpoints needs --cert (the agent's certificate)"))
    result = verify(file, expect_head=head, expect_records=records, initial_key=key,
                    public_key=list(certs_) or None, checkpoints=checkpoints,
                    key_file=key_file)
    if as_json:
        emit_json(result)
    elif result.ok:
        say(Text("intact", style="green"), f": {file}: {result.records} records, "
            f"head {result.head}")
        if result.authenticated:
            say("every record's MAC holds under the initial key")
        if checkpoints is not None:
            say(f"{result.checkpoints} signed checkpoints match, up to record "
                f"{result.signed}; {result.records - result.signed} after it")
        if result.open_intents:
            say(Text(f"{result.open_intents} started actions have no recorded outcome",
                     style="yellow"))
        if key is None and checkpoints is None and head is None and records is None:
            say(Text("chain only: a log rewritten whole or cut at the end passes; "
                     "use --initial-key, or --cert with --checkpoints", style="dim"))
    else:
        where = f"line {result.line}: " if result.line else ""
        say(Text("broken", style="red"), f": {file}: {where}{result.error} "
            f"({result.records} intact records before it)", err=True)
    sys.exit(0 if result.ok else 1)


COMMANDS = [certs, audit]

"""`cloudvmi agent serve --config FILE`: the per-node agent."""

import sys

import click

from cloudvmi.cli.output import error, say
from cloudvmi.errors import CloudVMIError


@click.group()
def agent() -> None:
    """The per-node agent that serves this host's VMs to remote clients."""


@agent.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True),
              help="The agent's TOML config.")
def serve(config_path: str) -> None:
    """Serve until SIGTERM/SIGINT (then finish calls in flight and detach from the VMs)."""
    from cloudvmi.remote import tlslog

    tlslog.enable_before_grpc()
    from cloudvmi.remote import agent as agent_mod
    from cloudvmi.remote import config

    try:
        cfg = config.load(config_path)
        agent_mod.serve(cfg, log_tls_denials=True, ready=lambda port: say(
            f"agent {cfg.node} listening on {cfg.listen.rsplit(':', 1)[0]}:{port} "
            f"({'PLAINTEXT' if cfg.insecure else 'mutual TLS'})"))
    except CloudVMIError as exc:
        error(exc)
        sys.exit(1)

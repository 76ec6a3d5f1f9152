"""`cloudvmi guard once|watch POLICY [VM...] [--all]`: a process and network policy, checked
from outside and enforced."""

import sys
import threading

import click

from cloudvmi.cli.complete import VM_NAME
from cloudvmi.cli.output import emit_json, table, wide_option
from cloudvmi.cli.progress import Progress
from cloudvmi.cli.views import run_or_exit

_targets = click.argument("vms", nargs=-1, **VM_NAME)
_every = click.option("--all", "every", is_flag=True, help="Every VM of every inventory node.")
_events = click.option("--events", "events_to", metavar="FILE|-",
                       help="Write one JSON line per finding or action (- for stdout).")


@click.group()
def guard() -> None:
    """Enforce a process and network policy (TOML) on VMs, from outside."""


@guard.command()
@click.argument("policy", type=click.Path(exists=True, dir_okay=False))
@_targets
@_every
@_events
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
@wide_option
def once(policy: str, vms: tuple[str, ...], every: bool, events_to: str | None,
         as_json: bool) -> None:
    """Check each VM once and act on what matches."""
    from cloudvmi.apps.events import stdout_or
    from cloudvmi.apps.guard import Guard, Policy
    from cloudvmi.apps.targets import resolve

    def go():
        rules, targets = Policy.load(policy), resolve(list(vms), every)
        events = stdout_or(events_to)
        try:
            with Progress("guard", hide=as_json or events_to == "-") as progress:
                return Guard(rules, events).once(targets, progress.report)
        finally:
            events.close()

    happened = run_or_exit(go)
    if as_json:
        emit_json(happened)
    elif events_to != "-":
        _show(happened)
    sys.exit(1 if any(e.kind == "error" for e in happened) else 0)


@guard.command()
@click.argument("policy", type=click.Path(exists=True, dir_okay=False))
@_targets
@_every
@_events
@click.option("--interval", type=float, default=5.0, show_default=True,
              help="Seconds between two checks of each VM.")
@click.option("--rounds", type=int, help="Stop after this many rounds (default: never).")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on this port.")
@click.option("--metrics-address", default="127.0.0.1", show_default=True)
def watch(policy: str, vms: tuple[str, ...], every: bool, events_to: str | None,
          interval: float, rounds: int | None, metrics_port: int | None,
          metrics_address: str) -> None:
    """Check every VM each INTERVAL until stopped (Ctrl-C); events as JSON lines."""
    from cloudvmi.apps.events import Metrics, stdout_or
    from cloudvmi.apps.guard import Guard, Policy
    from cloudvmi.apps.targets import resolve

    def go():
        metrics = Metrics("guard")
        if metrics_port:
            metrics.serve(metrics_port, metrics_address)
        events = stdout_or(events_to or "-")
        try:
            Guard(Policy.load(policy), events, metrics).watch(
                resolve(list(vms), every), interval, rounds, threading.Event())
        except KeyboardInterrupt:
            pass
        finally:
            events.close()

    run_or_exit(go)


def _show(happened) -> None:
    table("guard", ["VM", "KIND", "RULE", "PID", "COMMAND", "ACTION"], (
        (e.vm, e.kind, e.rule, e.detail.get("pid", ""), e.detail.get("comm", ""),
         e.detail.get("action", e.detail.get("error", ""))) for e in happened))

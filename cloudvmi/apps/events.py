"""What applications tell the world: one JSON line per finding or action (to stdout or a
file), and Prometheus metrics (checks, findings, actions, errors, latencies)."""

import datetime as dt
import json
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass
class Event:
    app: str  # guard, hunt, fim, enforce
    vm: str
    kind: str  # finding, action, change, error, ...
    rule: str  # the rule, check or item that produced it
    detail: dict[str, Any] = field(default_factory=dict)
    node: str = ""
    time: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(
        timespec="milliseconds"))


class Events:
    """Writes events as JSON lines (guest strings are data: JSON escapes them)."""

    def __init__(self, out: TextIO | Path | str | None = None) -> None:
        self._lock = threading.Lock()
        self._own = out is not None and not hasattr(out, "write")
        self.out: TextIO | None = (open(out, "a", encoding="utf-8") if self._own  # noqa: SIM115
                                   else out)
        self.emitted: list[Event] = []

    def emit(self, event: Event) -> Event:
        with self._lock:
            self.emitted.append(event)
            if self.out is not None:
                self.out.write(json.dumps(asdict(event), ensure_ascii=True) + "\n")
                self.out.flush()
        return event

    def close(self) -> None:
        if self._own and self.out is not None:
            self.out.close()


class Metrics:
    """An application's Prometheus metrics, in a registry of its own; `serve(port)` exposes
    them on loopback (or the address given)."""

    def __init__(self, app: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["vm"]
        self.vms = Gauge(f"cloudvmi_{app}_vms", "VMs watched", registry=self.registry)
        self.checks = Counter(f"cloudvmi_{app}_checks", "Checks of a VM", labels,
                              registry=self.registry)
        self.findings = Counter(f"cloudvmi_{app}_findings", "Findings", labels + ["rule"],
                                registry=self.registry)
        self.actions = Counter(f"cloudvmi_{app}_actions", "Actions taken",
                               labels + ["action"], registry=self.registry)
        self.errors = Counter(f"cloudvmi_{app}_errors", "Checks or actions that failed",
                              labels, registry=self.registry)
        self.latency = Histogram(f"cloudvmi_{app}_check_seconds", "Time to check one VM",
                                 labels, registry=self.registry)

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        start_http_server(port, addr=address, registry=self.registry)


def stdout_or(path: str | None) -> Events:
    """Events to PATH, or to stdout when PATH is "-"; none written when PATH is None."""
    if path is None:
        return Events()
    return Events(sys.stdout if path == "-" else path)

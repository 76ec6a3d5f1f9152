"""Denials (and reads) aggregated per window, so a flood costs a few records rather than one
fsync each.

The first denial of a kind (same who, source host, op, reason and result) is recorded at once,
with
everything it carried. Further ones within WINDOW seconds are only counted, with a few of
their VM names and peers as samples; when the window ends (or the log closes) one record
says how many there were. At most MAX_KINDS kinds are tracked at a time; past that, new
kinds share one overflow window, so even a flood from many addresses stays O(1) records per
window.
"""

import datetime as dt
from dataclasses import dataclass, field

from cloudvmi.remote.audit_record import NAME_MAX, bound, peer_host

MAX_KINDS = 256
SAMPLES = 8
OVERFLOW = ("*", "*", "*", "*", "*")

Kind = tuple[str, str | None, str, str, str]  # who, source host, op, reason, result


@dataclass
class Window:
    kind: Kind
    ends: float  # monotonic time
    count: int = 0  # denials after the first, not yet recorded
    first: str = ""  # wall time of the first counted denial
    last: str = ""
    vms: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    more_vms: bool = False

    def add(self, vm: str, peer: str | None, when: str) -> None:
        self.count += 1
        self.first = self.first or when
        self.last = when
        vm = bound(vm, NAME_MAX)
        if vm not in self.vms:
            if len(self.vms) < SAMPLES:
                self.vms.append(vm)
            else:
                self.more_vms = True
        if peer is not None and len(self.peers) < SAMPLES:
            peer = bound(peer, NAME_MAX)
            if peer not in self.peers:
                self.peers.append(peer)

    def record(self, window: float) -> dict:
        """The keyword arguments of the aggregate record."""
        who, host, op, reason, result = self.kind
        vm = self.vms[0] if len(self.vms) == 1 and not self.more_vms else "*"
        return {"who": who, "peer": host, "vm": vm, "op": op,
                "result": "denied" if result == "*" else result,
                "detail": reason, "count": self.count,
                "args": {"aggregated": self.count, "window_s": window, "first": self.first,
                         "last": self.last, "vms": self.vms, "more_vms": self.more_vms,
                         "peers": self.peers}}


class DenialAggregator:
    """Decides which denials are written now and collects the rest (not thread-safe: the
    audit log calls it under its lock)."""

    def __init__(self, window: float, max_kinds: int = MAX_KINDS) -> None:
        self.window = window
        self.max_kinds = max_kinds
        self._open: dict[Kind, Window] = {}
        self._ready: list[Window] = []  # ended with denials to record, replaced by a new one

    def offer(self, who: str, peer: str | None, op: str, vm: str, reason: str,
              now: float, result: str = "denied") -> bool:
        """True if this denial (or read: RESULT) is to be recorded now (first of its kind in
        a window)."""
        host = peer_host(peer)
        kind: Kind = (bound(who, NAME_MAX), None if host is None else bound(host, NAME_MAX),
                      bound(op, NAME_MAX), bound(reason, NAME_MAX), result)
        if kind not in self._open and len(self._open) >= self.max_kinds:
            self._ready.extend(self.due(now))  # ended windows make room first
            if len(self._open) >= self.max_kinds:
                kind = OVERFLOW
        window = self._open.get(kind)
        if window is not None and now < window.ends:
            window.add(vm, peer, dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"))
            return False
        if window is not None and window.count:
            self._ready.append(window)
        self._open[kind] = Window(kind, now + self.window)
        return True

    def due(self, now: float) -> list[Window]:
        """Windows that ended with denials still to record (ended empty ones are dropped)."""
        ended = [w for w in self._open.values() if w.ends <= now]
        for w in ended:
            del self._open[w.kind]
        ready, self._ready = self._ready, []
        return ready + [w for w in ended if w.count]

    def drain(self) -> list[Window]:
        """Every window with denials to record, now (at close)."""
        windows = self._ready + [w for w in self._open.values() if w.count]
        self.clear()
        return windows

    def next_deadline(self) -> float | None:
        if self._ready:
            return 0.0
        return min((w.ends for w in self._open.values()), default=None)

    def clear(self) -> None:
        self._open.clear()
        self._ready.clear()

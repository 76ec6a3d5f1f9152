"""Each client identity's share of the agent: calls and payload bytes in flight.

The agent has a fixed pool of workers; one client that opens many calls and stalls them
(an upload that never finishes) would otherwise hold every worker, and other clients' calls
would wait. A call over its identity's share is refused at once (RESOURCE_EXHAUSTED), before
its payload is read.
"""

import threading
from dataclasses import dataclass


class LimitExceeded(Exception):
    """This identity has as many calls, or as many payload bytes, in flight as it may."""


@dataclass
class _Use:
    calls: int = 0
    bytes: int = 0


class Slot:
    """One admitted call; released once (by `with`, or explicitly for a streaming call)."""

    def __init__(self, limits: "CallLimits", who: str, size: int) -> None:
        self._limits, self._who, self._size = limits, who, size
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limits._leave(self._who, self._size)

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CallLimits:
    def __init__(self, calls: int, payload_bytes: int) -> None:
        self.calls = calls
        self.payload_bytes = payload_bytes
        self._use: dict[str, _Use] = {}
        self._lock = threading.Lock()

    def enter(self, who: str, size: int) -> Slot:
        """Admit a call of WHO announcing SIZE payload bytes, or raise LimitExceeded."""
        with self._lock:
            use = self._use.setdefault(who, _Use())
            if use.calls >= self.calls:
                raise LimitExceeded(f"{who} already has {use.calls} calls in flight (the most "
                                    "one client may have)")
            if use.bytes + size > self.payload_bytes:
                raise LimitExceeded(f"{who} would have {use.bytes + size} payload bytes in "
                                    f"flight, over {self.payload_bytes}")
            use.calls += 1
            use.bytes += size
        return Slot(self, who, size)

    def _leave(self, who: str, size: int) -> None:
        with self._lock:
            use = self._use[who]
            use.calls -= 1
            use.bytes -= size
            if not use.calls:
                del self._use[who]  # the table holds only identities with calls in flight

    def in_flight(self, who: str) -> tuple[int, int]:
        with self._lock:
            use = self._use.get(who, _Use())
            return use.calls, use.bytes

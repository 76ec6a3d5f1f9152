"""The agent's open streams of reads: each holds a worker while it is open, so a client may
keep only a few, an idle one is ended after a few seconds and any one after a lifetime. One
watchdog thread for all of them; a read costs the stream a clock reading, not a timer.

A stream holds none of its client's call slots (each read in it takes one while it runs, as
a unary Read does), so reads kept open never starve the same client's other calls."""

import itertools
import threading
import time
from dataclasses import dataclass, field

from cloudvmi.remote.limits import LimitExceeded

CHECK_EVERY = 0.5  # seconds between the watchdog's looks


@dataclass
class _Open:
    who: str
    cancel: object  # the stream's context.cancel
    opened: float = field(default_factory=time.monotonic)
    last: float = field(default_factory=time.monotonic)
    busy: bool = False


class StreamWatch:
    def __init__(self, per_identity: int, idle: float, lifetime: float) -> None:
        self.per_identity = per_identity
        self.idle = idle
        self.lifetime = lifetime
        self._open: dict[int, _Open] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def open(self, who: str, cancel) -> "Stream":
        """A stream of WHO's, ended by CANCEL() when idle or old; LimitExceeded when WHO
        already has as many open as it may."""
        with self._lock:
            if sum(o.who == who for o in self._open.values()) >= self.per_identity:
                raise LimitExceeded(f"{who} already has {self.per_identity} streams of reads "
                                    "open (the most one client may have)")
            key = next(self._ids)
            self._open[key] = _Open(who, cancel)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, daemon=True,
                                                name="cloudvmi-streams")
                self._thread.start()
        return Stream(self, key)

    def _close(self, key: int) -> None:
        with self._lock:
            self._open.pop(key, None)

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_EVERY)
            now = time.monotonic()
            with self._lock:
                due = [o for o in self._open.values() if now - o.opened > self.lifetime
                       or (not o.busy and now - o.last > self.idle)]
            for o in due:
                o.cancel()


class Stream:
    """One open stream: `reading()` around each read keeps it from counting as idle."""

    def __init__(self, watch: StreamWatch, key: int) -> None:
        self._watch, self._key = watch, key
        self._state = watch._open[key]

    def reading(self) -> "Stream":
        self._state.busy = True
        return self

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self._state.busy = False
        self._state.last = time.monotonic()

    def close(self) -> None:
        self._watch._close(self._key)

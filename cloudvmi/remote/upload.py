"""A call's payload as a ByteStream read from the network while the guest is written, so the
agent holds a bounded window of an upload, never the whole of it.

A thread reads the client's messages into a small queue; the writer takes them as it goes.
The queue overlaps the network with the guest work, and it is the only buffer: when it is
full the thread stops reading and gRPC's flow control holds the client back. A client that
stalls longer than the idle limit has its call cancelled; the writer sees the stream end
early and stops (the guest file keeps what was written, the audit outcome says so).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterator

from cloudvmi.stream import ByteStream, StreamError

QUEUED_MESSAGES = 4  # messages read ahead of the writer
_END = object()


class Upload:
    """SIZE payload bytes: FIRST (from the call's first message), then the data of the
    messages in REQUESTS. CANCEL ends the call (when the client stalls over IDLE seconds)."""

    def __init__(self, size: int, first: bytes, requests: Iterator, idle: float,
                 cancel: Callable[[], object]) -> None:
        self.size = size
        self._first = first
        self._requests = requests
        self._idle = idle
        self._cancel = cancel
        self._queue: queue.Queue = queue.Queue(QUEUED_MESSAGES)
        self._closed = threading.Event()
        self._digest = hashlib.sha256()
        self.stream = ByteStream(size, self._pieces())
        self._reader = threading.Thread(target=self._read, name="cloudvmi-upload", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for message in self._requests:
                if not self._put(message.data):
                    return
        except Exception:  # noqa: BLE001 - the call ended (cancelled, client gone)
            pass
        self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _pieces(self) -> Iterator[bytes]:
        self._digest.update(self._first)
        yield self._first
        while True:
            try:
                item = self._queue.get(timeout=self._idle)
            except queue.Empty:
                self._cancel()
                raise StreamError(f"the upload stalled for {self._idle:g} s") from None
            if item is _END:
                return
            self._digest.update(item)
            yield item

    def received(self) -> dict:
        """What the guest was given, for the audit outcome: length and digest."""
        return {"$bytes": {"len": self.stream.consumed,
                           "sha256": self._digest.hexdigest()
                           if self.stream.consumed == self.size else None}}

    def close(self) -> None:
        """Stop reading (the call is over, whatever happened). The thread ends at its next
        message, or when the call ends and gRPC ends its iterator."""
        self._closed.set()

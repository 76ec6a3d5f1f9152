"""One stream of reads kept open to an agent (its Reads RPC): a small read then costs a
message each way instead of a whole call's setup, and its latency has a much shorter tail.
Used by one thread at a time; a read that finds it busy, closed or gone is asked the usual
way (a unary Read), which reads allow: asking again does nothing twice."""

import json
import queue
import threading
import time

import grpc

from cloudvmi.remote.proto import cloudvmi_pb2 as pb

REOPEN_AFTER = 20.0  # seconds: an older stream is replaced (the agent ends one at 30 s)
IDLE_AFTER = 3.0  # ... and one unused this long (the agent ends an idle one at 5 s)
ERROR = "__error__"  # the key of a read the agent refused or failed, in the stream's answer


class ReadStream:
    def __init__(self, stub, timeout: float) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        # The deadline leaves every read sent while the stream is fresh its full TIMEOUT.
        self._replies = stub.Reads(iter(self._requests.get, None),
                                   timeout=REOPEN_AFTER + timeout)
        self._opened = self._last = time.monotonic()
        self._lock = threading.Lock()
        self.broken = False  # the stream ended: a new one is needed
        self.unsupported = False  # the agent has no Reads (older): never ask for one again
        self.refused = False  # the agent has as many of this client's streams open as it may

    @property
    def usable(self) -> bool:
        now = time.monotonic()
        return not self.broken and now - self._opened < REOPEN_AFTER \
            and now - self._last < IDLE_AFTER

    def ask(self, call: pb.Call) -> tuple[pb.Reply | None, dict | None]:
        """(reply, None), (None, the refusal's status info), or (None, None) when the stream
        cannot answer now (busy with another thread's read, or gone)."""
        if not self._lock.acquire(blocking=False):
            return None, None
        try:
            if not self.usable:
                return None, None
            self._requests.put(call)
            try:
                reply = next(self._replies)
                self._last = time.monotonic()
            except (grpc.RpcError, StopIteration) as exc:
                self.broken = True
                code = exc.code() if isinstance(exc, grpc.RpcError) else None
                self.unsupported = code == grpc.StatusCode.UNIMPLEMENTED
                self.refused = code == grpc.StatusCode.RESOURCE_EXHAUSTED
                return None, None
        finally:
            self._lock.release()
        if reply.json.startswith('{"' + ERROR):
            return None, json.loads(reply.json)[ERROR]
        return reply, None

    def close(self) -> None:
        self.broken = True
        self._requests.put(None)
        self._replies.cancel()

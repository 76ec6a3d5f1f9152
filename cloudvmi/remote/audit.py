"""The agent's append-only audit log: hash-chained JSON lines, each MACed with a key that
moves forward, plus checkpoints signed with the agent's private key in a sink of their own.

What is on disk (record format in audit_record):

- the log (`audit_log`): one canonical JSON record per line. `prev` is the SHA-256 of the
  previous line, `hash` the SHA-256 of the record, `mac` an HMAC-SHA256 of the record with
  K_seq, where K_1 is random and K_(i+1) = SHA-256(K_i) (audit_key);
- the key state (`audit_key`, 0600): the last seq, head and line digest the agent wrote,
  and K_(seq+1) only. Each append overwrites the previous key (two slots, fsync'd);
- the initial key (`audit_initial_key`): K_1, written once when a chain starts, for the
  auditor. It must be moved off the host; while it stays, it is as good as every key;
- the checkpoint sink (`audit_checkpoints`): every `checkpoint_every` records, after
  `checkpoint_seconds` with records pending, and at close, a line (chain, seq, head, time)
  signed with the agent's TLS key (audit_checkpoint). `chain` commits to K_1.

Threat model. Someone who can write the log file, but not the key state, the sink or the
agent's key, can edit, reorder, delete, insert or append lines and recompute every SHA-256,
but cannot compute a MAC or a signature: `verify` with K_1 finds the first record whose MAC
fails; with the agent's certificate and the sink, any record up to the last checkpoint
that changed, and a log shorter than that checkpoint. The agent itself re-reads the key
state before each append and at start, and refuses (AuditError) a log that is shorter than,
diverges from, or runs past what it wrote. Records after the last checkpoint are covered
publicly by the chain only: checking them needs K_1 (or the key state, by the agent).

Someone with root on the agent host at time T holds K_(n+1), the agent's TLS key, the sink
and the log. From then on they can write anything. Before T: they cannot forge, edit or
reorder records 1..n undetected by a holder of K_1, because K_1..K_n are erased and the key
chain is one-way; continuing a truncated log needs a key they do not have, so they can only
cut it and stop, which the key state (K_(n+1) is provably H^n(K_1)) and every checkpoint
copied off the host before T expose. Their signing key can sign new checkpoints for a
rewritten history, so a sink only protects the past against root once it is off the host
(shipped, append-only, another machine); the MAC chain protects it regardless, as long as
K_1 is not on the host. Neither protects records that were never written: an action is
only covered once its intent is on disk, which is why `intent` comes before acting.

Bounds: names and details are cut (first bytes, length, digest), arguments are kept in
clear but bounded (`redact_args` keeps only their digest), so no record exceeds
RECORD_MAX. Denials are aggregated per window (audit_denials) and carry the peer address.
"""

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudvmi.remote.audit_checkpoint import CheckpointSink, Signer, check_signature
from cloudvmi.remote.audit_checkpoint import make as make_checkpoint
from cloudvmi.remote.audit_denials import DenialAggregator
from cloudvmi.remote.audit_key import KeyFile, KeyState, genesis, mac, new_key, wipe, write_initial
from cloudvmi.remote.audit_record import (
    DETAIL_MAX,
    FIELDS,
    GENESIS,
    NAME_MAX,
    OUTCOMES,
    RECORD_MAX,
    RESULTS,
    VERSION,
    AuditError,
    args_digest,
    body_of,
    bound,
    canonical,
    clear_args,
    parse,
    sha256,
)
from cloudvmi.remote.audit_verify import VerifyResult, verify

__all__ = ["AuditError", "AuditLog", "FIELDS", "GENESIS", "Intent", "RESULTS", "VerifyResult",
           "args_digest", "canonical", "default_key_file", "sha256", "verify"]

_TAIL_CHUNK = 1 << 16
_LOGS: "weakref.WeakSet[AuditLog]" = weakref.WeakSet()
_log = logging.getLogger(__name__)


def _after_fork() -> None:
    """A lock held by another thread at fork() would stay held in the child forever."""
    for log in list(_LOGS):
        log._forked()


os.register_at_fork(after_in_child=_after_fork)


def default_key_file(log_path: Path | str) -> Path:
    return Path(f"{log_path}.key")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _mac_body(record: dict) -> bytes:
    return canonical(body_of(record, "mac", "hash"))


def _check_types(who: str, vm: str, op: str, detail: str, peer: str | None) -> None:
    for label, value in (("who", who), ("vm", vm), ("op", op), ("detail", detail)):
        if not isinstance(value, str):
            raise TypeError(f"{label} must be a string, not {type(value).__name__}")
    if peer is not None and not isinstance(peer, str):
        raise TypeError(f"peer must be a string, not {type(peer).__name__}")


@dataclass(frozen=True)
class Intent:
    """The token of an action recorded as started: pass it to `AuditLog.outcome`."""
    seq: int
    hash: str
    who: str
    vm: str
    op: str
    peer: str | None


class AuditLog:
    """Appends records to the chain at PATH, safely across threads and processes.

    Appends take a thread lock and an exclusive flock on the log, re-read the tail and the
    key state, write the line with one O_APPEND write, fsync it, then move the key forward.
    Anything that makes the append unsafe raises AuditError, and the caller must then not
    act: a corrupt last line, a file that shrank, was replaced or grew behind the agent's
    back, a lost key state, a failed write (undone).
    """

    def __init__(self, path: Path | str, mode: int = 0o600, *,
                 key_file: Path | str | None = None,
                 initial_key_file: Path | str | None = None,
                 checkpoints: Path | str | None = None,
                 signer: Signer | Path | str | None = None,
                 checkpoint_every: int = 100, checkpoint_seconds: float = 60.0,
                 redact_args: bool = False, denial_window: float = 10.0) -> None:
        if (checkpoints is None) != (signer is None):
            raise ValueError("checkpoints and signer go together")
        self.path = Path(path)
        self.keys = KeyFile(default_key_file(self.path) if key_file is None else key_file)
        self._initial_file = None if initial_key_file is None else Path(initial_key_file)
        self._sink = None if checkpoints is None else CheckpointSink(checkpoints)
        self._signer = (signer if isinstance(signer, Signer) or signer is None
                        else Signer.from_file(signer))
        self._every = max(1, checkpoint_every)
        self._seconds = checkpoint_seconds
        self.redact_args = redact_args
        self._denials = DenialAggregator(denial_window) if denial_window > 0 else None
        self._mode = mode
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._fd = -1
        self._pid = 0
        self._end = 0  # file size after the last line we know of
        self._seq = 0
        self._prev = GENESIS  # sha256 of the last line
        self._head = GENESIS  # "hash" of the last record
        self._last: dict | None = None  # the last record
        self._chain = ""
        self._cp_seq = -1  # seq of the last checkpoint we know of
        self._cp_due: float | None = None  # monotonic time a time-based checkpoint is due
        self._intents: set[int] = set()
        self._ticker: threading.Thread | None = None
        with self._lock:
            self._open()
        _LOGS.add(self)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ticker = None
        self._cp_due = None
        if self._denials is not None:
            self._denials.clear()  # the parent records its own windows

    # -- file handling --------------------------------------------------------------------
    def _open(self) -> None:
        """Open (or reopen after fork: flock is per open file, shared with a forked parent)
        and check the log against the key state and the last checkpoint."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         self._mode)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._load_tail(fd)
                fresh = self._seq == 0 and not self.keys.path.exists()  # a new chain
                if fresh and self._sink is not None:
                    self._sink.repair()
                    if self._sink.last() is not None:
                        raise AuditError(f"the checkpoint sink {self._sink.path} holds another "
                                         "chain's checkpoints: archive it with its log "
                                         "before starting a new one")
                state = self._state()
                try:
                    self._chain = state.chain
                    self._open_sink(state)
                finally:
                    wipe(state.key)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()

    def _load_tail(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size == 0:
            self._end, self._seq, self._prev, self._head, self._last = 0, 0, GENESIS, \
                GENESIS, None
            return
        if os.pread(fd, 1, size - 1) != b"\n":
            raise AuditError(f"{self.path}: the last line is incomplete (torn write?); "
                             "run `cloudvmi audit verify` and repair it by hand")
        start, data = size - 1, b""
        while start > 0 and b"\n" not in data:
            n = min(_TAIL_CHUNK, start)
            start -= n
            data = os.pread(fd, n, start) + data
        line = data[data.rfind(b"\n") + 1:] if b"\n" in data else data
        record, problem = parse(line)
        if record is None:
            raise AuditError(f"{self.path}: the last line is corrupt ({problem}); "
                             "refusing to continue the chain from it")
        self._end, self._seq, self._last = size, record["seq"], record
        self._prev, self._head = sha256(line), record["hash"]

    def _sync(self) -> None:
        """Under the flock: make sure our idea of the tail matches the file's."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError as exc:
            raise AuditError(f"{self.path} was deleted or moved while open") from exc
        st = os.fstat(self._fd)
        if (st.st_dev, st.st_ino) != (on_disk.st_dev, on_disk.st_ino):
            raise AuditError(f"{self.path} was replaced while open")
        if st.st_size < self._end:
            raise AuditError(f"{self.path} shrank from {self._end} to {st.st_size} bytes "
                             "while open: it was truncated")
        if st.st_size != self._end:
            self._load_tail(self._fd)

    def _state(self) -> KeyState:
        """Under the flock, after the tail is loaded: the key state, which must describe the
        log's last record. A log one record ahead whose last MAC holds under the state's key
        is the agent's own append interrupted before the key moved: the key moves now."""
        state = self.keys.load()
        if state is None:
            if self._seq:
                raise AuditError(f"{self.path} holds {self._seq} records but its key state "
                                 f"{self.keys.path} is missing: the chain's key is lost, "
                                 "refusing to continue it")
            return self._new_chain()
        if (state.seq, state.head, state.line) == (self._seq, self._head, self._prev):
            return state
        last = self._last
        if (self._seq == state.seq + 1 and last is not None and last["prev"] == state.line
                and last["mac"] == mac(state.key, _mac_body(last))):
            new = state.advanced(self._head, self._prev)
            self.keys.store(state, new)
            return new
        wipe(state.key)
        if self._seq < state.seq:
            raise AuditError(f"{self.path} holds {self._seq} records, fewer than the "
                             f"{state.seq} the agent wrote: it was truncated or replaced; "
                             "refusing to continue it")
        if self._seq == state.seq:
            raise AuditError(f"{self.path}: record {self._seq} is not the one the agent "
                             "wrote: the log was rewritten; refusing to continue it")
        raise AuditError(f"{self.path} holds {self._seq} records, more than the {state.seq} "
                         "the agent wrote: records were appended without the key; refusing "
                         "to continue it")

    def _new_chain(self) -> KeyState:
        initial = new_key()
        try:
            if self._initial_file is not None:
                write_initial(self._initial_file, initial)
            state = genesis(initial)
            self.keys.create(state)
        finally:
            wipe(initial)
        return state

    def _open_sink(self, state: KeyState) -> None:
        """Check the last checkpoint against the state: refuse a log shorter than it or
        diverging from it, or a sink that belongs to another chain."""
        if self._sink is None:
            return
        self._sink.repair()
        last = self._sink.last()
        if last is None:
            self._checkpoint(state)  # a new chain, or a sink configured for an existing one
            return
        if last["key"] == self._signer.key_id:
            problem = check_signature(last, {self._signer.key_id: self._signer.public_key})
            if problem:
                raise AuditError(f"{self._sink.path}: the last checkpoint: {problem}")
        if last["chain"] != state.chain:
            raise AuditError(f"the checkpoint sink {self._sink.path} belongs to another chain "
                             f"than {self.path}: the log or its key state was replaced")
        if last["seq"] > state.seq:
            raise AuditError(f"{self.path} holds {state.seq} records, fewer than the "
                             f"{last['seq']} of the last checkpoint: it was truncated; "
                             "refusing to continue it")
        if last["seq"] == state.seq and last["head"] != state.head:
            raise AuditError(f"{self.path}: record {state.seq} differs from the last "
                             "checkpoint: the log was rewritten; refusing to continue it")
        self._cp_seq = last["seq"]
        if state.seq > self._cp_seq:
            self._checkpoint(state)

    def _checkpoint(self, state: KeyState) -> None:
        """Under the flock: sign (chain, seq, head) into the sink."""
        assert self._sink is not None and self._signer is not None
        self._sink.append(make_checkpoint(self._signer, state.chain, state.seq, state.head))
        self._cp_seq, self._cp_due = state.seq, None

    # -- appending --------------------------------------------------------------------------
    def _fields(self, who: str, vm: str, op: str, args: Any, result: str, detail: str,
                peer: str | None, count: int = 1, ref: int | None = None,
                cut: bool = True) -> dict:
        """A record's own fields, bounded (CUT false: they were bounded already)."""
        _check_types(who, vm, op, detail, peer)
        digest = args_digest(args)
        if cut:
            who, vm, op = bound(who, NAME_MAX), bound(vm, NAME_MAX), bound(op, NAME_MAX)
            peer = None if peer is None else bound(peer, NAME_MAX)
        return {"who": who, "vm": vm, "op": op, "peer": peer, "result": result,
                "detail": bound(detail, DETAIL_MAX), "args_sha256": digest,
                "args": None if self.redact_args else clear_args(args), "count": count,
                "ref": ref}

    def _commit(self, fields: dict) -> dict:
        """Under the thread lock: append one record and move the key forward."""
        if self._fd < 0:
            raise AuditError(f"{self.path}: the audit log is closed")
        if self._pid != os.getpid():  # forked child: get our own open file (and flock)
            inherited = self._fd
            self._open()
            os.close(inherited)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._sync()
            state = self._state()
            try:
                record = {"v": VERSION, **fields, "seq": state.seq + 1, "time": _now(),
                          "prev": state.line}
                record["mac"] = mac(state.key, canonical(record))
                record["hash"] = sha256(canonical(record))
                line = canonical(record)
                if len(line) >= RECORD_MAX:
                    raise AuditError(f"a record of {len(line)} bytes is over the bound")
                self._append(line + b"\n")
                self._end += len(line) + 1
                self._seq, self._prev, self._head = record["seq"], sha256(line), record["hash"]
                self._last = record
                # The record is on disk and stays: if the key cannot move now, the log is one
                # record ahead of the state, which the next append (or start) proves and heals.
                new = state.advanced(record["hash"], self._prev)
                try:
                    self.keys.store(state, new)
                finally:
                    wipe(new.key)
                self._after_append(new)
            finally:
                wipe(state.key)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return record

    def _append(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):  # undo a torn line: keep the chain appendable
                os.ftruncate(self._fd, self._end)
            raise AuditError(f"{self.path}: cannot append: {exc}") from exc

    def _after_append(self, state: KeyState) -> None:
        if self._sink is None:
            return
        if state.seq - self._cp_seq >= self._every:
            self._checkpoint(state)
        elif self._cp_due is None:
            self._cp_due = time.monotonic() + self._seconds
            self._wake()

    # -- the ticker: ends of denial windows and time-based checkpoints -----------------------
    def _wake(self) -> None:
        """Under the lock: make sure a ticker thread will act at the next deadline."""
        if self._ticker is None or not self._ticker.is_alive():
            self._ticker = threading.Thread(target=self._tick_loop, daemon=True,
                                            name=f"cloudvmi-audit-{self.path.name}")
            self._ticker.start()
        else:
            self._cond.notify_all()

    def _deadline(self) -> float | None:
        times = [t for t in (self._cp_due,
                             self._denials.next_deadline() if self._denials else None)
                 if t is not None]
        return min(times, default=None)

    def _tick_loop(self) -> None:
        with self._cond:
            while self._fd >= 0 and self._ticker is threading.current_thread():
                deadline = self._deadline()
                if deadline is None:
                    self._ticker = None
                    return
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                try:
                    self._tick()
                except (AuditError, OSError) as exc:
                    _log.error("audit log %s: %s", self.path, exc)
                    self._cp_due = None  # do not spin on a broken log

    def _tick(self) -> None:
        """Under the lock: record ended denial windows, and a checkpoint if one is due."""
        self._record_ended_windows()
        if self._cp_due is not None and time.monotonic() >= self._cp_due:
            self._checkpoint_now()

    def _checkpoint_now(self) -> None:
        if self._pid != os.getpid():
            self._cp_due = None
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._sync()
            state = self._state()
            try:
                if state.seq > self._cp_seq:
                    self._checkpoint(state)
                self._cp_due = None
            finally:
                wipe(state.key)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- API ------------------------------------------------------------------------------
    @property
    def head(self) -> str:
        """The last record's hash (64 zeros when empty), as a checkpoint signs it."""
        return self._head

    @property
    def records(self) -> int:
        """The last record's seq, i.e. how many records the chain holds."""
        return self._seq

    @property
    def chain(self) -> str:
        """The chain id: the public commitment to the initial key."""
        return self._chain

    def record(self, who: str, vm: str, op: str, args: Any, result: str,
               detail: str = "", *, peer: str | None = None, aggregate: bool = False) -> dict:
        """Append one record and return it (with its seq and hash) once it is on disk.

        A denial (or, with AGGREGATE, any record: the agent's reads) of a kind already
        recorded in the current window is only counted (and {"aggregated": True, ...}
        returned): the window's end writes one record for all."""
        if result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}, not {result!r}")
        _check_types(who, vm, op, detail, peer)
        if (result == "denied" or aggregate) and self._denials is not None:
            with self._lock:
                if self._fd < 0:
                    raise AuditError(f"{self.path}: the audit log is closed")
                self._record_ended_windows()
                if not self._denials.offer(who, peer, op, vm, detail, time.monotonic(),
                                           result):
                    self._wake()
                    return {"aggregated": True, "who": bound(who, NAME_MAX),
                            "op": bound(op, NAME_MAX), "peer": peer, "result": result}
        fields = self._fields(who, vm, op, args, result, detail, peer)
        with self._lock:
            return self._commit(fields)

    def _record_ended_windows(self, everything: bool = False) -> None:
        """Under the lock: one record per denial window that ended (or all, at close)."""
        if self._denials is None:
            return
        windows = self._denials.drain() if everything else self._denials.due(time.monotonic())
        for window in windows:
            self._commit(self._fields(**window.record(self._denials.window), cut=False))

    def intent(self, who: str, vm: str, op: str, args: Any, *,
               peer: str | None = None) -> Intent:
        """Record that an action starts, on disk, before it is taken. Raises AuditError if
        that cannot be done: the caller must then not act (fail closed)."""
        fields = self._fields(who, vm, op, args, "started", "", peer)
        with self._lock:
            record = self._commit(fields)
            self._intents.add(record["seq"])
        return Intent(record["seq"], record["hash"], record["who"], record["vm"],
                      record["op"], record["peer"])

    def outcome(self, token: Intent, result: str, detail: str = "",
                args: Any = None) -> dict:
        """Record how the action of TOKEN ended (ARGS: what it did, e.g. counts)."""
        if not isinstance(token, Intent):
            raise TypeError("outcome takes the token intent() returned")
        if result not in OUTCOMES:
            raise ValueError(f"an outcome is one of {OUTCOMES}, not {result!r}")
        fields = self._fields(token.who, token.vm, token.op, {} if args is None else args,
                              result, detail, token.peer, ref=token.seq, cut=False)
        with self._lock:
            if token.seq not in self._intents:
                raise ValueError(f"intent {token.seq} is not open in this log (its outcome "
                                 "was recorded already?)")
            record = self._commit(fields)
            self._intents.discard(token.seq)
        return record

    def checkpoint(self) -> None:
        """Sign the current head into the sink now (no-op without a sink)."""
        with self._lock:
            if self._fd < 0:
                raise AuditError(f"{self.path}: the audit log is closed")
            if self._sink is not None:
                self._checkpoint_now()

    def close(self) -> None:
        """Record pending denial windows, sign a last checkpoint, close."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self._pid == os.getpid():
                    self._record_ended_windows(everything=True)
                    if self._sink is not None:
                        self._checkpoint_now()
            except AuditError as exc:
                _log.error("audit log %s: at close: %s", self.path, exc)
            finally:
                os.close(self._fd)  # after fork this closes only our copy of the descriptor
                self._fd = -1
                ticker, self._ticker = self._ticker, None
                self._cond.notify_all()
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(5)

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

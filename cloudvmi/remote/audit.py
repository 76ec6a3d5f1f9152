"""The agent's append-only, tamper-evident audit log: hash-chained JSON lines.

Each line is the canonical JSON (sorted keys, compact) of one record::

    {"seq", "time", "who", "vm", "op", "args_sha256", "result", "detail", "prev", "hash"}

`hash` is the SHA-256 of the canonical JSON of the record without `hash`; `prev` is the
SHA-256 of the previous line's bytes (64 zeros for the first); `seq` counts from 1. Editing,
reordering or deleting a line, or a torn write, breaks the chain where it happened and
`verify` reports that line.

Limits, by construction: the file alone cannot show that its *last* lines were deleted, and
someone who may rewrite the file may rebuild a whole consistent chain. Keep the head (the last
record's `hash`, and its `seq`) somewhere else now and then, and pass it to `verify`
(`expect_head`, `expect_records`) to detect both.
"""

import contextlib
import dataclasses
import datetime as dt
import enum
import fcntl
import hashlib
import json
import math
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from cloudvmi.errors import CloudVMIError

GENESIS = "0" * 64
RESULTS = ("ok", "denied", "error", "started")  # started: recorded before acting
FIELDS = frozenset({"seq", "time", "who", "vm", "op", "args_sha256", "result", "detail",
                    "prev", "hash"})
_STR_FIELDS = ("time", "who", "vm", "op", "args_sha256", "result", "detail", "prev", "hash")
_TAIL_CHUNK = 1 << 16
_LOGS: "weakref.WeakSet[AuditLog]" = weakref.WeakSet()


def _after_fork() -> None:
    """A lock held by another thread at fork() would stay held in the child forever."""
    for log in list(_LOGS):
        log._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


class AuditError(CloudVMIError):
    """The audit log cannot be appended to safely: the caller must not perform the action."""


def canonical(value: Any) -> bytes:
    """The one byte string a JSON value hashes as: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _plain(value: Any) -> Any:
    """Arguments as JSON values; bytes become {"$bytes": {sha256, len}} so megabytes of
    written memory cost a digest, not a copy, while the digest still binds their content."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return {"$bytes": {"sha256": sha256(data), "len": len(data)}}
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot digest the non-finite number {value}")
        return value
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = k if isinstance(k, str) else str(_plain(k))
            if key in out:
                raise ValueError(f"argument keys collide as {key!r}")
            out[key] = _plain(v)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=canonical)
    raise TypeError(f"cannot digest an argument of type {type(value).__name__}")


def args_digest(args: Any) -> str:
    """SHA-256 hex of the canonical JSON of ARGS (key order does not matter; bytes hashed)."""
    return sha256(canonical(_plain(args)))


def _check_record(record: Any) -> str | None:
    """Why RECORD (parsed from a line) is malformed, or None; does not check the chain."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if set(record) != FIELDS:
        missing, extra = sorted(FIELDS - set(record)), sorted(set(record) - FIELDS)
        return f"wrong fields (missing {missing}, unexpected {extra})"
    if type(record["seq"]) is not int:
        return "seq is not an integer"
    for key in _STR_FIELDS:
        if not isinstance(record[key], str):
            return f"{key} is not a string"
    if record["result"] not in RESULTS:
        return f"unknown result {record['result']!r}"
    body = {k: v for k, v in record.items() if k != "hash"}
    if sha256(canonical(body)) != record["hash"]:
        return "hash mismatch: the line was edited"
    return None


def _parse(line: bytes) -> tuple[dict | None, str | None]:
    try:
        record = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, "not a JSON record (garbage or a torn write)"
    problem = _check_record(record)
    if problem:
        return None, problem
    if canonical(record) != line:
        return None, "not in canonical form: the line was edited"
    return record, None


class AuditLog:
    """Appends records to the hash chain at PATH, safely across threads and processes.

    Appends take a thread lock and an exclusive flock, re-read the tail if another process
    wrote since, write the line with one O_APPEND write and fsync it. `record` raises
    AuditError when it cannot append (the caller should then refuse the action): a corrupt
    last line, a file that shrank or was replaced under it, a failed write (undone).
    """

    def __init__(self, path: Path | str, mode: int = 0o600) -> None:
        self.path = Path(path)
        self._mode = mode
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._end = 0  # file size after the last line we know of
        self._seq = 0
        self._prev = GENESIS  # sha256 of the last line
        self._head = GENESIS  # "hash" of the last record
        with self._lock:
            self._open()
        _LOGS.add(self)

    # -- file handling --------------------------------------------------------------------
    def _open(self) -> None:
        """Open (or reopen after fork: flock is per open file, shared with a forked parent)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self._mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                self._load_tail(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._pid = fd, os.getpid()

    def _load_tail(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if size == 0:
            self._end, self._seq, self._prev, self._head = 0, 0, GENESIS, GENESIS
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
        record, problem = _parse(line)
        if record is None:
            raise AuditError(f"{self.path}: the last line is corrupt ({problem}); "
                             "refusing to continue the chain from it")
        self._end, self._seq = size, record["seq"]
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

    # -- API ------------------------------------------------------------------------------
    @property
    def head(self) -> str:
        """The last record's hash (64 zeros when empty): the value to keep elsewhere."""
        return self._head

    @property
    def records(self) -> int:
        """The last record's seq, i.e. how many records the chain holds."""
        return self._seq

    def record(self, who: str, vm: str, op: str, args: Any, result: str,
               detail: str = "") -> dict:
        """Append one record and return it (with its seq and hash) once it is on disk."""
        if result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}, not {result!r}")
        for label, value in (("who", who), ("vm", vm), ("op", op), ("detail", detail)):
            if not isinstance(value, str):
                raise TypeError(f"{label} must be a string, not {type(value).__name__}")
        digest = args_digest(args)
        with self._lock:
            if self._fd < 0:
                raise AuditError(f"{self.path}: the audit log is closed")
            if self._pid != os.getpid():  # forked child: get our own open file (and flock)
                inherited = self._fd
                self._open()
                os.close(inherited)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._sync()
                record = {"seq": self._seq + 1,
                          "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
                          "who": who, "vm": vm, "op": op, "args_sha256": digest,
                          "result": result, "detail": detail, "prev": self._prev}
                record["hash"] = sha256(canonical(record))
                line = canonical(record)
                self._append(line + b"\n")
                self._end += len(line) + 1
                self._seq, self._prev, self._head = record["seq"], sha256(line), record["hash"]
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

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)  # after fork this closes only our copy of the descriptor
            self._fd = -1

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int  # records read and found intact (up to the first problem)
    error: str | None = None
    line: int | None = None  # 1-based line of the first problem
    head: str = GENESIS  # hash of the last intact record

    def __bool__(self) -> bool:
        return self.ok


def verify(path: Path | str, expect_head: str | None = None,
           expect_records: int | None = None) -> VerifyResult:
    """Check the chain at PATH line by line and report the first broken line.

    Without expectations, deleting the last lines goes unnoticed (the rest is still a valid
    chain). EXPECT_HEAD is a record hash kept elsewhere (e.g. `AuditLog.head` at some time):
    it must still be in the chain, so later appends are fine but losing it is not.
    EXPECT_RECORDS requires at least that many records, and with EXPECT_HEAD pins the head
    to that seq.
    """
    seq, prev, head, found_at = 0, GENESIS, GENESIS, None
    lineno = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; streamed, never read whole
    except OSError as exc:
        return VerifyResult(False, 0, f"cannot read {path}: {exc.strerror}", None)
    with f:
        for raw in f:
            lineno += 1
            if not raw.endswith(b"\n"):
                return VerifyResult(False, seq, "incomplete last line (truncated or torn "
                                    "write)", lineno, head)
            line = raw[:-1]
            record, problem = _parse(line)
            if record is None:
                return VerifyResult(False, seq, problem, lineno, head)
            if record["seq"] != seq + 1:
                return VerifyResult(False, seq, f"seq {record['seq']} where {seq + 1} was "
                                    "expected: a line was deleted, moved or inserted",
                                    lineno, head)
            if record["prev"] != prev:
                what = "first record does not start the chain" if seq == 0 else \
                    "prev does not match the line before: a line was deleted, moved or edited"
                return VerifyResult(False, seq, what, lineno, head)
            seq, prev, head = record["seq"], sha256(line), record["hash"]
            if head == expect_head and found_at is None:
                found_at = seq
    if expect_records is not None and seq < expect_records:
        return VerifyResult(False, seq, f"{seq} records where at least {expect_records} were "
                            "expected: records were deleted from the end", seq + 1, head)
    if expect_head is not None:
        if found_at is None:
            return VerifyResult(False, seq, "the expected head is not in the chain: records "
                                "were deleted from the end, or the log was rewritten",
                                None, head)
        if expect_records is not None and found_at != expect_records:
            return VerifyResult(False, seq, f"the expected head is record {found_at}, not "
                                f"{expect_records}", found_at, head)
    return VerifyResult(True, seq, None, None, head)

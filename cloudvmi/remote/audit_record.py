"""One audit record: its fields, its bounds, its arguments in clear, and the checks a line
must pass before anything else is believed about it.

A record is the canonical JSON (sorted keys, compact, ASCII) of::

    {"v": 2, "seq", "time", "who", "peer", "vm", "op", "args", "args_sha256", "result",
     "detail", "count", "ref", "prev", "mac", "hash"}

`args` holds the arguments in clear (bounded; `null` when the log redacts them),
`args_sha256` the digest of all of them, uncut. `count` is how many events the record stands
for (more than 1 only for aggregated denials); `ref` is the seq of the intent an outcome
closes. `mac` is the forward-secure MAC of the record (see audit_key), `hash` the SHA-256 of
the canonical JSON of everything but `hash`, and `prev` the SHA-256 of the previous line.

Every string a client controls is bounded, so one request cannot grow the log by more than
a few KiB whatever it sends: a cut string keeps its first bytes and says how long it was and
what it hashed to.
"""

import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from cloudvmi.errors import CloudVMIError
from cloudvmi.stream import ByteStream

VERSION = 2
GENESIS = "0" * 64
RESULTS = ("ok", "denied", "error", "started")  # started: an intent, recorded before acting
OUTCOMES = ("ok", "denied", "error")
FIELDS = frozenset({"v", "seq", "time", "who", "peer", "vm", "op", "args", "args_sha256",
                    "result", "detail", "count", "ref", "prev", "mac", "hash"})
_STR_FIELDS = ("time", "who", "vm", "op", "args_sha256", "result", "detail", "prev", "mac",
               "hash")
_HEX_FIELDS = ("args_sha256", "prev", "mac", "hash")

NAME_MAX = 256  # who, vm, op, peer: UTF-8 bytes kept before a cut
DETAIL_MAX = 1024
STRING_MAX = 1024  # any string inside the arguments
ITEMS_MAX = 64  # items of one list or mapping inside the arguments
DEPTH_MAX = 8
BYTES_CLEAR = 64  # byte strings up to this size are kept in hex, larger ones as a digest
ARGS_MAX = 8 << 10  # canonical bytes of the clear arguments; over it only the digest is kept
RECORD_MAX = 32 << 10  # a whole line can never be longer (checked before it is written)


class AuditError(CloudVMIError):
    """The audit log cannot be appended to safely: the caller must not perform the action."""


def canonical(value: Any) -> bytes:
    """The one byte string a JSON value hashes as: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bound(text: str, limit: int) -> str:
    """TEXT if it fits in LIMIT UTF-8 bytes, else its first LIMIT bytes and a marker with
    its real length and digest (so a cut name still identifies what was sent)."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    head = raw[:limit].decode("utf-8", "ignore")
    return f"{head}...[cut {len(raw)} bytes sha256:{sha256(raw)}]"


def _plain(value: Any) -> Any:
    """Arguments as JSON values; bytes become {"$bytes": {sha256, len}} so megabytes of
    written memory cost a digest, not a copy, while the digest still binds their content."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return {"$bytes": {"sha256": sha256(data), "len": len(data)}}
    if isinstance(value, ByteStream):  # still arriving: its digest goes in the outcome
        return {"$stream": {"len": value.size}}
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


def _clear(value: Any, depth: int) -> Any:
    """VALUE (already accepted by _plain) as bounded JSON a person can read."""
    if depth > DEPTH_MAX:
        return "...[nested too deep]"
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        if len(data) <= BYTES_CLEAR:
            return {"$bytes": {"hex": data.hex(), "len": len(data)}}
        return {"$bytes": {"sha256": sha256(data), "len": len(data)}}
    if isinstance(value, ByteStream):  # still arriving: its digest goes in the outcome
        return {"$stream": {"len": value.size}}
    if isinstance(value, enum.Enum):
        return _clear(value.value, depth)
    if isinstance(value, str):
        return bound(value, STRING_MAX)
    if isinstance(value, PurePath):
        return bound(str(value), STRING_MAX)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {bound(k if isinstance(k, str) else str(_plain(k)), NAME_MAX): _clear(v, depth + 1)
               for k, v in items[:ITEMS_MAX]}
        if len(items) > ITEMS_MAX:
            out["$more"] = len(items) - ITEMS_MAX
        return out
    if isinstance(value, set | frozenset):
        value = sorted(value, key=lambda v: canonical(_plain(v)))
    if isinstance(value, list | tuple):
        out_list = [_clear(v, depth + 1) for v in value[:ITEMS_MAX]]
        if len(value) > ITEMS_MAX:
            out_list.append(f"...[+{len(value) - ITEMS_MAX} more items]")
        return out_list
    return value  # None, bool, int, finite float


def clear_args(args: Any) -> Any:
    """ARGS in clear for the record, bounded: long strings cut, big byte strings as size and
    SHA-256, long lists shortened; over ARGS_MAX in all, only their size (the record's
    args_sha256 still binds them whole)."""
    out = _clear(args, 0)
    size = len(canonical(out))
    return out if size <= ARGS_MAX else {"$cut": {"bytes": size}}


def peer_host(peer: str | None) -> str | None:
    """gRPC's peer string without its port ("ipv4:10.0.0.5:51234" -> "10.0.0.5"): a client
    that reconnects is the same source for rate limiting."""
    if peer is None:
        return None
    kind, sep, rest = peer.partition(":")
    if not sep or kind not in ("ipv4", "ipv6"):
        return peer
    if rest.startswith("["):
        return rest[1:rest.find("]")] if "]" in rest else rest
    return rest.rsplit(":", 1)[0]


def check_record(record: Any) -> str | None:
    """Why RECORD (parsed from a line) is malformed, or None; does not check chain or MAC."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if set(record) != FIELDS:
        missing, extra = sorted(FIELDS - set(record)), sorted(set(record) - FIELDS)
        return f"wrong fields (missing {missing}, unexpected {extra})"
    if record["v"] != VERSION or type(record["v"]) is not int:
        return f"unknown record version {record['v']!r}"
    for key in ("seq", "count"):
        if type(record[key]) is not int or record[key] < 1:
            return f"{key} is not a positive integer"
    ref = record["ref"]
    if ref is not None and (type(ref) is not int or not 1 <= ref < record["seq"]):
        return "ref is not the seq of an earlier record"
    for key in _STR_FIELDS:
        if not isinstance(record[key], str):
            return f"{key} is not a string"
    for key in _HEX_FIELDS:
        if len(record[key]) != 64:
            return f"{key} is not a SHA-256"
    if record["peer"] is not None and not isinstance(record["peer"], str):
        return "peer is not a string"
    if record["result"] not in RESULTS:
        return f"unknown result {record['result']!r}"
    if sha256(canonical(body_of(record, "hash"))) != record["hash"]:
        return "hash mismatch: the line was edited"
    return None


def body_of(record: dict, *without: str) -> dict:
    return {k: v for k, v in record.items() if k not in without}


def parse(line: bytes) -> tuple[dict | None, str | None]:
    """The record on LINE (without its newline), or why it is not one."""
    if len(line) > RECORD_MAX:
        return None, f"a line of {len(line)} bytes, over the {RECORD_MAX}-byte bound"
    try:
        record = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, "not a JSON record (garbage or a torn write)"
    problem = check_record(record)
    if problem:
        return None, problem
    if canonical(record) != line:
        return None, "not in canonical form: the line was edited"
    return record, None

"""What a program asked of the guest first, last time it ran: the read-only requests it made
(stats, small reads, listings, extended attributes). The next run makes them all in one guest
run before the program starts, so its start-up costs one resume instead of one per file.
Kept in memory and in the cache directory, per program name; never trusted for content (the
requests are made afresh), only for what to ask."""

import contextlib
import json
import re

from cloudvmi.paths import cache_sub
from cloudvmi.write.channel import Arg

LIMIT = 256  # requests kept per program
_memory: dict[str, list[tuple]] = {}


def _file(key: str):
    return cache_sub("exec-profiles") / (re.sub(r"[^A-Za-z0-9._-]", "_", key)[:80] + ".json")


def load(key: str) -> list[tuple]:
    if key in _memory:
        return _memory[key]
    try:
        raw = json.loads(_file(key).read_text())
        requests = [_decode(r) for r in raw][:LIMIT]
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        requests = []
    _memory[key] = requests
    return requests


def save(key: str, requests: list[tuple]) -> None:
    requests = requests[:LIMIT]
    _memory[key] = requests
    with contextlib.suppress(OSError):
        _file(key).write_text(json.dumps([_encode(r) for r in requests]))


def _encode(request: tuple) -> list:
    if request[0] == "call":
        _, name, template, trim, path = request
        return ["call", name, [[a.kind, a.value, a.data.hex()] for a in template], trim,
                path.hex()]
    _, flags, path = request
    return ["open", flags, path.hex()]


def _decode(raw: list) -> tuple:
    if raw[0] == "call":
        _, name, template, trim, path = raw
        return ("call", str(name), [Arg(str(k), int(v), bytes.fromhex(d))
                                    for k, v, d in template], bool(trim), bytes.fromhex(path))
    _, flags, path = raw
    return ("open", int(flags), bytes.fromhex(path))

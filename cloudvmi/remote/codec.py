"""Arguments and results to the wire and back, rebuilt from the capability's type hints, so
a remote VM returns the very objects a local one does (nested dataclasses, lists, tuples,
optional fields, generic results such as ViewResult[Process]).

Bytes never travel inside JSON: each bytes value becomes {"__blob__": LENGTH} and its
content follows the JSON as raw data, in order, so large payloads stream in chunks and the
receiver knows how much to expect before reading any of it.
"""

import dataclasses
import functools
import json
import types
import typing
from typing import Any

from cloudvmi.stream import ByteStream

BLOB = "__blob__"


def encode(value: Any) -> tuple[str, list[bytes | ByteStream]]:
    """(JSON text, blobs) for a value made of dataclasses, lists, dicts, scalars and bytes.
    A ByteStream stays a stream among the blobs, for the sender to read as it sends."""
    blobs: list[bytes | ByteStream] = []

    def plain(v: Any) -> Any:
        if isinstance(v, _SCALARS):
            return v
        names = _field_names(type(v))
        if names is not None:
            return {name: plain(getattr(v, name)) for name in names}
        if isinstance(v, bytes | bytearray | memoryview):
            blobs.append(bytes(v))
            return {BLOB: len(blobs[-1])}
        if isinstance(v, ByteStream):
            blobs.append(v)
            return {BLOB: v.size}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return json.dumps(plain(value), ensure_ascii=False, separators=(",", ":")), blobs


_SCALARS = (str, int, float, bool, type(None))


@functools.lru_cache(maxsize=512)
def _field_names(cls: type) -> tuple[str, ...] | None:
    if not dataclasses.is_dataclass(cls):
        return None
    return tuple(f.name for f in dataclasses.fields(cls))


def blob_sizes(text: str) -> list[int]:
    """The lengths of the blobs a JSON text announces, in order (checked before reading)."""
    sizes: list[int] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if set(v) == {BLOB}:
                n = v[BLOB]
                if not isinstance(n, int) or n < 0:
                    raise ValueError("bad blob length")
                sizes.append(n)
            else:
                for x in v.values():
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    try:
        walk(json.loads(text))
    except RecursionError as exc:
        raise ValueError("arguments nest too deeply") from exc
    return sizes


def decode(text: str, blobs: bytes, hint: Any = Any, tail: ByteStream | None = None) -> Any:
    """Rebuild a value from its JSON and the concatenated blobs, guided by the type HINT.
    With TAIL, the last blob announced is that stream (still arriving) instead of bytes."""
    pos = 0
    count = len(blob_sizes(text)) if tail is not None else 0
    seen = 0

    def unblob(v: Any) -> Any:
        nonlocal pos, seen
        if isinstance(v, dict):
            if set(v) == {BLOB}:
                n = v[BLOB]
                seen += 1
                if tail is not None and seen == count:
                    if n != tail.size:
                        raise ValueError("the streamed blob is not the size announced")
                    return tail
                if not isinstance(n, int) or n < 0 or pos + n > len(blobs):
                    raise ValueError("blob data shorter than announced")
                out, pos = blobs[pos:pos + n], pos + n
                return out
            return {k: unblob(x) for k, x in v.items()}
        if isinstance(v, list):
            return [unblob(x) for x in v]
        return v

    try:
        plain = json.loads(text)
        return build(hint, unblob(plain) if BLOB in text else plain)
    except RecursionError as exc:  # json and the walks above recurse: a peer can nest deep
        raise ValueError("value nests too deeply") from exc


def build(hint: Any, value: Any) -> Any:
    """VALUE (plain JSON data) as an instance of HINT, recursively."""
    if hint is Any or value is None or hint in _PLAIN:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(value) in args:  # str | None given a str
            return value
        for option in args:
            if option is type(None):
                continue
            try:
                return build(option, value)
            except (TypeError, ValueError):
                continue
        return value
    if origin in (list, tuple) and isinstance(value, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(build(a, v) for a, v in zip(args, value, strict=False))
        item = args[0] if args else Any
        out = [build(item, v) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict and isinstance(value, dict):
        vt = args[1] if len(args) == 2 else Any
        return {k: build(vt, v) for k, v in value.items()}
    cls = origin or hint
    if dataclasses.is_dataclass(cls) and isinstance(value, dict):
        fields = {}
        for name, field_hint in _field_hints(hint):
            if name in value:
                fields[name] = build(field_hint, value[name])
        return cls(**fields)
    if cls is float and isinstance(value, int):
        return float(value)
    return value


_PLAIN = (str, int, bool)  # JSON gives these as they are


@functools.lru_cache(maxsize=512)
def _field_hints(hint: Any) -> tuple[tuple[str, Any], ...]:
    """A dataclass's fields and their types, type variables filled in from HINT's
    arguments (ViewResult[Process]: items is list[Process]); worked out once per type."""
    cls = typing.get_origin(hint) or hint
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        hints = {}
    params = dict(zip(getattr(cls, "__parameters__", ()), typing.get_args(hint), strict=False))
    return tuple((f.name, _substitute(hints.get(f.name, Any), params))
                 for f in dataclasses.fields(cls))


def _substitute(hint: Any, params: dict) -> Any:
    """HINT with type variables replaced (ViewResult[Process].items: list[T] -> list[Process])."""
    if isinstance(hint, typing.TypeVar):
        return params.get(hint, Any)
    args = typing.get_args(hint)
    if not args or not params:
        return hint
    new = tuple(_substitute(a, params) for a in args)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[new]  # noqa: UP007 - built from a tuple
    return origin[new] if origin in (list, tuple, dict) else hint


def check_args(cap, args: dict[str, Any]) -> dict[str, Any]:
    """Arguments from a client, checked against the capability's declared parameters:
    unknown names refused, required ones present, each of its declared type and passing its
    declared checks (absolute guest paths, bounded timeouts: a ValueError)."""
    if not isinstance(args, dict):
        raise TypeError(f"{cap.key}: arguments must be a JSON object, not "
                        f"{type(args).__name__}")
    out = cap.bind((), args)
    for name, value in out.items():
        hint = cap.param(name).type
        out[name] = _typed(hint, build(hint, value), f"{cap.key}: {name}")
    cap.check(out)
    return out


def _typed(hint: Any, value: Any, what: str) -> Any:
    origin = typing.get_origin(hint) or hint
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return value
        for option in args:
            if option is type(None):
                continue
            try:
                return _typed(option, value, what)
            except TypeError:
                continue
        raise TypeError(f"{what} has the wrong type")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise TypeError(f"{what} must be a list")
        item = args[0] if args else Any
        return origin(_typed(item, v, what) for v in value)
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is int and isinstance(value, bool):
        raise TypeError(f"{what} must be an integer")
    if isinstance(origin, type) and not isinstance(value, origin):
        raise TypeError(f"{what} must be {origin.__name__}, not {type(value).__name__}")
    return value

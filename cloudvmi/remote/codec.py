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
from collections.abc import Callable
from typing import Any

from cloudvmi.stream import ByteStream

BLOB = "__blob__"


def encode(value: Any) -> tuple[str, list[bytes | ByteStream]]:
    """(JSON text, blobs) for a value made of dataclasses, lists, dicts, scalars and bytes.
    A ByteStream stays a stream among the blobs, for the sender to read as it sends."""
    blobs: list[bytes | ByteStream] = []

    def plain(v: Any) -> Any:
        t = type(v)
        if t in _SCALAR_TYPES:
            return v
        names = _field_names(t)
        if names is not None:  # scalars inline: most fields are, and a call each is the cost
            return {name: x if type(x) in _SCALAR_TYPES else plain(x)
                    for name in names for x in (getattr(v, name),)}
        if isinstance(v, _SCALARS):  # subclasses: an IntEnum, a str subclass
            return v
        if isinstance(v, bytes | bytearray | memoryview):
            blobs.append(bytes(v))
            return {BLOB: len(blobs[-1])}
        if isinstance(v, ByteStream):
            blobs.append(v)
            return {BLOB: v.size}
        if isinstance(v, list | tuple):
            return [x if type(x) in _SCALAR_TYPES else plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return json.dumps(plain(value), ensure_ascii=False, separators=(",", ":")), blobs


_SCALARS = (str, int, float, bool, type(None))
_SCALAR_TYPES = frozenset(_SCALARS)


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
    try:
        builder = _builder(hint)
    except TypeError:  # a hint that cannot be a cache key
        builder = _make_builder(hint)
    return builder(value)


def _same(value: Any) -> Any:
    return value


def _make_builder(hint: Any) -> Callable[[Any], Any]:
    """build() for one type, its shape worked out once: a result of a thousand records asks
    typing about each field's type once, not once a value. Every builder gives None for
    None, and a value of another shape than HINT's as it is."""
    if hint is Any or hint in _PLAIN:
        return _same
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = tuple(a for a in args if a is not type(None))

        def union(value: Any) -> Any:
            if value is None or type(value) in args:  # str | None given a str
                return value
            for option in options:
                try:
                    return build(option, value)
                except (TypeError, ValueError):
                    continue
            return value
        return union
    if origin is tuple and args and args[-1] is not Ellipsis:
        def fixed(value: Any) -> Any:
            if not isinstance(value, list):
                return value
            return tuple(build(a, v) for a, v in zip(args, value, strict=False))
        return fixed
    if origin in (list, tuple):
        item = args[0] if args else Any

        def sequence(value: Any) -> Any:
            if not isinstance(value, list):
                return value
            if item is Any or item in _PLAIN:
                out = value
            else:
                each = _builder_of(item)
                out = [None if v is None else each(v) for v in value]
            return tuple(out) if origin is tuple else out
        return sequence
    if origin is dict:
        vt = args[1] if len(args) == 2 else Any

        def mapping(value: Any) -> Any:
            if not isinstance(value, dict):
                return value
            each = _builder_of(vt)
            return {k: None if v is None else each(v) for k, v in value.items()}
        return mapping
    cls = origin or hint
    if dataclasses.is_dataclass(cls):
        def record(value: Any) -> Any:
            if not isinstance(value, dict):
                return value
            fields = {}
            for name, each in _record_fields(hint):
                if name in value:
                    v = value[name]
                    fields[name] = v if each is None or v is None else each(v)
            return cls(**fields)
        return record
    if cls is float:
        return lambda value: float(value) if isinstance(value, int) else value
    return _same


_builder = functools.lru_cache(maxsize=1024)(_make_builder)


def _builder_of(hint: Any) -> Callable[[Any], Any]:
    try:
        return _builder(hint)
    except TypeError:
        return _make_builder(hint)


@functools.lru_cache(maxsize=512)
def _record_fields(hint: Any) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
    """A dataclass's fields with the builder each needs (None: the JSON value as it is).
    Looked up when first used, so a type that contains itself is no endless recursion."""
    return tuple((name, None if h is Any or h in _PLAIN else _builder_of(h))
                 for name, h in _field_hints(hint))


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

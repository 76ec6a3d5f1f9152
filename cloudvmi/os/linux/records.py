"""Struct layouts compiled once per profile: read chosen fields of a struct in one memory read.

Views walk thousands of kernel objects; resolving members through BTF on every access would
dominate. A Record resolves its fields once, then each object costs one read and some unpacks.
"""

import struct
from dataclasses import dataclass

from cloudvmi.errors import ProfileError
from cloudvmi.os.linux.btf import BTF, Kind, MemberNotFound

_INT = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
        (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}


@dataclass(frozen=True)
class _Slot:
    name: str
    offset: int
    size: int
    fmt: str | None  # struct format for integers and pointers; None: raw bytes (arrays)
    bit_offset: int = 0  # within the unpacked integer, for bitfields
    bit_size: int = 0


class Record:
    """Fields of one struct type, each given as NAME=PATH (a dotted BTF member path).

    Paths that this kernel's struct lacks are left out when listed as optional, so callers
    can test `'field' in record` instead of branching on a version number.
    """

    def __init__(self, btf: BTF, struct_name: str, fields: dict[str, str],
                 optional: tuple[str, ...] = ()) -> None:
        self.struct = btf.struct(struct_name)
        self.endian = btf.endian
        self.size = self.struct.size
        slots = []
        for name, path in fields.items():
            try:
                f = self.struct.field(path)
            except MemberNotFound:
                if name in optional:
                    continue
                raise
            rid = btf.resolve(f.type_id)
            kind = btf.kind(rid)
            size = btf.sizeof(rid)
            numeric = kind in (Kind.INT, Kind.ENUM, Kind.ENUM64)
            signed = numeric and btf.type(rid).is_signed
            if f.bit_size:
                start = f.bit_offset // 8
                width = (f.bit_offset % 8 + f.bit_size + 7) // 8
                width = next((w for w in (1, 2, 4, 8) if w >= width), 0)
                if not width:  # BTF allows bitfields of up to 255 bits; no integer holds one
                    raise ProfileError(f"{struct_name}.{path} is a {f.bit_size}-bit bitfield")
                slots.append(_Slot(name, start, width, _INT[(width, False)], f.bit_offset % 8,
                                   f.bit_size))
            elif kind in (Kind.INT, Kind.ENUM, Kind.ENUM64, Kind.PTR) and (size, signed) in _INT:
                slots.append(_Slot(name, f.offset, size, _INT[(size, signed)]))
            else:
                slots.append(_Slot(name, f.offset, size, None))
        self.slots = tuple(slots)
        self.names = frozenset(s.name for s in slots)
        self.span = (min((s.offset for s in slots), default=0),
                     max((s.offset + s.size for s in slots), default=0))
        self._compile()

    def _compile(self) -> None:
        """One struct.Struct for the plain integer fields that do not overlap, so a read
        unpacks them in one call; the others (byte arrays, bitfields, union members over
        a field already taken) are unpacked one by one."""
        lo = self.span[0]
        fmt, names, rest, at = [self.endian], [], [], lo
        for s in sorted(self.slots, key=lambda s: s.offset):
            if s.fmt is None or s.bit_size or s.offset < at:
                rest.append((s, None if s.fmt is None else struct.Struct(self.endian + s.fmt)))
                continue
            fmt.append(f"{s.offset - at}x{s.fmt}" if s.offset > at else s.fmt)
            names.append(s.name)
            at = s.offset + s.size
        self._ints = struct.Struct("".join(fmt))
        self._int_names = tuple(names)
        self._rest = tuple(rest)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def _slot(self, name: str) -> _Slot:
        return next(s for s in self.slots if s.name == name)

    def offset(self, name: str) -> int:
        return self._slot(name).offset

    def size_of(self, name: str) -> int:
        return self._slot(name).size

    def write(self, space, address: int, name: str, value: int) -> None:
        """Write one integer field (not a bitfield) of the struct at ADDRESS."""
        s = self._slot(name)
        if s.fmt is None or s.bit_size:
            raise TypeError(f"{name} is not a plain integer field")
        space.write(address + s.offset, struct.pack(self.endian + s.fmt, value))

    def read(self, space, address: int) -> dict:
        """One read of the span covering every field, then unpack each field from it."""
        lo, hi = self.span
        raw = space.read(address + lo, hi - lo)
        out = dict(zip(self._int_names, self._ints.unpack_from(raw), strict=True))
        for s, unpack in self._rest:
            if unpack is None:
                out[s.name] = raw[s.offset - lo:s.offset - lo + s.size]
                continue
            value = unpack.unpack_from(raw, s.offset - lo)[0]
            if s.bit_size:
                value = (value >> s.bit_offset) & ((1 << s.bit_size) - 1)
            out[s.name] = value
        return out


def cstring(raw: bytes) -> bytes:
    """A C char array's string: bytes up to the first NUL."""
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]

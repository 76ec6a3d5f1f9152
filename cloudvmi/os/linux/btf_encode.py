"""A small BTF encoder: build types in Python, emit a blob that `BTF.from_bytes` reads.

CloudVMI's type layer only speaks BTF. Kernels without in-memory BTF can still be served from
another description of their types (a Volatility ISF, see isf.py) by re-encoding it as BTF,
so everything above btf.py works unchanged. The format is Documentation/bpf/btf.rst: a
24-byte header, the type section (each type a 12-byte btf_type plus kind-specific words), then
the string section (offset 0 is the empty name).

Ids are handed out in the order types are added (void is 0), and a struct's members may be set
after the types they refer to exist, so mutually referring types can be built. Every limit of
the format is checked here and reported as ProfileError, because the input usually comes from
a file we do not trust.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cloudvmi.errors import ProfileError
from cloudvmi.os.linux.btf import (
    BTF_MAGIC,
    BTF_VERSION,
    HEADER_SIZE,
    INT_BOOL,
    INT_CHAR,
    INT_SIGNED,
    MAX_NAME_OFFSET,
    MAX_TYPE_ID,
    Enumerator,
    Kind,
    Member,
    Param,
)

MAX_VLEN = 0xFFFF
_U32 = 0xFFFFFFFF


@dataclass(slots=True)
class _Entry:
    kind: Kind
    name: str
    size_or_type: int = 0
    kind_flag: bool = False
    extra: list[int] = field(default_factory=list)  # words after the btf_type
    vlen: int = 0
    refs: list[int] = field(default_factory=list)  # type ids to range-check at emit time


class BtfBuilder:
    """Collects types and encodes them as one BTF blob."""

    def __init__(self) -> None:
        self._types: list[_Entry] = []
        self._strings = bytearray(b"\0")
        self._string_offsets: dict[str, int] = {"": 0}
        self._array_index: int | None = None

    def __len__(self) -> int:
        """Number of type ids, counting void (id 0), like len(BTF)."""
        return len(self._types) + 1

    # ----- strings and ids

    def _name(self, name: str) -> int:
        off = self._string_offsets.get(name)
        if off is None:
            raw = name.encode("utf-8", "surrogatepass")
            if b"\0" in raw:
                raise ProfileError(f"type or member name {name[:40]!r} contains NUL")
            off = len(self._strings)
            if off + len(raw) + 1 > MAX_NAME_OFFSET + 1:
                raise ProfileError("too many type and member names for a BTF string section")
            self._strings += raw + b"\0"
            self._string_offsets[name] = off
        return off

    def _add(self, entry: _Entry) -> int:
        if len(self._types) >= MAX_TYPE_ID:
            raise ProfileError(f"more than {MAX_TYPE_ID} types: too many for BTF")
        self._name(entry.name)  # fail early on a bad name
        self._types.append(entry)
        return len(self._types)

    def _entry(self, tid: int) -> _Entry:
        if not 0 < tid <= len(self._types):
            raise ProfileError(f"no type {tid} to modify")
        return self._types[tid - 1]

    @staticmethod
    def _u32(value: int, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32:
            raise ProfileError(f"{what} {value!r} does not fit BTF's 32 bits")
        return value

    # ----- kinds

    def add_int(self, name: str, size: int, *, signed: bool = False, is_bool: bool = False,
                is_char: bool = False, bits: int | None = None, bit_offset: int = 0) -> int:
        """An integer; BITS defaults to the whole size (at most 128, as BTF allows)."""
        size = self._u32(size, f"size of {name!r}")
        if bits is None:
            bits = min(8 * size, 128)
        if not 0 <= bits <= 128 or not 0 <= bit_offset <= 255 or bit_offset + bits > 8 * size:
            raise ProfileError(f"int {name!r}: {bits} bits at {bit_offset} in {size} bytes")
        enc = (INT_SIGNED if signed else 0) | (INT_BOOL if is_bool else 0) | \
            (INT_CHAR if is_char else 0)
        return self._add(_Entry(Kind.INT, name, size, extra=[enc << 24 | bit_offset << 16 | bits]))

    def add_float(self, name: str, size: int) -> int:
        return self._add(_Entry(Kind.FLOAT, name, self._u32(size, f"size of {name!r}")))

    def _add_ref(self, kind: Kind, name: str, target: int) -> int:
        target = self._u32(target, f"{kind.name} target")
        return self._add(_Entry(kind, name, target, refs=[target]))

    def add_ptr(self, target: int) -> int:
        return self._add_ref(Kind.PTR, "", target)

    def add_typedef(self, name: str, target: int) -> int:
        return self._add_ref(Kind.TYPEDEF, name, target)

    def add_const(self, target: int) -> int:
        return self._add_ref(Kind.CONST, "", target)

    def add_volatile(self, target: int) -> int:
        return self._add_ref(Kind.VOLATILE, "", target)

    def add_fwd(self, name: str, union: bool = False) -> int:
        """A declared but undefined struct (or union): what BTF has for `struct x;`."""
        return self._add(_Entry(Kind.FWD, name, 0, kind_flag=union))

    def array_index_type(self) -> int:
        """The int BTF arrays are indexed by (pahole's `__ARRAY_SIZE_TYPE__`), made once."""
        if self._array_index is None:
            self._array_index = self.add_int("__ARRAY_SIZE_TYPE__", 4)
        return self._array_index

    def add_array(self, elem: int, nelems: int, index_type: int | None = None) -> int:
        if index_type is None:
            index_type = self.array_index_type()
        elem = self._u32(elem, "array element type")
        nelems = self._u32(nelems, "array element count")
        return self._add(_Entry(Kind.ARRAY, "", 0, extra=[elem, index_type, nelems],
                                refs=[elem, index_type]))

    def add_struct(self, name: str, size: int, members: Iterable[Member] = (),
                   union: bool = False) -> int:
        """A struct or union; members may also be given later with set_members."""
        tid = self._add(_Entry(Kind.UNION if union else Kind.STRUCT, name,
                               self._u32(size, f"size of {name or 'anonymous type'!r}")))
        self.set_members(tid, members)
        return tid

    def add_union(self, name: str, size: int, members: Iterable[Member] = ()) -> int:
        return self.add_struct(name, size, members, union=True)

    def set_members(self, tid: int, members: Iterable[Member]) -> None:
        """Give struct/union TID its members (bit offsets from its start).

        With any bitfield the struct gets kind_flag and each member's offset word holds the
        bitfield size in its high 8 bits, so offsets must then stay below 2**24 bits.
        """
        entry = self._entry(tid)
        if entry.kind not in (Kind.STRUCT, Kind.UNION):
            raise ProfileError(f"type {tid} is a {entry.kind.name}, not a struct or union")
        members = list(members)
        if len(members) > MAX_VLEN:
            raise ProfileError(f"{entry.name or 'anonymous type'!r} has {len(members)} members, "
                               f"BTF allows {MAX_VLEN}")
        kflag = any(m.bitfield_size for m in members)
        words: list[int] = []
        refs: list[int] = []
        for m in members:
            off = self._u32(m.bit_offset, f"bit offset of member {m.name!r}")
            if kflag:
                if off >> 24 or not 0 <= m.bitfield_size <= 255:
                    raise ProfileError(f"member {m.name!r}: bit offset {off} or bitfield size "
                                       f"{m.bitfield_size} too large for BTF")
                off |= m.bitfield_size << 24
            words += [self._name(m.name), self._u32(m.type_id, "member type"), off]
            refs.append(m.type_id)
        entry.kind_flag, entry.extra, entry.refs, entry.vlen = kflag, words, refs, len(members)

    def add_enum(self, name: str, size: int, values: Sequence[Enumerator]) -> int:
        """An enum: ENUM when every value fits 32 bits, else ENUM64; signed if any is < 0."""
        if len(values) > MAX_VLEN:
            raise ProfileError(f"enum {name!r} has {len(values)} values, BTF allows {MAX_VLEN}")
        signed = any(v.value < 0 for v in values)
        for v in values:
            if isinstance(v.value, bool) or not isinstance(v.value, int) or \
                    not -(1 << 63) <= v.value < (1 << 64) or (signed and v.value >= 1 << 63):
                raise ProfileError(f"enum {name!r}: value {v.name}={v.value!r} does not fit "
                                   f"64 bits")
        lo, hi = (-(1 << 31), (1 << 31) - 1) if signed else (0, _U32)
        words: list[int] = []
        if all(lo <= v.value <= hi for v in values):
            kind = Kind.ENUM
            for v in values:
                words += [self._name(v.name), v.value & _U32]
        else:
            kind = Kind.ENUM64
            for v in values:
                u = v.value & ((1 << 64) - 1)
                words += [self._name(v.name), u & _U32, u >> 32]
        return self._add(_Entry(kind, name, self._u32(size, f"size of enum {name!r}"),
                                kind_flag=signed, extra=words, vlen=len(values)))

    def add_func_proto(self, ret: int, params: Sequence[Param] = ()) -> int:
        """A function type (for function pointers); a last Param("", 0) means '...'."""
        if len(params) > MAX_VLEN:
            raise ProfileError(f"function type with {len(params)} parameters")
        words: list[int] = []
        for p in params:
            words += [self._name(p.name), self._u32(p.type_id, "parameter type")]
        ret = self._u32(ret, "return type")
        return self._add(_Entry(Kind.FUNC_PROTO, "", ret, extra=words, vlen=len(params),
                                refs=[ret, *(p.type_id for p in params)]))

    # ----- output

    def to_bytes(self, endian: str = "<") -> bytes:
        """The blob: header, type section, string section (in ENDIAN, '<' or '>')."""
        if endian not in ("<", ">"):
            raise ValueError(f"endian must be '<' or '>', not {endian!r}")
        n = len(self._types)
        words: list[int] = []
        for tid, e in enumerate(self._types, 1):
            for ref in e.refs:
                if ref > n:
                    raise ProfileError(f"type {tid} ({e.kind.name} {e.name!r}) refers to "
                                       f"type {ref}, which does not exist")
            info = (int(e.kind_flag) << 31) | (int(e.kind) << 24) | e.vlen
            words += [self._string_offsets[e.name], info, e.size_or_type, *e.extra]
        types = struct.pack(f"{endian}{len(words)}I", *words)
        strings = bytes(self._strings)
        header = struct.pack(endian + "HBBIIIII", BTF_MAGIC, BTF_VERSION, 0, HEADER_SIZE,
                             0, len(types), len(types), len(strings))
        return header + types + strings

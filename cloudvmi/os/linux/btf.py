"""A parser of the Linux kernel's BTF type information, read from guest memory.

BTF (Documentation/bpf/btf.rst, include/uapi/linux/btf.h) is built into every modern
distribution kernel, so it gives us struct layouts without shipping debug packages. The blob
comes from a guest that may be hostile: every offset, length, type id and chain is checked,
and any inconsistency raises ProfileError (never IndexError, struct.error or a hang).

Parsing is lazy because the vmlinux blob holds ~100k types: `from_bytes` only walks the type
section once to record where each type starts; names are indexed on the first lookup and full
`BtfType` objects are decoded on demand and cached.
"""

from __future__ import annotations

import re
import struct
import sys
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from itertools import compress
from typing import TYPE_CHECKING, Any

from cloudvmi.errors import CloudVMIError, ProfileError

if TYPE_CHECKING:
    from cloudvmi.memory.base import PhysicalMemory

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
HEADER_SIZE = 24
MAX_TYPE_ID = 0x000FFFFF  # BTF_MAX_TYPE
MAX_NAME_OFFSET = 0x00FFFFFF  # BTF_MAX_NAME_OFFSET
MAX_BLOB_SIZE = 256 << 20  # far above any real kernel (6.12 vmlinux: ~5 MB)
MAX_FLAT_FIELDS = 1 << 16  # bound on a struct's members once anonymous ones are flattened
POINTER_SIZE = 8
_SYNTHESIS = threading.Lock()  # pointer types made up on demand get one id each


class Kind(IntEnum):
    """BTF_KIND_* values (include/uapi/linux/btf.h)."""

    VOID = 0  # type id 0; never appears in the type section
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


_KIND_OF = tuple(Kind(n) if n in Kind._value2member_map_ else None for n in range(32))


def _kind(number: int) -> Kind:
    """Kind(NUMBER) without the enum call (a lookup: kinds are asked for on every step of a
    type walk); an unknown number raises ValueError as Kind() does."""
    kind = _KIND_OF[number]
    return kind if kind is not None else Kind(number)


# Words (u32) following the 12-byte btf_type: fixed part and per-vlen part, per kind.
# Unknown kinds get a huge fixed part so the index walk's bounds check rejects them for free.
_BAD = 1 << 40
_FIXED_WORDS = [_BAD] * 32
_VLEN_WORDS = [0] * 32
for _k, _fixed, _per in [
    (Kind.INT, 1, 0), (Kind.PTR, 0, 0), (Kind.ARRAY, 3, 0), (Kind.STRUCT, 0, 3),
    (Kind.UNION, 0, 3), (Kind.ENUM, 0, 2), (Kind.FWD, 0, 0), (Kind.TYPEDEF, 0, 0),
    (Kind.VOLATILE, 0, 0), (Kind.CONST, 0, 0), (Kind.RESTRICT, 0, 0), (Kind.FUNC, 0, 0),
    (Kind.FUNC_PROTO, 0, 2), (Kind.VAR, 1, 0), (Kind.DATASEC, 0, 3), (Kind.FLOAT, 0, 0),
    (Kind.DECL_TAG, 1, 0), (Kind.TYPE_TAG, 0, 0), (Kind.ENUM64, 0, 3),
]:
    _FIXED_WORDS[_k] = _fixed
    _VLEN_WORDS[_k] = _per
# The same by the info word's top byte (kind_flag, 2 unused bits, kind), header included:
# the index pass then needs one shift per type (a 7.x kernel has 125,000).
_RECORD_WORDS = [3 + _FIXED_WORDS[_hi & 0x1F] for _hi in range(256)]
_RECORD_VLEN = [_VLEN_WORDS[_hi & 0x1F] for _hi in range(256)]

# Kinds whose third word is a type id rather than a size.
_REF_KINDS = frozenset({Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT,
                        Kind.FUNC, Kind.FUNC_PROTO, Kind.VAR, Kind.DECL_TAG, Kind.TYPE_TAG})
# Kinds that only qualify or rename another type: resolve() looks through them.
MODIFIER_KINDS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT,
                            Kind.TYPE_TAG})
_SIZED_KINDS = frozenset({Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.DATASEC,
                          Kind.FLOAT, Kind.ENUM64})
COMPOSITE_KINDS = frozenset({Kind.STRUCT, Kind.UNION})

INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4


class TypeNotFound(ProfileError, LookupError):
    """No type of that name/kind in the guest's BTF (catchable as LookupError for probing)."""


class MemberNotFound(ProfileError, LookupError):
    """A struct/union has no member of that name, even inside its anonymous members."""


@dataclass(frozen=True, slots=True)
class Member:
    """A struct/union member as BTF records it (offsets relative to its own struct)."""

    name: str  # "" for an anonymous struct/union member
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0 unless the struct has kind_flag set and this is a bitfield

    @property
    def offset(self) -> int:
        return self.bit_offset // 8


@dataclass(frozen=True, slots=True)
class Enumerator:
    name: str
    value: int


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type_id: int


@dataclass(frozen=True, slots=True)
class VarSecinfo:
    type_id: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class BtfType:
    """One decoded type; kind-specific fields keep their defaults when they do not apply."""

    id: int
    kind: Kind
    name: str
    kind_flag: bool = False
    vlen: int = 0
    size: int = 0  # INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC
    type_id: int = 0  # referenced type: PTR, TYPEDEF, qualifiers, FUNC, VAR, DECL_TAG, ARRAY elem
    int_encoding: int = 0
    int_offset: int = 0
    int_bits: int = 0
    index_type_id: int = 0  # ARRAY
    nelems: int = 0  # ARRAY
    members: tuple[Member, ...] = ()
    enumerators: tuple[Enumerator, ...] = ()
    params: tuple[Param, ...] = ()
    linkage: int = 0  # FUNC (vlen) and VAR
    secinfos: tuple[VarSecinfo, ...] = ()
    component_idx: int = -1  # DECL_TAG: -1 for the type itself, else member/param index

    @property
    def is_signed(self) -> bool:
        if self.kind == Kind.INT:
            return bool(self.int_encoding & INT_SIGNED)
        if self.kind in (Kind.ENUM, Kind.ENUM64):
            return self.kind_flag
        return False

    @property
    def is_bool(self) -> bool:
        return self.kind == Kind.INT and bool(self.int_encoding & INT_BOOL)

    @property
    def is_composite(self) -> bool:
        return self.kind in COMPOSITE_KINDS


@dataclass(frozen=True, slots=True)
class Field:
    """A member located from the start of the outermost struct: what readers need."""

    name: str
    bit_offset: int
    bit_size: int  # 0 unless a bitfield
    type_id: int

    @property
    def offset(self) -> int:
        return self.bit_offset // 8

    @property
    def is_bitfield(self) -> bool:
        return self.bit_size != 0


class Struct:
    """Layout of a struct/union with anonymous members flattened, for O(1) field lookup."""

    __slots__ = ("btf", "type", "fields", "_paths")

    def __init__(self, btf: BTF, btype: BtfType) -> None:
        self.btf = btf
        self.type = btype
        self.fields: dict[str, Field] = {}
        self._paths: dict[str, Field] = {}
        self._flatten(btype, 0, {btype.id}, [MAX_FLAT_FIELDS])

    def _flatten(self, btype: BtfType, base: int, path: set[int], budget: list[int]) -> None:
        """Members of BTYPE and of its anonymous members, within BUDGET members visited in
        all: one anonymous struct used twice at each of many levels costs 2**levels."""
        btf = self.btf
        for m in btype.members:
            budget[0] -= 1
            if budget[0] < 0:
                raise ProfileError(f"{btf.type_name(self.type.id)} has too many fields")
            bit_offset, bit_size = base + m.bit_offset, m.bitfield_size
            rid = btf.resolve(m.type_id)
            rkind = btf.kind(rid)
            if not btype.kind_flag and rkind == Kind.INT:
                # Legacy bitfields: the INT type itself carries the bit offset/size.
                it = btf.type(rid)
                if it.int_offset or it.int_bits != it.size * 8:
                    bit_offset += it.int_offset
                    bit_size = it.int_bits
            if m.name:
                self.fields.setdefault(m.name, Field(m.name, bit_offset, bit_size, m.type_id))
            elif rkind in COMPOSITE_KINDS:
                if rid in path:
                    raise ProfileError(
                        f"{btf.type_name(self.type.id)} contains itself (type {rid})")
                if len(path) > 64:
                    raise ProfileError(f"{btf.type_name(self.type.id)} nests too deeply")
                self._flatten(btf.type(rid), bit_offset, path | {rid}, budget)

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def id(self) -> int:
        return self.type.id

    @property
    def size(self) -> int:
        return self.type.size

    @property
    def is_union(self) -> bool:
        return self.type.kind == Kind.UNION

    @property
    def members(self) -> tuple[Member, ...]:
        return self.type.members

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def field(self, path: str) -> Field:
        """A member by name, searching anonymous members; 'a.b[2].c' paths are accepted too."""
        f = self.fields.get(path)
        if f is not None:
            return f
        f = self._paths.get(path)
        if f is None:
            f = self._walk_path(path)
            self._paths[path] = f
        return f

    def _walk_path(self, path: str) -> Field:
        btf = self.btf
        parts = _split_path(path)
        layout: Struct = self
        bit_base = 0
        f: Field | None = None
        for name, indices in parts:
            if f is not None:
                rid = btf.resolve(f.type_id)
                if btf.kind(rid) not in COMPOSITE_KINDS:
                    raise MemberNotFound(
                        f"{btf.type_name(f.type_id)} has no members (looking up {path!r})")
                layout = btf.layout(rid)
                bit_base += f.bit_offset
            inner = layout.fields.get(name)
            if inner is None:
                raise MemberNotFound(f"{btf.type_name(layout.id)} has no member {name!r}")
            f = Field(name, bit_base + inner.bit_offset, inner.bit_size, inner.type_id)
            for index in indices:
                rid = btf.resolve(f.type_id)
                at = btf.type(rid)
                if at.kind != Kind.ARRAY:
                    raise MemberNotFound(f"{btf.type_name(f.type_id)} is not an array ({path!r})")
                step = btf.sizeof(at.type_id) * 8
                f = Field(name, f.bit_offset + index * step, 0, at.type_id)
            bit_base = 0
        assert f is not None
        return f

    def offset(self, path: str) -> int:
        """Byte offset of a member (of the byte holding it, for a bitfield)."""
        return self.field(path).offset

    def __repr__(self) -> str:
        return f"<Struct {self.btf.type_name(self.id)} size={self.size} fields={len(self.fields)}>"


_PATH_PART = re.compile(r"([A-Za-z_$][A-Za-z0-9_$]*)((?:\[\d+\])*)")


def _split_path(path: str) -> list[tuple[str, list[int]]]:
    parts = []
    for piece in path.split("."):
        m = _PATH_PART.fullmatch(piece.strip())
        if m is None:
            raise MemberNotFound(f"bad member path {path!r}")
        parts.append((m.group(1), [int(i) for i in re.findall(r"\d+", m.group(2))]))
    return parts


INDEX_MAGIC = b"BTFi"  # index_bytes(), version 1
_INDEX_HEAD = "<4sIII"  # magic, type starts, words of the type section, named types


class BTF:
    """Lazily decoded BTF: a type index built in one pass, the rest on demand and cached."""

    def __init__(self, data: bytes, words: array, starts: array, strings: bytes,
                 endian: str) -> None:
        self.data = data
        self._words = words  # the type section as u32s in host order
        self._starts = starts  # word index of each type; slot 0 (void) unused
        self._strings = strings
        self._endian = endian
        self._types: dict[int, BtfType] = {}
        self._name_order: array | None = None  # type ids by name (see _by_name)
        self._resolved: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._layouts: dict[int, Struct] = {}
        self._lookups: dict[str, int] = {}
        self._pointers: dict[int, int] | None = None
        self.from_index = False  # indexed from a cached index_bytes(), not by a pass
        self._synthetic: dict[int, BtfType] = {}
        # Free-form memo for layers above (objects.py keeps its access plans here).
        self.cache: dict[Any, Any] = {}

    # ----- parsing

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, index: bytes | None = None
                   ) -> BTF:
        """Check the header and index every type; the cost is one pass over the types,
        none when INDEX (`index_bytes()` of this very blob, from a cache) fits it."""
        data = bytes(data)
        if len(data) < HEADER_SIZE:
            raise ProfileError(f"BTF blob truncated: {len(data)} bytes, the header needs "
                               f"{HEADER_SIZE}")
        if len(data) > MAX_BLOB_SIZE:
            raise ProfileError(f"BTF blob of {len(data)} bytes is implausibly large")
        magic = struct.unpack_from("<H", data)[0]
        if magic == BTF_MAGIC:
            endian = "<"
        elif magic == 0x9FEB:
            endian = ">"
        else:
            raise ProfileError(f"not BTF: magic {magic:#06x}, expected {BTF_MAGIC:#06x}")
        version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            endian + "BBIIIII", data, 2)
        if version != BTF_VERSION:
            raise ProfileError(f"unsupported BTF version {version}")
        if flags:
            raise ProfileError(f"unsupported BTF header flags {flags:#x}")
        if hdr_len < HEADER_SIZE or hdr_len > len(data):
            raise ProfileError(f"bad BTF header length {hdr_len} (blob is {len(data)} bytes)")
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(data):
            raise ProfileError(f"BTF truncated: type section ends at {t0 + type_len}, blob has "
                               f"{len(data)} bytes")
        if s0 + str_len > len(data):
            raise ProfileError(f"BTF truncated: string section ends at {s0 + str_len}, blob "
                               f"has {len(data)} bytes")
        if type_off % 4 or type_len % 4:
            raise ProfileError(f"misaligned BTF type section (off {type_off}, len {type_len})")
        if t0 < s0 + str_len and s0 < t0 + type_len:
            raise ProfileError("BTF type and string sections overlap")
        if str_len == 0 or str_len > MAX_NAME_OFFSET + 1:
            raise ProfileError(f"bad BTF string section length {str_len}")
        strings = data[s0:s0 + str_len]
        if strings[0] != 0 or strings[-1] != 0:
            raise ProfileError("BTF string section must start and end with NUL (split BTF of "
                               "a module is not supported)")
        words = array("I")
        if words.itemsize != 4:  # pragma: no cover - every CPython platform we run on
            raise ProfileError("array('I') is not 32-bit here")
        words.frombytes(data[t0:t0 + type_len])
        if (endian == "<") != (sys.byteorder == "little"):
            words.byteswap()
        cached = _cached_index(index, words) if index else None
        starts = cached[0] if cached else _index_types(words)
        btf = cls(data, words, starts, strings, endian)
        if cached:
            btf._name_order = cached[1]
        btf.from_index = cached is not None
        return btf

    def __len__(self) -> int:
        """Number of type ids, counting void (id 0)."""
        return len(self._starts)

    # ----- raw accessors (cheap, no decoding)

    def _check_id(self, tid: int, what: str = "type id") -> None:
        if not 0 <= tid < len(self._starts) and tid not in self._synthetic:
            raise ProfileError(f"BTF {what} {tid} out of range (have {len(self._starts)} types)")

    def kind(self, tid: int) -> Kind:
        if 0 < tid < len(self._starts):
            return _kind((self._words[self._starts[tid] + 1] >> 24) & 0x1F)
        if tid == 0:
            return Kind.VOID
        syn = self._synthetic.get(tid)
        if syn is None:
            self._check_id(tid)
        assert syn is not None
        return syn.kind

    def _ref(self, tid: int) -> int:
        """The referenced type of a reference kind, range-checked."""
        if tid in self._synthetic:
            return self._synthetic[tid].type_id
        ref = self._words[self._starts[tid] + 2]
        self._check_id(ref, f"type id (referenced by type {tid})")
        return ref

    def string(self, offset: int) -> str:
        """The NUL-terminated string at OFFSET in the string section."""
        if not 0 <= offset < len(self._strings):
            raise ProfileError(f"BTF string offset {offset} out of range "
                               f"({len(self._strings)} bytes of strings)")
        end = self._strings.index(b"\0", offset)  # the section ends with NUL: always found
        return self._strings[offset:end].decode("utf-8", "replace")

    def name(self, tid: int) -> str:
        if tid == 0:
            return "void"
        if tid in self._synthetic:
            return self._synthetic[tid].name
        self._check_id(tid)
        return self.string(self._words[self._starts[tid]])

    # ----- decoding

    def type(self, tid: int) -> BtfType:
        """The decoded type (cached)."""
        t = self._types.get(tid)
        if t is None:
            t = self._synthetic.get(tid) or self._decode(tid)
            self._types[tid] = t
        return t

    def _decode(self, tid: int) -> BtfType:
        self._check_id(tid)
        if tid == 0:
            return BtfType(0, Kind.VOID, "void")
        w, p = self._words, self._starts[tid]
        name_off, info, size_or_type = w[p], w[p + 1], w[p + 2]
        kind = _kind((info >> 24) & 0x1F)
        vlen, kflag = info & 0xFFFF, bool(info >> 31)
        name = self.string(name_off)
        p += 3
        check = self._check_id

        def ref(x: int) -> int:
            check(x, f"type id (used by type {tid})")
            return x

        common: dict[str, Any] = {"kind_flag": kflag, "vlen": vlen}
        if kind in _REF_KINDS:
            common["type_id"] = ref(size_or_type)
        else:
            common["size"] = size_or_type
        if kind == Kind.INT:
            enc = w[p]
            common.update(int_encoding=(enc >> 24) & 0x0F, int_offset=(enc >> 16) & 0xFF,
                          int_bits=enc & 0xFF)
            if common["int_bits"] > 128 or common["int_offset"] + common["int_bits"] > 8 * \
                    size_or_type:
                raise ProfileError(f"BTF int type {tid} ({name}) has a bad bit layout")
        elif kind == Kind.ARRAY:
            common.update(type_id=ref(w[p]), index_type_id=ref(w[p + 1]), nelems=w[p + 2])
        elif kind in COMPOSITE_KINDS:
            string = self.string
            members = []
            for i in range(p, p + 3 * vlen, 3):
                off = w[i + 2]
                if kflag:
                    members.append(Member(string(w[i]), ref(w[i + 1]), off & 0xFFFFFF, off >> 24))
                else:
                    members.append(Member(string(w[i]), ref(w[i + 1]), off, 0))
            common["members"] = tuple(members)
        elif kind == Kind.ENUM:
            fmt = "i" if kflag else "I"
            vals = array(fmt, w[p:p + 2 * vlen].tobytes())[1::2] if vlen else []
            common["enumerators"] = tuple(
                Enumerator(self.string(w[p + 2 * i]), vals[i]) for i in range(vlen))
        elif kind == Kind.ENUM64:
            enums = []
            for i in range(p, p + 3 * vlen, 3):
                v = w[i + 1] | (w[i + 2] << 32)
                if kflag and v >> 63:
                    v -= 1 << 64
                enums.append(Enumerator(self.string(w[i]), v))
            common["enumerators"] = tuple(enums)
        elif kind == Kind.FUNC_PROTO:
            params = []
            for i in range(p, p + 2 * vlen, 2):
                # The last param of a variadic function is (name 0, type 0): keep it.
                params.append(Param(self.string(w[i]), ref(w[i + 1])))
            common["params"] = tuple(params)
        elif kind == Kind.FUNC:
            common["linkage"] = vlen
        elif kind == Kind.VAR:
            common["linkage"] = w[p]
        elif kind == Kind.DATASEC:
            common["secinfos"] = tuple(VarSecinfo(ref(w[i]), w[i + 1], w[i + 2])
                                       for i in range(p, p + 3 * vlen, 3))
        elif kind == Kind.DECL_TAG:
            cidx = w[p]
            common["component_idx"] = cidx - (1 << 32) if cidx >> 31 else cidx
        return BtfType(tid, kind, name, **common)

    def types(self) -> Iterator[BtfType]:
        """Every type, decoding all of them: slow on a full vmlinux blob."""
        for tid in range(1, len(self._starts)):
            yield self.type(tid)

    def validate(self) -> None:
        """Decode everything and check every reference and chain (for tests and paranoia)."""
        for t in self.types():
            if t.kind in _REF_KINDS or t.kind == Kind.ARRAY:
                self.resolve(t.id)
            if t.kind in COMPOSITE_KINDS:
                self.layout(t.id)
            if t.kind == Kind.ARRAY:
                self.sizeof(t.id)

    # ----- names

    def _by_name(self) -> array:
        """The ids of the named types, ordered by name (ids in order among equal names): a
        name is then found by binary search, never by scanning the string section. Built
        with C-level passes (a 7.x kernel's BTF has 125,000 types, half of them anonymous:
        pointers, prototypes, qualifiers), or taken from a profile's cache."""
        order = self._name_order
        if order is None:
            w, starts, strings = self._words, self._starts, self._strings
            offsets = [w[start] for start in starts] if len(w) else [0]  # no types at all
            offsets[0] = 0  # type 0 is void
            if max(offsets) >= len(strings):
                tid = max(range(len(offsets)), key=offsets.__getitem__)
                raise ProfileError(f"BTF type {tid} has name offset {offsets[tid]} out of "
                                   f"range ({len(strings)} bytes of strings)")
            named = list(compress(range(len(offsets)), offsets))
            end = strings.index
            names = [strings[offsets[tid]:end(b"\0", offsets[tid])] for tid in named]
            order = self._name_order = array("I", map(
                named.__getitem__, sorted(range(len(named)), key=names.__getitem__)))
        return order

    def _name_bytes(self, tid: int) -> bytes:
        off = self._words[self._starts[tid]] if tid else 0
        return self._strings[off:self._strings.index(b"\0", off)]

    def _ids(self, name: bytes) -> list[int]:
        """Every type id called NAME, in id order."""
        if not name or b"\0" in name:
            return []
        order, of = self._by_name(), self._name_bytes
        low, high = 0, len(order)
        while low < high:  # the first id whose name is not below NAME
            mid = (low + high) // 2
            if of(order[mid]) < name:
                low = mid + 1
            else:
                high = mid
        ids = []
        while low < len(order) and of(order[low]) == name:
            ids.append(order[low])
            low += 1
        return ids

    def index_bytes(self) -> bytes:
        """What `from_bytes(..., index=)` takes to skip its passes over the types: the start
        of each type and the ids in name order (a profile caches them beside the blob)."""
        order = self._by_name()
        return struct.pack(_INDEX_HEAD, INDEX_MAGIC, len(self._starts), len(self._words),
                           len(order)) + self._starts.tobytes() + order.tobytes()

    def ids_named(self, name: str) -> list[int]:
        """Every type id with this exact name, in id order."""
        return self._ids(name.encode())

    def find_type(self, name: str, kind: Kind | int | Iterable[Kind | int] | None = None
                  ) -> BtfType | None:
        """Like type_named but None when absent, for probing kernel versions."""
        kinds = _kind_set(kind)
        best = None
        for tid in self._ids(name.encode()):
            k = self.kind(tid)
            if kinds is not None and k not in kinds:
                continue
            if kinds is None and k in (Kind.DECL_TAG,):
                continue
            if k != Kind.FWD:  # a full definition beats a forward declaration
                return self.type(tid)
            if best is None:
                best = tid
        return None if best is None else self.type(best)

    def type_named(self, name: str, kind: Kind | int | Iterable[Kind | int] | None = None
                   ) -> BtfType:
        """The type called NAME (of KIND); definitions beat FWD, then the lowest id wins."""
        t = self.find_type(name, kind)
        if t is None:
            what = f" of kind {kind!r}" if kind is not None else ""
            raise TypeNotFound(f"no BTF type named {name!r}{what}")
        return t

    def lookup(self, spec: str) -> int:
        """Type id of a C-style spec: 'struct task_struct', 'unsigned long', 'struct page *'."""
        tid = self._lookups.get(spec)
        if tid is not None:
            return tid
        text = spec.strip()
        depth = 0
        while text.endswith("*"):
            depth += 1
            text = text[:-1].rstrip()
        text = " ".join(text.split())
        for prefix in ("const ", "volatile "):
            if text.startswith(prefix):
                text = text[len(prefix):]
        kinds: tuple[Kind, ...] | None = None
        for prefix, ks in (("struct ", (Kind.STRUCT,)), ("union ", (Kind.UNION,)),
                           ("enum ", (Kind.ENUM, Kind.ENUM64))):
            if text.startswith(prefix):
                text, kinds = text[len(prefix):].strip(), ks
                break
        if text == "void" and kinds is None:
            tid = 0
        else:
            t = self.find_type(text, kinds or _DATA_KINDS)
            if t is None and kinds is None:
                for alias in _int_spellings(text):
                    t = self.find_type(alias, _DATA_KINDS)
                    if t is not None:
                        break
            if t is None and kinds in ((Kind.STRUCT,), (Kind.UNION,)):
                # Only declared: a FWD whose kind_flag says struct (0) or union (1).
                union = kinds == (Kind.UNION,)
                for fid in self.ids_named(text):
                    if self.kind(fid) == Kind.FWD and self.type(fid).kind_flag == union:
                        t = self.type(fid)
                        break
            if t is None:
                raise TypeNotFound(f"no BTF type {spec!r}")
            tid = t.id
        for _ in range(depth):
            tid = self.pointer_to(tid)
        self._lookups[spec] = tid
        return tid

    def struct(self, name: str) -> Struct:
        """Layout of the struct (or union) NAME; 'struct x'/'union x' prefixes are accepted."""
        for prefix, kinds in (("struct ", (Kind.STRUCT,)), ("union ", (Kind.UNION,))):
            if name.startswith(prefix):
                return self.layout(self.type_named(name[len(prefix):].strip(), kinds).id)
        t = self.find_type(name, COMPOSITE_KINDS)
        if t is None:
            t = self.find_type(name, Kind.TYPEDEF)
            if t is None or self.kind(self.resolve(t.id)) not in COMPOSITE_KINDS:
                raise TypeNotFound(f"no BTF struct or union named {name!r}")
        return self.layout(t.id)

    def layout(self, tid: int) -> Struct:
        """Layout of the struct/union TID is (after resolving typedefs and qualifiers)."""
        layout = self._layouts.get(tid)
        if layout is None:
            rid = self.resolve(tid)
            if self.kind(rid) not in COMPOSITE_KINDS:
                raise ProfileError(f"{self.type_name(tid)} is not a struct or union")
            layout = self._layouts.get(rid)
            if layout is None:
                layout = Struct(self, self.type(rid))
                self._layouts[rid] = layout
            self._layouts[tid] = layout
        return layout

    def member_offset(self, struct_name: str | int, path: str) -> int:
        """offsetof(struct, path) in bytes: 'pid', 'thread.sp', 'comm[0]'."""
        layout = self.layout(struct_name) if isinstance(struct_name, int) \
            else self.struct(struct_name)
        return layout.offset(path)

    def field(self, tid: int, path: str) -> Field:
        return self.layout(tid).field(path)

    # ----- type algebra

    def resolve(self, tid: int) -> int:
        """Strip typedef/const/volatile/restrict/type_tag; a cycle raises ProfileError."""
        r = self._resolved.get(tid)
        if r is not None:
            return r
        cur, seen = tid, set()
        while self.kind(cur) in MODIFIER_KINDS:
            if cur in seen:
                raise ProfileError(f"BTF type {tid} has a reference cycle (through type {cur})")
            seen.add(cur)
            cur = self._ref(cur)
        self._resolved[tid] = cur
        return cur

    def sizeof(self, tid: int) -> int:
        """Size in bytes; void, functions and forward declarations have none."""
        size = self._sizes.get(tid)
        if size is not None:
            return size
        mult, cur, seen = 1, tid, set()
        while True:
            cur = self.resolve(cur)
            if cur in seen:
                raise ProfileError(f"BTF type {tid} has a reference cycle (through type {cur})")
            seen.add(cur)
            kind = self.kind(cur)
            if kind in _SIZED_KINDS:
                size = mult * self._words[self._starts[cur] + 2] if cur not in self._synthetic \
                    else mult * self._synthetic[cur].size
                break
            if kind == Kind.PTR:
                size = mult * POINTER_SIZE
                break
            if kind == Kind.ARRAY:
                at = self.type(cur)
                mult *= at.nelems
                cur = at.type_id
            elif kind == Kind.VAR:
                cur = self._ref(cur)
            else:
                raise ProfileError(f"{self.type_name(tid)} ({kind.name}) has no size")
        self._sizes[tid] = size
        return size

    def pointer_to(self, tid: int) -> int:
        """Id of a pointer to TID: one from the blob, else a synthetic one (ids past the end)."""
        self._check_id(tid)
        pointers = self._pointers
        ptr = None if pointers is None else pointers.get(tid)
        if ptr is not None:
            return ptr
        with _SYNTHESIS:  # one BTF may serve several VMs' threads (VMs of the same build)
            if self._pointers is None:
                w, starts = self._words, self._starts
                ptrs: dict[int, int] = {}
                for i in range(len(starts) - 1, 0, -1):  # backwards: the lowest id wins
                    p = starts[i]
                    if (w[p + 1] >> 24) & 0x1F == Kind.PTR:
                        ptrs[w[p + 2]] = i
                self._pointers = ptrs
            ptr = self._pointers.get(tid)
            if ptr is None:
                ptr = len(self._starts) + len(self._synthetic)
                self._synthetic[ptr] = BtfType(ptr, Kind.PTR, "", type_id=tid)
                self._pointers[tid] = ptr
        return ptr

    def type_name(self, tid: int) -> str:
        """A C-like spelling of the type, for messages and reprs."""
        return self._spell(tid, 0, [256])

    def _spell(self, tid: int, depth: int, budget: list[int]) -> str:
        """type_name's work, within BUDGET types spelled in all: a hostile blob can make
        function types whose parameters are function types, exponentially many."""
        budget[0] -= 1
        if depth > 16 or budget[0] < 0:
            return "..."
        try:
            kind = self.kind(tid)
            if kind == Kind.VOID:
                return "void"
            t = self.type(tid)
        except ProfileError:
            return f"<bad type {tid}>"
        name = t.name
        if kind in (Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FWD):
            tag = {Kind.STRUCT: "struct", Kind.UNION: "union", Kind.ENUM: "enum",
                   Kind.ENUM64: "enum"}.get(kind) or ("union" if t.kind_flag else "struct")
            return f"{tag} {name or '<anonymous>'}"
        if kind == Kind.PTR:
            return self._spell(t.type_id, depth + 1, budget) + " *"
        if kind in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT):
            return f"{kind.name.lower()} {self._spell(t.type_id, depth + 1, budget)}"
        if kind == Kind.TYPE_TAG:
            return self._spell(t.type_id, depth + 1, budget)
        if kind == Kind.ARRAY:
            return f"{self._spell(t.type_id, depth + 1, budget)} [{t.nelems}]"
        if kind == Kind.FUNC_PROTO:
            params = ", ".join(self._spell(p.type_id, depth + 1, budget) if p.type_id else "..."
                               for p in t.params)
            return f"{self._spell(t.type_id, depth + 1, budget)} ({params})"
        return name or f"<anonymous {kind.name.lower()}>"

    @property
    def endian(self) -> str:
        """The guest's byte order as a struct prefix ("<" or ">"), from the BTF header."""
        return self._endian

    def __repr__(self) -> str:
        return f"<BTF {len(self) - 1} types, {len(self.data)} bytes>"


_DATA_KINDS = frozenset({Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FWD,
                         Kind.TYPEDEF, Kind.FLOAT, Kind.FUNC_PROTO})


def _int_spellings(text: str) -> list[str]:
    """GCC's and clang's DWARF names of a C integer type ('unsigned long' is GCC's
    'long unsigned int'), so lookups work whichever compiler built the kernel."""
    words = text.split()
    unsigned = "unsigned" in words
    signed = "signed" in words
    rest = [w for w in words if w not in ("signed", "unsigned", "int")]
    base = " ".join(rest)
    if base in ("_Bool", "bool"):
        return ["_Bool"]
    if base == "char":
        return ["unsigned char" if unsigned else "signed char" if signed else "char"]
    if base not in ("", "short", "long", "long long"):
        return []
    u = "unsigned " if unsigned else ""
    if not base:
        return [f"{u}int"]
    return [f"{base} {u}int", f"{u}{base}"]


def _kind_set(kind: Kind | int | Iterable[Kind | int] | None) -> frozenset[int] | None:
    if kind is None:
        return None
    if isinstance(kind, int):
        return frozenset({kind})
    return frozenset(kind)


def _cached_index(index: bytes, words: array) -> tuple[array, array] | None:
    """(type starts, ids by name) from INDEX, or None when it does not fit WORDS: a cache
    written for another blob, or cut short."""
    head = struct.calcsize(_INDEX_HEAD)
    if len(index) < head:
        return None
    magic, count, nwords, named = struct.unpack_from(_INDEX_HEAD, index)
    if magic != INDEX_MAGIC or nwords != len(words) or not count or named > count or \
            len(index) != head + 4 * (count + named):
        return None
    starts, order = array("I"), array("I")
    starts.frombytes(index[head:head + 4 * count])
    order.frombytes(index[head + 4 * count:])
    if starts[0] != 0 or (count > 1 and starts[-1] + 3 > nwords):
        return None
    return starts, order


def _index_types(words: array) -> array:
    """Record the start of every type in one pass; reject unknown kinds and truncation."""
    starts = array("I", [0])
    append = starts.append
    fixed = _FIXED_WORDS
    record, record_vlen = _RECORD_WORDS, _RECORD_VLEN
    n = len(words)
    pos = 0
    try:
        while pos < n:
            info = words[pos + 1]
            top = info >> 24
            nxt = pos + record[top] + (info & 0xFFFF) * record_vlen[top]
            if nxt > n:
                break
            append(pos)
            pos = nxt
    except IndexError:  # a header cut short in the last 8 bytes
        pass
    if pos != n:
        tid = len(starts)
        if pos + 3 > n:
            raise ProfileError(f"BTF type {tid} truncated: its header at byte {4 * pos} runs "
                               f"past the type section ({4 * n} bytes)")
        kind = (words[pos + 1] >> 24) & 0x1F
        if fixed[kind] == _BAD:
            raise ProfileError(f"BTF type {tid} at byte {4 * pos} has unknown kind {kind}")
        vlen = words[pos + 1] & 0xFFFF
        raise ProfileError(f"BTF type {tid} ({Kind(kind).name}, vlen {vlen}) at byte {4 * pos} "
                           f"runs past the type section ({4 * n} bytes)")
    if len(starts) - 1 > MAX_TYPE_ID:
        raise ProfileError(f"BTF has {len(starts) - 1} types, more than the format allows")
    return starts


# ----- finding the blob in guest memory

_NEEDLE = struct.pack("<HBB", BTF_MAGIC, BTF_VERSION, 0)
_PRINTABLE = bytes([0]) + bytes(range(0x20, 0x7F))


@dataclass(frozen=True, slots=True)
class BtfCandidate:
    paddr: int
    size: int
    clean: bool  # the type section tiles exactly and the strings are printable


def _check_header(memory: PhysicalMemory, paddr: int) -> int | None:
    """Total size of a plausible base-BTF blob starting at PADDR, or None."""
    try:
        hdr = memory.read(paddr, HEADER_SIZE)
    except CloudVMIError:  # unreadable just means "not here"
        return None
    if len(hdr) < HEADER_SIZE:
        return None
    _, _, _, hdr_len, type_off, type_len, str_off, str_len = struct.unpack("<HBBIIIII", hdr)
    if not HEADER_SIZE <= hdr_len <= 256 or type_off % 4 or type_len % 4 or type_len < 12:
        return None
    if not 0 < str_len <= MAX_NAME_OFFSET + 1:
        return None
    t_end, s_end = type_off + type_len, str_off + str_len
    if type_off < s_end and str_off < t_end:
        return None
    total = hdr_len + max(t_end, s_end)
    if total > MAX_BLOB_SIZE or not memory.contains(paddr, total):
        return None
    try:
        first = memory.read(paddr + hdr_len + str_off, 1)
        last = memory.read(paddr + hdr_len + s_end - 1, 1)
    except CloudVMIError:
        return None
    if first != b"\0" or last != b"\0":
        return None
    return total


def btf_candidates(memory: PhysicalMemory, start: int = 0, end: int | None = None
                   ) -> list[BtfCandidate]:
    """Every plausible BTF blob in guest RAM, best (clean, then largest) first.

    Guest RAM can hold stale or scattered copies of the blob (a user-space buffer that read
    /sys/kernel/btf/vmlinux, freed decompression buffers) whose header is intact but whose
    body is not, so each large candidate's type section is walked and its strings checked.
    """
    found = []
    for paddr in memory.find(_NEEDLE, start, end):
        total = _check_header(memory, paddr)
        if total is not None:
            found.append((paddr, total))
    out = []
    for paddr, total in found:
        out.append(BtfCandidate(paddr, total, _looks_clean(memory, paddr, total)))
    out.sort(key=lambda c: (not c.clean, -c.size, c.paddr))
    return out


def _looks_clean(memory: PhysicalMemory, paddr: int, total: int) -> bool:
    try:
        data = memory.read(paddr, total)
        btf = BTF.from_bytes(data)
    except CloudVMIError:  # a damaged candidate
        return False
    return not btf._strings.translate(None, _PRINTABLE)


def locate_btf(memory: PhysicalMemory, start: int = 0, end: int | None = None
               ) -> tuple[int, int]:
    """(paddr, total size) of the vmlinux BTF blob: the largest clean one in guest RAM."""
    candidates = btf_candidates(memory, start, end)
    if not candidates:
        raise ProfileError("no BTF blob in guest memory (kernel built without "
                           "CONFIG_DEBUG_INFO_BTF?)")
    best = candidates[0]
    return best.paddr, best.size


def load_btf(memory: PhysicalMemory, start: int = 0, end: int | None = None) -> BTF:
    """Find and parse the vmlinux BTF blob from guest RAM."""
    paddr, size = locate_btf(memory, start, end)
    return BTF.from_bytes(memory.read(paddr, size))

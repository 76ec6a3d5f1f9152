"""drgn-like typed objects over guest virtual memory, with types from the guest's BTF.

`task.mm.pgd` reads like C (and like drgn): '.' on a pointer to a struct dereferences it.
Walkers see guest data a hostile guest controls, so every list walk is bounded and
cycle-checked, and a NULL dereference raises a GuestMemoryError instead of reading page 0.

Member access is the hot path (a process list reads ~10 fields of ~1000 tasks): the first
access of (type, member) builds a plan (deref?, offset, member type, bitfield) that later
accesses find with one dict lookup; a value then costs one read of the address space.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Protocol

from cloudvmi.errors import GuestMemoryError, UnmappedAddress, WalkLimit
from cloudvmi.os.linux.btf import (
    BTF,
    COMPOSITE_KINDS,
    POINTER_SIZE,
    BtfType,
    Kind,
    ProfileError,
)

MASK64 = (1 << 64) - 1
STRING_LIMIT = 4096  # default bound on string_() reads
VALUE_LIMIT = 4096  # bound on elements value_() turns into a list
READ_LIMIT = 16 << 20  # bound on read_(): hostile BTF can claim huge arrays
VALUE_MEMBERS = 1 << 16  # bound on the members value_() reads of one struct, nested included


class AddressSpace(Protocol):
    """What objects read through: guest-virtual reads that raise UnmappedAddress."""

    def read(self, vaddr: int, size: int) -> bytes: ...


class NullPointerError(UnmappedAddress):
    """A NULL pointer was dereferenced (an UnmappedAddress, so one except catches both)."""

    def __init__(self, what: str = "pointer") -> None:
        GuestMemoryError.__init__(self, f"NULL pointer dereference ({what})")
        self.address = 0


# Value classes of a resolved type: what value_() does with it.
_INT, _BOOL, _PTR, _FLOAT, _STRUCT, _ARRAY, _OTHER = range(7)


class _Info:
    """Per-type facts the object code needs, computed once per type id."""

    __slots__ = ("rid", "code", "size", "signed", "target", "nelems", "elem_size")

    def __init__(self, btf: BTF, tid: int) -> None:
        rid = btf.resolve(tid)
        kind = btf.kind(rid)
        self.rid, self.size, self.signed = rid, 0, False
        self.target, self.nelems, self.elem_size = 0, 0, 0
        if kind in (Kind.INT, Kind.ENUM, Kind.ENUM64):
            t = btf.type(rid)
            self.code = _BOOL if t.is_bool else _INT
            self.size, self.signed = t.size, t.is_signed
        elif kind == Kind.PTR:
            self.code, self.size = _PTR, POINTER_SIZE
            self.target = btf.type(rid).type_id
            try:
                self.elem_size = btf.sizeof(self.target)
            except ProfileError:  # void *, function pointers: no arithmetic
                self.elem_size = 0
        elif kind == Kind.FLOAT:
            self.code, self.size = _FLOAT, btf.sizeof(rid)
        elif kind in COMPOSITE_KINDS:
            self.code, self.size = _STRUCT, btf.sizeof(rid)
        elif kind == Kind.ARRAY:
            t = btf.type(rid)
            self.code, self.target, self.nelems = _ARRAY, t.type_id, t.nelems
            self.elem_size = btf.sizeof(t.type_id)
            self.size = self.elem_size * self.nelems
        else:
            self.code = _OTHER


class _Types:
    """Object-side caches of one BTF: type infos and member access plans."""

    __slots__ = ("btf", "infos", "plans", "byteorder", "list_next")

    def __init__(self, btf: BTF) -> None:
        self.btf = btf
        self.infos: dict[int, _Info] = {}
        self.plans: dict[tuple[int, str], tuple[bool, int, int, int, int]] = {}
        self.byteorder = "little" if btf._endian == "<" else "big"
        self.list_next: int | None = None

    def info(self, tid: int) -> _Info:
        info = self.infos.get(tid)
        if info is None:
            info = self.infos[tid] = _Info(self.btf, tid)
        return info

    def type_id(self, spec: str | int | BtfType) -> int:
        if isinstance(spec, BtfType):
            spec = spec.id
        if isinstance(spec, str):
            return self.btf.lookup(spec)
        self.btf.kind(spec)  # range check
        return spec

    def plan(self, tid: int, name: str) -> tuple[bool, int, int, int, int]:
        """(dereference first?, byte offset, member type id, bit offset in byte, bit size)."""
        key = (tid, name)
        plan = self.plans.get(key)
        if plan is not None:
            return plan
        btf = self.btf
        info = self.info(tid)
        deref = info.code == _PTR
        target = btf.resolve(info.target) if deref else info.rid
        if info.code not in (_PTR, _STRUCT) or btf.kind(target) not in COMPOSITE_KINDS:
            raise AttributeError(f"{btf.type_name(tid)} has no member {name!r}")
        try:
            f = btf.layout(target).field(name)
        except LookupError as exc:
            raise AttributeError(str(exc)) from None
        bit_off = f.bit_offset % 8 if f.bit_size else 0
        plan = (deref, f.bit_offset // 8, f.type_id, bit_off, f.bit_size)
        self.plans[key] = plan
        return plan

    def next_offset(self) -> int:
        if self.list_next is None:
            self.list_next = self.btf.member_offset("list_head", "next")
        return self.list_next


def _types(btf: BTF) -> _Types:
    types = btf.cache.get(_Types)
    if types is None:
        types = btf.cache[_Types] = _Types(btf)
    return types


def _read(space: AddressSpace, address: int, size: int) -> bytes:
    data = space.read(address, size)
    if len(data) != size:
        raise GuestMemoryError(f"short read at {address:#x}: {len(data)} of {size} bytes")
    return data


def _read_pointer(space: AddressSpace, address: int, order: str = "little") -> int:
    data = space.read(address, POINTER_SIZE)
    if len(data) != POINTER_SIZE:
        raise GuestMemoryError(f"short read at {address:#x}")
    return int.from_bytes(data, order)


_new = object.__new__
_RESERVED = frozenset({"_space", "_types", "_tid", "_address", "_value", "_bit_off",
                       "_bit_size"})


class Object:
    """A typed value in guest memory (or a computed value, e.g. a pointer)."""

    __slots__ = ("_space", "_types", "_tid", "_address", "_value", "_bit_off", "_bit_size")

    def __init__(self, space: AddressSpace, btf: BTF, type: str | int | BtfType,
                 address: int | None = None, *, value: Any = None) -> None:
        types = _types(btf)
        if (address is None) == (value is None):
            raise ValueError("an Object needs exactly one of address and value")
        if address is not None and not 0 <= address <= MASK64:
            raise ValueError(f"address {address:#x} is not a 64-bit address")
        self._space = space
        self._types = types
        self._tid = types.type_id(type)
        self._address = address
        self._value = value
        self._bit_off = 0
        self._bit_size = 0

    @staticmethod
    def _make(space: AddressSpace, types: _Types, tid: int, address: int | None,
              value: Any = None, bit_off: int = 0, bit_size: int = 0) -> Object:
        obj = _new(Object)
        obj._space = space
        obj._types = types
        obj._tid = tid
        obj._address = address
        obj._value = value
        obj._bit_off = bit_off
        obj._bit_size = bit_size
        return obj

    # ----- identity

    @property
    def address_(self) -> int | None:
        """Guest-virtual address, None for a computed value."""
        return self._address

    @property
    def type_(self) -> BtfType:
        return self._types.btf.type(self._tid)

    @property
    def type_id_(self) -> int:
        return self._tid

    @property
    def type_name_(self) -> str:
        return self._types.btf.type_name(self._tid)

    @property
    def btf_(self) -> BTF:
        return self._types.btf

    @property
    def space_(self) -> AddressSpace:
        return self._space

    @property
    def bit_field_size_(self) -> int:
        return self._bit_size

    def sizeof_(self) -> int:
        return self._types.btf.sizeof(self._tid)

    # ----- members and elements

    def __getattr__(self, name: str) -> Object:
        """obj.member: the hot path, hence member_()'s body is here."""
        if name in _RESERVED or (name.startswith("__") and name.endswith("__")):
            # Our own slots (before __init__ finished) and protocol probes (copy, pickle).
            raise AttributeError(name)
        types = self._types
        plan = types.plans.get((self._tid, name)) or types.plan(self._tid, name)
        deref, offset, tid, bit_off, bit_size = plan
        if deref:
            base = self._pointer()
            if not base:
                raise NullPointerError(f"{types.btf.type_name(self._tid)} ->{name}")
        else:
            base = self._address
            if base is None:
                raise GuestMemoryError(f"member {name!r} of a value that is not in memory")
        return Object._make(self._space, types, tid, (base + offset) & MASK64, None,
                            bit_off, bit_size)

    def member_(self, name: str) -> Object:
        """A member (or 'a.b[1].c' path); through a pointer to a struct it dereferences."""
        return self.__getattr__(name)

    def _pointer(self) -> int:
        if self._value is not None:
            return int(self._value)
        return _read_pointer(self._space, self._address, self._types.byteorder)

    def __getitem__(self, index: int) -> Object:
        """Element of an array (bounds-checked unless flexible) or of a pointer (C rules)."""
        index = int(index)
        info = self._types.info(self._tid)
        if info.code == _ARRAY:
            if self._address is None:
                raise GuestMemoryError("indexing an array that is not in memory")
            if info.nelems and not 0 <= index < info.nelems:
                raise IndexError(f"index {index} out of range for {self.type_name_}")
            base = self._address
        elif info.code == _PTR:
            if not info.elem_size:
                raise TypeError(f"cannot index {self.type_name_}")
            base = self._pointer()
            if not base:
                raise NullPointerError(f"{self.type_name_}[{index}]")
        else:
            raise TypeError(f"{self.type_name_} is not an array or pointer")
        return Object._make(self._space, self._types, info.target,
                            (base + index * info.elem_size) & MASK64)

    def __len__(self) -> int:
        info = self._types.info(self._tid)
        if info.code != _ARRAY:
            raise TypeError(f"{self.type_name_} has no length")
        return info.nelems

    def __iter__(self) -> Iterator[Object]:
        for i in range(len(self)):
            yield self[i]

    def deref_(self) -> Object:
        """*ptr."""
        info = self._types.info(self._tid)
        if info.code != _PTR:
            raise TypeError(f"cannot dereference {self.type_name_}")
        base = self._pointer()
        if not base:
            raise NullPointerError(self.type_name_)
        return Object._make(self._space, self._types, info.target, base)

    def address_of_(self) -> Object:
        """&obj, as a pointer value."""
        if self._address is None or self._bit_size:
            raise GuestMemoryError("cannot take the address of a value not in memory")
        ptr = self._types.btf.pointer_to(self._tid)
        return Object._make(self._space, self._types, ptr, None, self._address)

    def cast_(self, type: str | int | BtfType) -> Object:
        """Reinterpret: same address (or same value) under another type."""
        tid = self._types.type_id(type)
        return Object._make(self._space, self._types, tid, self._address, self._value,
                            self._bit_off, self._bit_size)

    def container_of_(self, type: str | int | BtfType, member: str) -> Object:
        return container_of(self, type, member)

    # ----- values

    def read_(self) -> bytes:
        """The raw bytes of the object (for a bitfield: the bytes that hold it)."""
        if self._address is None:
            info = self._types.info(self._tid)
            if info.code in (_INT, _BOOL, _PTR):
                return (int(self._value) & ((1 << (8 * info.size)) - 1)).to_bytes(
                    info.size, self._types.byteorder)
            raise GuestMemoryError("raw bytes of a value that is not in memory")
        if self._bit_size:
            return _read(self._space, self._address, (self._bit_off + self._bit_size + 7) // 8)
        size = self.sizeof_()
        if size > READ_LIMIT:
            raise GuestMemoryError(f"{self.type_name_} is {size} bytes: too big to read at once")
        return _read(self._space, self._address, size)

    def value_(self) -> Any:
        """int/bool for scalars and pointers, float, dict for structs, list for arrays."""
        try:
            return self._value_of(0, [VALUE_MEMBERS])
        except RecursionError:  # arrays of arrays of ..., as deep as hostile BTF likes
            raise WalkLimit(f"{self.type_name_} nests too deeply to read as one value") from None

    def _value_of(self, depth: int, budget: list[int]) -> Any:
        """value_() with DEPTH structs above, within BUDGET members and elements in all:
        hostile BTF can nest structs of many struct members, or arrays of the struct itself,
        exponentially many."""
        if self._value is not None:
            return self._value
        info = self._types.info(self._tid)
        code = info.code
        if self._bit_size:
            return self._bitfield(info)
        if code in (_INT, _PTR):
            data = self._space.read(self._address, info.size)
            if len(data) != info.size:
                raise GuestMemoryError(f"short read at {self._address:#x}")
            return int.from_bytes(data, self._types.byteorder, signed=info.signed)
        if code == _BOOL:
            return _read(self._space, self._address, info.size) != bytes(info.size)
        if code == _FLOAT:
            fmt = {2: "e", 4: "f", 8: "d"}.get(info.size)
            if fmt is None:
                raise TypeError(f"cannot convert {self.type_name_} to a Python float")
            order = "<" if self._types.byteorder == "little" else ">"
            return struct.unpack(order + fmt, _read(self._space, self._address, info.size))[0]
        if code == _STRUCT:
            return self._struct_value(depth, budget)
        if code == _ARRAY:
            out = []
            for i in range(min(info.nelems, VALUE_LIMIT)):
                self._spend(budget)
                out.append(self[i]._value_of(depth, budget))
            return out
        raise TypeError(f"{self.type_name_} has no value")

    def _spend(self, budget: list[int]) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise WalkLimit(f"{self.type_name_} has more than {VALUE_MEMBERS} members to read "
                            "as one value")

    def _struct_value(self, depth: int, budget: list[int]) -> dict[str, Any]:
        if depth > 8:
            return {}
        layout = self._types.btf.layout(self._tid)
        out: dict[str, Any] = {}
        for name in layout.fields:
            self._spend(budget)
            member = self.member_(name)
            info = self._types.info(member._tid)
            try:
                if info.code == _STRUCT:
                    out[name] = member._struct_value(depth + 1, budget)
                elif info.code == _OTHER:
                    continue
                else:
                    out[name] = member._value_of(depth + 1, budget)
            except GuestMemoryError as exc:
                out[name] = exc
        return out

    def _bitfield(self, info: _Info) -> int:
        bit_off, bit_size = self._bit_off, self._bit_size
        data = _read(self._space, self._address, (bit_off + bit_size + 7) // 8)
        v = (int.from_bytes(data, "little") >> bit_off) & ((1 << bit_size) - 1)
        if info.signed and v >> (bit_size - 1):
            v -= 1 << bit_size
        return bool(v) if info.code == _BOOL else v

    def __int__(self) -> int:
        if self._value is None and not self._bit_size:  # fast path: a plain int or pointer
            info = self._types.infos.get(self._tid)
            if info is not None and (info.code == _INT or info.code == _PTR):  # noqa: SIM109
                data = self._space.read(self._address, info.size)
                if len(data) == info.size:
                    return int.from_bytes(data, self._types.byteorder, signed=info.signed)
        value = self.value_()
        if isinstance(value, (int, float)):
            return int(value)
        raise TypeError(f"cannot convert {self.type_name_} to int")

    def __index__(self) -> int:
        value = self.value_()
        if isinstance(value, int):
            return int(value)
        raise TypeError(f"cannot use {self.type_name_} as an integer")

    def __float__(self) -> float:
        return float(self.value_())

    def __bool__(self) -> bool:
        info = self._types.info(self._tid)
        if info.code in (_STRUCT, _ARRAY, _OTHER) and self._value is None:
            raise TypeError(f"{self.type_name_} has no truth value")
        return bool(self.value_())

    def string_(self, limit: int = STRING_LIMIT) -> bytes:
        """A C string from a char array or char pointer, at most LIMIT bytes, NUL excluded."""
        info = self._types.info(self._tid)
        if info.code == _ARRAY and info.nelems:
            if self._address is None:
                raise GuestMemoryError("string of an array not in memory")
            data = _read(self._space, self._address, min(info.size, limit))
            end = data.find(b"\0")
            return data if end < 0 else data[:end]
        if info.code == _ARRAY:
            address = self._address
        elif info.code == _PTR:
            address = self._pointer()
            if not address:
                raise NullPointerError(f"string of {self.type_name_}")
        else:
            raise TypeError(f"{self.type_name_} is not a string")
        assert address is not None
        return read_string(self._space, address, limit)

    def __repr__(self) -> str:
        where = f"at {self._address:#x}" if self._address is not None else "value"
        text = f"Object({self.type_name_} {where}"
        info = self._types.info(self._tid)
        if info.code in (_INT, _BOOL, _PTR, _FLOAT) or self._value is not None:
            try:
                value = self.value_()
                text += f" = {value:#x}" if info.code == _PTR and isinstance(value, int) \
                    else f" = {value!r}"
            except (GuestMemoryError, TypeError):
                text += " = <unreadable>"
        return text + ")"


def read_string(space: AddressSpace, address: int, limit: int = STRING_LIMIT) -> bytes:
    """NUL-terminated bytes at ADDRESS, read page by page so a string ending just before an
    unmapped page still reads; at most LIMIT bytes."""
    out = bytearray()
    while len(out) < limit:
        n = min(4096 - (address & 0xFFF), limit - len(out))
        chunk = _read(space, address, n)
        end = chunk.find(b"\0")
        if end >= 0:
            out += chunk[:end]
            break
        out += chunk
        address = (address + n) & MASK64
    return bytes(out)


def _context(obj: Object | int, space: AddressSpace | None, btf: BTF | None
             ) -> tuple[AddressSpace, BTF]:
    if isinstance(obj, Object):
        return obj._space, obj._types.btf
    if space is None or btf is None:
        raise TypeError("pass space= and btf= when giving a plain address")
    return space, btf


def _as_address(obj: Object | int) -> int:
    """A pointer's value, a struct's address, or the int itself."""
    if isinstance(obj, Object):
        if obj._types.info(obj._tid).code == _PTR or obj._address is None:
            return int(obj)
        return obj._address
    return int(obj)


def container_of(ptr: Object | int, type: str | int | BtfType, member: str, *,
                 space: AddressSpace | None = None, btf: BTF | None = None) -> Object:
    """The TYPE object whose MEMBER lives at PTR (a pointer, an embedded struct, or an int)."""
    space, btf = _context(ptr, space, btf)
    types = _types(btf)
    tid = types.type_id(type)
    address = _as_address(ptr)
    offset = btf.layout(tid).offset(member)
    return Object._make(space, types, tid, (address - offset) & MASK64)


def list_for_each(head: Object | int, *, space: AddressSpace | None = None,
                  btf: BTF | None = None, limit: int = 100_000) -> Iterator[int]:
    """Addresses of the nodes of the circular struct list_head at HEAD (head excluded).

    Bounded: a node seen twice (a cycle that skips the head) or more than LIMIT nodes raises
    WalkLimit; a NULL or unmapped link raises its GuestMemoryError. Either way the error
    carries `.partial`, the node addresses walked so far, so callers can report partial data.
    """
    space, btf = _context(head, space, btf)
    types = _types(btf)
    head_addr = _as_address(head)
    next_off = types.next_offset()
    order = types.byteorder
    seen: set[int] = set()
    nodes: list[int] = []
    try:
        node = _read_pointer(space, head_addr + next_off, order)
        while node != head_addr:
            if not node:
                raise NullPointerError(f"list_head.next after {len(nodes)} nodes")
            if node in seen:
                raise WalkLimit(f"list at {head_addr:#x} loops back to node {node:#x} after "
                                f"{len(nodes)} nodes without reaching the head")
            if len(nodes) >= limit:
                raise WalkLimit(f"list at {head_addr:#x} has more than {limit} nodes")
            # Read the link before yielding, so an unreadable node is never handed out.
            nxt = _read_pointer(space, (node + next_off) & MASK64, order)
            seen.add(node)
            nodes.append(node)
            yield node
            node = nxt
    except GuestMemoryError as exc:
        exc.partial = nodes  # type: ignore[attr-defined]
        raise


def list_for_each_entry(type: str | int | BtfType, head: Object | int, member: str, *,
                        space: AddressSpace | None = None, btf: BTF | None = None,
                        limit: int = 100_000) -> Iterator[Object]:
    """The TYPE objects linked through their MEMBER list_head into the list at HEAD.

    Same bounds as list_for_each; on error `.partial` holds the objects yielded so far.
    """
    space, btf = _context(head, space, btf)
    types = _types(btf)
    tid = types.type_id(type)
    offset = btf.layout(tid).offset(member)
    items: list[Object] = []
    try:
        for node in list_for_each(head, space=space, btf=btf, limit=limit):
            obj = Object._make(space, types, tid, (node - offset) & MASK64)
            items.append(obj)
            yield obj
    except GuestMemoryError as exc:
        exc.partial = items  # type: ignore[attr-defined]
        raise


class TypedMemory:
    """A guest address space and its BTF together, so calls need not repeat them."""

    def __init__(self, space: AddressSpace, btf: BTF) -> None:
        self.space = space
        self.btf = btf

    def object(self, type: str | int | BtfType, address: int) -> Object:
        return Object(self.space, self.btf, type, address)

    def value(self, type: str | int | BtfType, value: Any) -> Object:
        return Object(self.space, self.btf, type, value=value)

    def container_of(self, ptr: Object | int, type: str | int | BtfType,
                     member: str) -> Object:
        return container_of(ptr, type, member, space=self.space, btf=self.btf)

    def list_for_each(self, head: Object | int, limit: int = 100_000) -> Iterator[int]:
        return list_for_each(head, space=self.space, btf=self.btf, limit=limit)

    def list_for_each_entry(self, type: str | int | BtfType, head: Object | int, member: str,
                            limit: int = 100_000) -> Iterator[Object]:
        return list_for_each_entry(type, head, member, space=self.space, btf=self.btf,
                                   limit=limit)

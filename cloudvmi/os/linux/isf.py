"""Volatility 3 ISF (Intermediate Symbol Format) files, to and from CloudVMI's BTF.

Many cloud kernels carry no BTF in memory, but their users may hold a Volatility 3 ISF for the
exact build (JSON, usually .json.xz, made by dwarf2json from the debug vmlinux). isf_to_btf
re-encodes its types as BTF, so every layer above btf.py works unchanged; btf_to_isf goes the
other way, exporting a guest's own BTF and kallsyms as an ISF Volatility can load.

The format is Volatility's schema (volatility3/schemas/schema-6.2.0.json) as dwarf2json writes
it: struct names without "struct ", typedefs and qualifiers resolved away (except a typedef of
an anonymous struct, which names it), anonymous struct/union members as fields
"unnamed_field_N" with "anonymous": true whose types are user types named "unnamed_<hash>",
bitfields as byte offset + bit_position, and the kernel banner as the base64 constant_data of
the linux_banner symbol (what Volatility's LinuxIdentifier matches against memory).

An ISF is input we do not trust: every piece is type- and range-checked, descriptor nesting and
counts are bounded, by-value containment cycles are refused, and any problem is a ProfileError.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import re
import zlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager as ContextManager
from typing import Any, BinaryIO

from cloudvmi.errors import ProfileError
from cloudvmi.os.linux.btf import (
    BTF,
    COMPOSITE_KINDS,
    INT_BOOL,
    INT_SIGNED,
    MODIFIER_KINDS,
    Enumerator,
    Kind,
    Member,
)
from cloudvmi.os.linux.btf_encode import MAX_VLEN, BtfBuilder

MAX_ISF_BYTES = 1 << 30  # decompressed; a full kernel ISF is ~30-60 MB
MAX_DEPTH = 32  # type descriptor nesting (pointer to array of pointer ...); C needs a handful
MAX_EXPORT_DEPTH = 100  # descriptors being built at once, anonymous types included
FORMAT_VERSION = "6.2.0"  # what dwarf2json writes and the newest Volatility 3 reads
PRODUCER = "cloudvmi"
_U32 = 0xFFFFFFFF
_ANON_NAME = re.compile(r"unnamed_[0-9a-f]+")
_FORMAT = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})\.([0-9]{1,9})")
_CHUNK = 1 << 20

# Types of well-known kernel globals, as the kernel declares them, for Volatility plugins
# that read them through their symbol's type (kallsyms has addresses only; BTF types only
# per-cpu variables). A kernel without the type leaves the symbol untyped.
KNOWN_SYMBOL_TYPES = {
    "init_task": "struct task_struct",
    "init_mm": "struct mm_struct",
    "init_net": "struct net",
    "init_pid_ns": "struct pid_namespace",
    "init_uts_ns": "struct uts_namespace",
    "init_files": "struct files_struct",
    "modules": "struct list_head",
    "super_blocks": "struct list_head",
    "net_namespace_list": "struct list_head",
    "module_kset": "struct kset *",
    "mod_tree": "struct mod_tree_root",
    "module_addr_min": "unsigned long",
    "module_addr_max": "unsigned long",
    "cap_last_cap": "int",
    "vmemmap_base": "unsigned long",
    "page_offset_base": "unsigned long",
    "vmalloc_base": "unsigned long",
    "mem_map": "struct page *",
    "ftrace_mod_maps": "struct list_head",
    "ftrace_ops_trampoline_list": "struct list_head",
    "bpf_kallsyms": "struct list_head",
    "timekeeper": "struct timekeeper",
    "tk_core": "struct tk_data",  # 6.13+; before, an anonymous struct (below)
    "socket_file_ops": "struct file_operations",
    "sockfs_dentry_operations": "struct dentry_operations",
    "tty_drivers": "struct list_head",
    "prog_idr": "struct idr",
    "prb": "struct printk_ringbuffer *",
    "log_buf": "char *",
    "log_buf_len": "u32",
    "keyboard_notifier_list": "struct atomic_notifier_head",
    "ftrace_ops_list": "struct ftrace_ops *",
    "ftrace_list_end": "struct ftrace_ops",
}
# Globals of an anonymous struct type (`static struct { ... } tk_core`), told by their
# members' names.
ANONYMOUS_SYMBOL_TYPES = {
    "tk_core": ("seq", "timekeeper"),
}
# Arrays whose length is a kernel constant (no BTF has it): their element type; the caller
# gives the count it found (btf_to_isf's COUNTS).
KNOWN_ARRAY_TYPES = {
    "taint_flags": "struct taint_flag",  # const struct taint_flag taint_flags[TAINT_FLAGS_COUNT]
}
# Linker-defined section bounds (`extern char _text[]`): Volatility takes their addresses
# through typed objects.
SECTION_SYMBOLS = ("_text", "_stext", "_etext", "_sdata", "_edata", "__bss_start",
                   "__bss_stop", "_end", "_sinittext", "_einittext", "__init_begin",
                   "__init_end", "__start_rodata", "__end_rodata")


# ----- loading


def load_isf(path: str | os.PathLike[str], max_bytes: int = MAX_ISF_BYTES) -> dict[str, Any]:
    """Read an ISF (.json, or compressed .json.xz/.gz/.bz2, told by its magic), refusing one
    that decompresses past MAX_BYTES or is not an ISF."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(6)
            raw.seek(0)
            with _decompressor(magic)(raw) as stream:
                data = bytearray()
                while chunk := stream.read(_CHUNK):
                    data += chunk
                    if len(data) > max_bytes:
                        raise ProfileError(f"ISF {path} decompresses past {max_bytes} bytes")
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise ProfileError(f"cannot read ISF {path}: {exc}") from exc
    try:
        isf = json.loads(data)
    except RecursionError as exc:
        raise ProfileError(f"ISF {path} nests too deeply to be a symbol table") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise ProfileError(f"ISF {path} is not valid JSON: {exc}") from exc
    return check_isf(isf, str(path))


def _decompressor(magic: bytes) -> Callable[[BinaryIO], ContextManager[BinaryIO]]:
    if magic.startswith(b"\xfd7zXZ\0"):
        return lzma.LZMAFile
    if magic.startswith(b"\x1f\x8b"):
        return lambda raw: gzip.GzipFile(fileobj=raw)
    if magic.startswith(b"BZh"):
        return bz2.BZ2File
    return contextlib.nullcontext


def check_isf(isf: Any, where: str = "ISF") -> dict[str, Any]:
    """ISF's top level, or ProfileError: a JSON object with metadata.format and the type and
    symbol tables as objects (enums and symbols may be absent)."""
    if not isinstance(isf, dict):
        raise ProfileError(f"{where} is not an ISF: its JSON is a {type(isf).__name__}, not an "
                           "object")
    meta = isf.get("metadata")
    fmt = meta.get("format") if isinstance(meta, dict) else None
    m = _FORMAT.fullmatch(fmt) if isinstance(fmt, str) else None
    if m is None:
        raise ProfileError(f"{where} is not an ISF: no metadata.format version")
    if not 2 <= int(m.group(1)) <= 6:
        raise ProfileError(f"{where}: unsupported ISF format {fmt}")
    for key in ("base_types", "user_types"):
        if key not in isf:
            raise ProfileError(f"{where} is not an ISF: it has no {key}")
    for key in ("base_types", "user_types", "enums", "symbols"):
        if key in isf and not isinstance(isf[key], dict):
            raise ProfileError(f"{where}: {key} is a {type(isf[key]).__name__}, not an object")
    return isf


def isf_symbols(isf: Mapping[str, Any]) -> dict[str, int]:
    """Every symbol's address, by name."""
    symbols = check_isf(isf).get("symbols", {})
    out = {}
    for name, sym in symbols.items():
        if not isinstance(sym, dict):
            raise ProfileError(f"ISF symbol {str(name)[:60]!r} is not an object")
        addr = sym.get("address")
        if isinstance(addr, float) and addr.is_integer() and 0 <= addr < 1 << 53:
            addr = int(addr)
        out[name] = _int(addr, f"address of symbol {_show(name)}", 0, (1 << 64) - 1)
    return out


def isf_banner(isf: Mapping[str, Any]) -> bytes | None:
    """The kernel banner ("Linux version ...\\n") the ISF was made for, up to its NUL, as
    CloudVMI's profile records it; None if the ISF has none."""
    sym = check_isf(isf).get("symbols", {}).get("linux_banner")
    if sym is None:
        return None
    data = sym.get("constant_data") if isinstance(sym, dict) else None
    if data is None:
        return None
    if not isinstance(data, str):
        raise ProfileError("ISF linux_banner constant_data is not a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProfileError(f"ISF linux_banner constant_data is not base64: {exc}") from exc
    return raw.split(b"\0", 1)[0]


# ----- ISF -> BTF


def isf_to_btf(isf: Mapping[str, Any]) -> bytes:
    """A BTF blob with the ISF's base types, structs, unions and enums (parse with
    BTF.from_bytes). Referenced but undefined structs become FWD, base types void-sized ints,
    enums empty enums; a struct that contains itself by value is refused."""
    return _IsfToBtf(check_isf(isf)).run()


def _int(value: Any, what: str, lo: int = 0, hi: int = _U32) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProfileError(f"ISF {what}: {_show(value)} is not an integer in [{lo}, {hi}]")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ProfileError(f"ISF {what}: {_show(value)} is not a string")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProfileError(f"ISF {what}: {_show(value)} is not an object")
    return value


def _show(value: Any) -> str:
    """A short, cheap rendering of a hostile value for a message."""
    if isinstance(value, dict | list):
        return f"a {'JSON object' if isinstance(value, dict) else 'list'} of {len(value)} items"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value[:61] if isinstance(value, str) else value)
    return text if len(text) <= 60 else text[:57] + "..."


Key = tuple[Any, ...]


class _IsfToBtf:
    def __init__(self, isf: Mapping[str, Any]) -> None:
        self.b = BtfBuilder()
        self.base_types: dict[str, Any] = isf["base_types"]
        self.user_types: dict[str, Any] = isf["user_types"]
        self.enums: dict[str, Any] = isf.get("enums", {})
        self.base_ids: dict[str, int] = {}
        self.user_ids: dict[str, int] = {}
        self.enum_ids: dict[str, int] = {}
        self.ids: dict[Key, int] = {}  # descriptor -> type id
        self.contains: dict[str, set[str]] = {}  # user type -> user types it holds by value

    def run(self) -> bytes:
        endians = set()
        for name, bt in self.base_types.items():
            bt = _obj(bt, f"base type {_str(name, 'base type name')!r}")
            endian = bt.get("endian", "little")
            if endian not in ("little", "big"):
                raise ProfileError(f"ISF base type {_show(name)} has endianness {_show(endian)}")
            endians.add(endian)
            if name not in ("void", "pointer"):
                self.base_ids[name] = self._base(name, bt)
        if len(endians) > 1:
            raise ProfileError("ISF base types mix little and big endian")
        for name, ut in self.user_types.items():
            ut = _obj(ut, f"user type {_str(name, 'user type name')!r}")
            kind = ut.get("kind")
            if kind not in ("struct", "union", "class"):
                raise ProfileError(f"ISF user type {_show(name)} has kind {_show(kind)}")
            size = _int(ut.get("size"), f"size of {_show(name)}")
            btf_name = "" if _ANON_NAME.fullmatch(name) else name
            self.user_ids[name] = self.b.add_struct(btf_name, size, union=kind == "union")
        for name, en in self.enums.items():
            en = _obj(en, f"enum {_show(_str(name, 'enum name'))}")
            self.enum_ids[name] = self._enum(name, en)
        for name, ut in self.user_types.items():
            self.b.set_members(self.user_ids[name], self._members(name, ut))
        self._check_cycles()
        return self.b.to_bytes(">" if endians == {"big"} else "<")

    def _base(self, name: str, bt: dict[str, Any]) -> int:
        size = _int(bt.get("size"), f"size of base type {_show(name)}")
        kind = bt.get("kind")
        signed = bt.get("signed", False)
        if not isinstance(signed, bool):
            raise ProfileError(f"ISF base type {_show(name)}: signed is {_show(signed)}")
        if kind == "float":
            return self.b.add_float(name, size)
        if kind == "void":
            return self.b.add_int(name, size, bits=0)
        if kind in ("int", "char", "bool"):
            return self.b.add_int(name, size, signed=signed, is_bool=kind == "bool")
        raise ProfileError(f"ISF base type {_show(name)} has kind {_show(kind)}")

    def _enum(self, name: str, en: dict[str, Any]) -> int:
        size = _int(en.get("size"), f"size of enum {_show(name)}")
        constants = _obj(en.get("constants"), f"constants of enum {_show(name)}")
        if len(constants) > MAX_VLEN:
            raise ProfileError(f"ISF enum {_show(name)} has {len(constants)} constants")
        values = [Enumerator(_str(k, f"constant name in enum {_show(name)}"),
                             _int(v, f"value of {_show(k)}", -(1 << 63), (1 << 64) - 1))
                  for k, v in constants.items()]
        return self.b.add_enum("" if _ANON_NAME.fullmatch(name) else name, size, values)

    def _members(self, name: str, ut: dict[str, Any]) -> list[Member]:
        fields = _obj(ut.get("fields"), f"fields of {_show(name)}")
        if len(fields) > MAX_VLEN:
            raise ProfileError(f"ISF user type {_show(name)} has {len(fields)} fields")
        held = self.contains.setdefault(name, set())
        members = []
        for fname, f in fields.items():
            what = f"field {_show(name)}.{_show(_str(fname, 'field name'))}"
            f = _obj(f, what)
            offset = _int(f.get("offset"), f"offset of {what}", 0, _U32 // 8)
            anonymous = f.get("anonymous", False)
            if not isinstance(anonymous, bool):
                raise ProfileError(f"ISF {what}: anonymous is {_show(anonymous)}")
            desc = _obj(f.get("type"), f"type of {what}")
            if desc.get("kind") == "bitfield":
                pos = _int(desc.get("bit_position"), f"bit_position of {what}")
                length = _int(desc.get("bit_length"), f"bit_length of {what}", 1, 255)
                key = self._key(desc.get("type"), f"type of {what}", 1)
                if key[0] not in ("base", "enum"):
                    raise ProfileError(f"ISF {what} is a bitfield of a {key[0]}")
                bit_offset = _int(offset * 8 + pos, f"bit offset of {what}")
                members.append(Member("" if anonymous else fname, self._tid(key),
                                       bit_offset, length))
                continue
            key = self._key(desc, f"type of {what}", 0)
            inner = key
            while inner[0] == "array":
                inner = inner[2]
            if inner[0] in ("struct", "union") and inner[1] in self.user_ids:
                held.add(inner[1])
            members.append(Member("" if anonymous else fname, self._tid(key), offset * 8, 0))
        members.sort(key=lambda m: m.bit_offset)  # BTF order; ISF writers sort by name
        return members

    def _key(self, desc: Any, what: str, depth: int) -> Key:
        """A hashable form of a type descriptor, checked on the way."""
        if depth > MAX_DEPTH:
            raise ProfileError(f"ISF {what} nests more than {MAX_DEPTH} deep")
        desc = _obj(desc, what)
        kind = desc.get("kind")
        if kind == "base":
            return ("base", _str(desc.get("name"), f"{what} name"))
        if kind in ("struct", "class", "union"):
            return ("union" if kind == "union" else "struct",
                    _str(desc.get("name"), f"{what} name"))
        if kind == "enum":
            return ("enum", _str(desc.get("name"), f"{what} name"))
        if kind == "pointer":
            return ("pointer", self._key(desc.get("subtype"), what, depth + 1))
        if kind == "array":
            count = _int(desc.get("count"), f"{what} count")
            return ("array", count, self._key(desc.get("subtype"), what, depth + 1))
        if kind == "function":
            return ("function",)
        raise ProfileError(f"ISF {what}: unknown type kind {_show(kind)}")

    def _tid(self, key: Key) -> int:
        tid = self.ids.get(key)
        if tid is not None:
            return tid
        kind, b = key[0], self.b
        if kind == "base":
            name = key[1]
            if name == "void":
                tid = 0
            elif name == "pointer":
                tid = b.add_ptr(0)
            else:
                tid = self.base_ids.get(name)
                if tid is None:  # referenced, never defined: a named int of no size
                    tid = b.add_int(name, 0)
        elif kind in ("struct", "union"):
            tid = self.user_ids.get(key[1])
            if tid is None:
                tid = b.add_fwd(key[1], union=kind == "union")
        elif kind == "enum":
            tid = self.enum_ids.get(key[1])
            if tid is None:
                tid = b.add_enum(key[1], 4, [])
        elif kind == "pointer":
            tid = b.add_ptr(self._tid(key[1]))
        elif kind == "array":
            elem = key[2]
            while elem[0] == "array":
                elem = elem[2]
            if elem in (("base", "void"), ("function",)) or \
                    elem[0] in ("struct", "union") and elem[1] not in self.user_ids:
                # C has no arrays of incomplete types; BTF could not size this one.
                raise ProfileError(f"ISF has an array of {' '.join(elem)}, which has no size")
            tid = b.add_array(self._tid(key[2]), key[1])
        else:
            tid = b.add_func_proto(0)
        self.ids[key] = tid
        return tid

    def _check_cycles(self) -> None:
        """Refuse a struct that contains itself by value: no C type does, and sizes and
        layouts of such a thing have no meaning."""
        state: dict[str, int] = {}  # 1 on the stack, 2 done
        for root in self.contains:
            if root in state:
                continue
            stack = [(root, iter(sorted(self.contains.get(root, ()))))]
            path = [root]
            state[root] = 1
            while stack:
                node, children = stack[-1]
                child = next(children, None)
                if child is None:
                    state[node] = 2
                    stack.pop()
                    path.pop()
                elif state.get(child) == 1:
                    loop = path[path.index(child):] + [child]
                    raise ProfileError("ISF type contains itself by value: " +
                                       " -> ".join(loop[:8]))
                elif child not in state:
                    state[child] = 1
                    path.append(child)
                    stack.append((child, iter(sorted(self.contains.get(child, ())))))


# ----- BTF -> ISF


def btf_to_isf(btf: BTF, symbols: Mapping[str, int], banner: bytes,
               counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A Volatility 3 ISF of the kernel: BTF's types, kallsyms' addresses, and BANNER (the
    linux_banner bytes, as in memory) as the identifier Volatility matches memory against.
    COUNTS: the lengths of KNOWN_ARRAY_TYPES' arrays, where the caller knows them."""
    return _BtfToIsf(btf).run(symbols, banner, counts or {})


class _BtfToIsf:
    def __init__(self, btf: BTF) -> None:
        self.btf = btf
        self.names: dict[int, str] = {}  # struct/union/enum id -> its ISF name
        self.owners: dict[int, str] = {}  # anonymous struct/union id -> a typedef's name
        self.descs: dict[int, dict[str, Any]] = {}
        self.defs: dict[int, dict[str, Any]] = {}
        self.busy: set[int] = set()
        self.depth = 0
        self.base_types: dict[str, dict[str, Any]] = {}

    def run(self, symbols: Mapping[str, int], banner: bytes, counts: Mapping[str, int]
            ) -> dict[str, Any]:
        btf = self.btf
        endian = "little" if btf.endian == "<" else "big"
        by_kind: dict[Kind, list[int]] = {}
        for tid in range(1, len(btf)):
            by_kind.setdefault(btf.kind(tid), []).append(tid)
        self.base_types["void"] = {"size": 0, "signed": False, "kind": "void", "endian": endian}
        self.base_types["pointer"] = {"size": 8, "signed": False, "kind": "int",
                                      "endian": endian}
        for tid in by_kind.get(Kind.INT, []) + by_kind.get(Kind.FLOAT, []):
            t = btf.type(tid)
            if not t.name or t.name in self.base_types or t.name == "__ARRAY_SIZE_TYPE__":
                continue
            if t.kind == Kind.FLOAT:
                kind, signed = "float", True
            else:
                kind = "bool" if t.int_encoding & INT_BOOL else \
                    "char" if "char" in t.name else "int"
                signed = bool(t.int_encoding & INT_SIGNED)
            self.base_types[t.name] = {"size": t.size, "signed": signed, "kind": kind,
                                       "endian": endian}
        for tid in by_kind.get(Kind.TYPEDEF, []):
            t = btf.type(tid)
            if btf.kind(t.type_id) in COMPOSITE_KINDS and not btf.name(t.type_id) and t.name:
                self.owners.setdefault(t.type_id, t.name)
        composites = sorted(by_kind.get(Kind.STRUCT, []) + by_kind.get(Kind.UNION, []))
        enum_ids = sorted(by_kind.get(Kind.ENUM, []) + by_kind.get(Kind.ENUM64, []))
        self._name_named(enum_ids)
        taken = self._name_named(composites)  # named ones first: their names are fixed
        for tid, name in self.owners.items():
            if name not in taken:
                self.names[tid] = name
                taken.add(name)
        user_types: dict[str, Any] = {}
        for tid in composites:
            name = self._name(tid)
            if name not in user_types:
                user_types[name] = self._definition(tid)
        enums: dict[str, Any] = {}
        for tid in enum_ids:
            name, body = self._enum(tid)
            enums.setdefault(name, body)
        return {
            "metadata": self._metadata(),
            "base_types": self.base_types,
            "user_types": user_types,
            "enums": enums,
            "symbols": self._symbols(symbols, banner, by_kind.get(Kind.VAR, []), counts,
                                     composites),
        }

    def _metadata(self) -> dict[str, Any]:
        try:
            from importlib.metadata import version
            ours = version("cloudvmi")
        except Exception:  # not installed as a package (running from a checkout)
            ours = "0.0.0"
        if not re.fullmatch(r"\d+\.\d+\.\d+", ours):
            ours = "0.0.0"
        digest = hashlib.sha256(self.btf.data).hexdigest()
        # metadata_nix items only know dwarf/symtab/system-map: BTF is the kernel's DWARF,
        # deduplicated, and kallsyms its symbol table.
        return {
            "format": FORMAT_VERSION,
            "producer": {"name": PRODUCER, "version": ours},
            "linux": {
                "symbols": [{"kind": "symtab", "name": "kallsyms"}],
                "types": [{"kind": "dwarf", "name": "vmlinux BTF", "hash_type": "sha256",
                           "hash_value": digest}],
            },
        }

    def _name_named(self, ids: list[int]) -> set[str]:
        """Name the named types among IDS. BTF keeps several types of one name when their
        definitions differ (driver-local structs); ISF keys types by name, so the first
        (the one BTF.struct picks) keeps it and later ones become NAME__2, NAME__3, ..."""
        first: dict[str, int] = {}
        for tid in ids:
            name = self.btf.name(tid)
            if name:
                first.setdefault(name, tid)
        taken = set(first)
        for tid in ids:
            name = self.btf.name(tid)
            if name and first[name] != tid:
                n = 2
                while f"{name}__{n}" in taken:
                    n += 1
                name = f"{name}__{n}"
                taken.add(name)
            if name:
                self.names[tid] = name
        return taken

    def _name(self, tid: int) -> str:
        """The ISF name of struct/union TID; an anonymous one is named by a hash of its
        definition, like dwarf2json's unnamed_<sha1>, so names are stable across exports."""
        name = self.names.get(tid)
        if name is None:
            body = self._definition(tid)
            digest = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
            name = self.names.setdefault(tid, f"unnamed_{digest[:16]}")
        return name

    def _definition(self, tid: int) -> dict[str, Any]:
        body = self.defs.get(tid)
        if body is not None:
            return body
        if tid in self.busy:
            raise ProfileError(f"BTF anonymous type {tid} refers to itself: cannot name it")
        self.busy.add(tid)
        try:
            body = self._build_definition(tid)
        finally:
            self.busy.discard(tid)
        self.defs[tid] = body
        return body

    def _build_definition(self, tid: int) -> dict[str, Any]:
        btf = self.btf
        t = btf.type(tid)
        fields: dict[str, Any] = {}
        anonymous = 0
        for m in t.members:
            bit_offset, bit_size = m.bit_offset, m.bitfield_size
            rid = btf.resolve(m.type_id)
            rkind = btf.kind(rid)
            if not t.kind_flag and rkind == Kind.INT:  # legacy bitfields, as Struct._flatten
                it = btf.type(rid)
                if it.int_offset or it.int_bits != it.size * 8:
                    bit_offset += it.int_offset
                    bit_size = it.int_bits
            if bit_size:
                field: dict[str, Any] = {
                    "type": {"kind": "bitfield", "bit_position": bit_offset % 8,
                             "bit_length": bit_size, "type": self._bit_base(rid)},
                    "offset": bit_offset // 8}
            else:
                field = {"type": self._desc(m.type_id), "offset": bit_offset // 8}
            if m.name:
                fields.setdefault(m.name, field)
            elif rkind in COMPOSITE_KINDS:  # Volatility flattens it through user_types
                field["anonymous"] = True
                fields[f"unnamed_field_{anonymous:x}"] = field
                anonymous += 1
        kind = "union" if t.kind == Kind.UNION else "struct"
        return {"kind": kind, "size": t.size, "fields": fields}

    def _bit_base(self, rid: int) -> dict[str, Any]:
        kind = self.btf.kind(rid)
        if kind in (Kind.ENUM, Kind.ENUM64):
            return self._desc(rid)
        name = self.btf.name(rid) if kind == Kind.INT else ""
        return {"kind": "base", "name": name or "void"}

    def _desc(self, tid: int) -> dict[str, Any]:
        """The ISF type descriptor of TID, with typedefs and qualifiers looked through."""
        desc = self.descs.get(tid)
        if desc is not None:
            return desc
        # Bounds recursion through pointer/array/typedef chains and anonymous types alike
        # (a hostile BTF can make either long or cyclic).
        if self.depth >= MAX_EXPORT_DEPTH:
            raise ProfileError(f"BTF type {tid} nests more than {MAX_EXPORT_DEPTH} deep")
        self.depth += 1
        try:
            desc = self._build_desc(tid)
        finally:
            self.depth -= 1
        self.descs[tid] = desc
        return desc

    def _build_desc(self, tid: int) -> dict[str, Any]:
        btf = self.btf
        kind = btf.kind(tid)
        if kind == Kind.VOID:
            desc = {"kind": "base", "name": "void"}
        elif kind in (Kind.INT, Kind.FLOAT):
            desc = {"kind": "base", "name": btf.name(tid) or "void"}
        elif kind in COMPOSITE_KINDS:
            desc = {"kind": "union" if kind == Kind.UNION else "struct", "name": self._name(tid)}
        elif kind in (Kind.ENUM, Kind.ENUM64):
            desc = {"kind": "enum", "name": self._enum(tid)[0]}
        elif kind == Kind.FWD:
            desc = {"kind": "union" if btf.type(tid).kind_flag else "struct",
                    "name": btf.name(tid) or f"unnamed_{tid:x}"}
        elif kind == Kind.PTR:
            desc = {"kind": "pointer", "subtype": self._desc(btf.type(tid).type_id)}
        elif kind == Kind.ARRAY:
            t = btf.type(tid)
            desc = {"kind": "array", "count": t.nelems,
                    "subtype": self._desc(t.type_id)}
        elif kind in (Kind.FUNC_PROTO, Kind.FUNC):
            desc = {"kind": "function"}
        elif kind in MODIFIER_KINDS or kind == Kind.VAR:
            target = btf.type(tid).type_id
            if kind == Kind.TYPEDEF and target in self.owners:
                desc = {"kind": "union" if btf.kind(target) == Kind.UNION else "struct",
                        "name": self._name(target)}
            else:
                desc = self._desc(target)
        else:  # DATASEC, DECL_TAG: not data types
            desc = {"kind": "base", "name": "void"}
        return desc

    def _enum(self, tid: int) -> tuple[str, dict[str, Any]]:
        t = self.btf.type(tid)
        constants: dict[str, int] = {}
        for e in t.enumerators:
            constants.setdefault(e.name, e.value)
        signed = any(v < 0 for v in constants.values())
        base = next((n for n, b in sorted(self.base_types.items()) if b["kind"] == "int" and
                     b["size"] == t.size and b["signed"] == signed and n != "pointer"), "void")
        body = {"size": t.size, "base": base, "constants": constants}
        name = self.names.get(tid)
        if name is None:
            name = t.name or "unnamed_" + hashlib.sha1(
                json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
            self.names[tid] = name
        return name, body

    def _symbols(self, symbols: Mapping[str, int], banner: bytes, variables: list[int],
                 counts: Mapping[str, int], composites: list[int]) -> dict[str, Any]:
        btf = self.btf
        out: dict[str, Any] = {name: {"address": int(addr)} for name, addr in symbols.items()}
        for tid in variables:  # per-cpu variables: BTF knows their types
            name = btf.name(tid)
            if name in out:
                out[name]["type"] = self._desc(tid)
        for name, spec in KNOWN_SYMBOL_TYPES.items():
            if name in out and "type" not in out[name]:
                with contextlib.suppress(ProfileError):  # this kernel has no such type
                    out[name]["type"] = self._desc(btf.lookup(spec))
        for name, spec in KNOWN_ARRAY_TYPES.items():
            count = counts.get(name)
            if name in out and "type" not in out[name] and count is not None:
                with contextlib.suppress(ProfileError):
                    out[name]["type"] = {"kind": "array", "count": _int(count, name, 0, _U32),
                                         "subtype": self._desc(btf.lookup(spec))}
        for name, members in ANONYMOUS_SYMBOL_TYPES.items():
            if name in out and "type" not in out[name]:
                tid = next((t for t in composites if not btf.name(t) and tuple(
                    m.name for m in btf.type(t).members) == members), None)
                if tid is not None:
                    out[name]["type"] = self._desc(tid)
        char = {"kind": "base", "name": "char"}
        for name in SECTION_SYMBOLS:
            if name in out and "type" not in out[name]:
                out[name]["type"] = {"kind": "array", "count": 0, "subtype": char}
        data = banner.split(b"\0", 1)[0] + b"\0"  # the C string, as the scanner sees memory
        out["linux_banner"] = {
            "address": int(symbols.get("linux_banner", 0)),
            "type": {"kind": "array", "count": len(data),
                     "subtype": {"kind": "base", "name": "char"}},
            "constant_data": base64.b64encode(data).decode("ascii"),
        }
        return out

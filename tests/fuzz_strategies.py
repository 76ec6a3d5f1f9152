"""Hypothesis strategies for the fuzzers (tests/test_fuzz.py, bench/bench_fuzz.py): edits of
real-looking seed inputs, and inputs built at random from the formats' own pieces.

A mutated input is drawn as (seed name, list of edits) rather than as raw bytes, so a failure
shrinks to a short edit list that reads as a recipe ("set the u32 at 40 to 0xffffffff").
"""

from __future__ import annotations

import dataclasses
import random
import struct
import types
import typing
from functools import cache
from typing import Any

from hypothesis import strategies as st
from test_btf import BtfEncoder, kernel_like
from test_kallsyms import KBASE, NEW, NEWEST, OLD, TABLE_VIRT, build_tables, image, make_symbols

from cloudvmi.os.linux.btf import BTF, Kind
from cloudvmi.os.linux.kallsyms import ANCHOR

Edit = tuple  # ("flip", pos, bit) | ("word", pos, value, width) | ("plant", pos, bytes) | ...

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 12, 16, 24, 0x7F, 0x80, 0xFF, 0x100, 0x200, 0x3FF, 0xFFFF,
               0x10000, 0xFFFFFF, 0x1000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
RESIZING = ("insert", "delete", "truncate")
FIXED = ("flip", "byte", "word", "word", "word", "copy", "zero", "plant")


def words(bits: int = 32) -> st.SearchStrategy[int]:
    """Values a parser is most likely to mishandle, and any other."""
    top = (1 << bits) - 1
    return st.one_of(st.sampled_from([v & top for v in INTERESTING] + [top, top >> 1]),
                     st.integers(0, top))


@st.composite
def edits(draw, size: int, focus: tuple[tuple[int, int], ...] = (), resize: bool = True,
          snippets: tuple[bytes, ...] = (b"\0" * 8,), max_edits: int = 6) -> list[Edit]:
    """A list of edits to an input of SIZE bytes, aimed inside the FOCUS ranges (each as
    likely as the others, so a 512-byte index is hit as often as 50 KB of names)."""
    ranges = list(focus) or [(0, size)]
    out: list[Edit] = []
    for _ in range(draw(st.integers(1, max_edits))):
        lo, hi = draw(st.sampled_from(ranges))
        pos = draw(st.integers(lo, max(lo, hi - 1)))
        op = draw(st.sampled_from(FIXED + RESIZING if resize else FIXED))
        if op == "flip":
            out.append((op, pos, draw(st.integers(0, 7))))
        elif op == "byte":
            out.append((op, pos, draw(st.integers(0, 255))))
        elif op == "word":
            width = draw(st.sampled_from((2, 4, 4, 8)))
            out.append((op, lo + (pos - lo) // width * width, draw(words(8 * width)), width))
        elif op in ("copy", "zero", "delete"):
            n = draw(st.sampled_from((1, 4, 8, 12, 16, 64, 256)))
            out.append((op, pos, n) if op != "copy" else
                       (op, draw(st.integers(lo, max(lo, hi - 1))), pos, n))
        elif op == "plant":
            out.append((op, pos, draw(st.sampled_from(snippets))))
        elif op == "insert":
            out.append((op, pos, draw(st.binary(min_size=1, max_size=16))))
        else:
            out.append((op, pos))
    return out


def apply(seed: bytes, ops: list[Edit]) -> bytes:
    """SEED with OPS applied in order; positions past the (changing) end are clipped."""
    data = bytearray(seed)
    for op in ops:
        if not data and op[0] != "insert":
            continue
        pos = min(op[1], max(0, len(data) - 1))
        if op[0] == "flip":
            data[pos] ^= 1 << op[2]
        elif op[0] == "byte":
            data[pos] = op[2]
        elif op[0] == "word":
            raw = op[2].to_bytes(op[3], "little")
            data[pos:pos + len(raw)] = raw[:len(data) - pos]
        elif op[0] == "copy":
            src, dst, n = op[1], op[2], op[3]
            chunk = data[src:src + n]
            data[dst:dst + len(chunk)] = chunk[:max(0, len(data) - dst)]
        elif op[0] == "zero":
            n = min(op[2], len(data) - pos)
            data[pos:pos + n] = bytes(n)
        elif op[0] == "plant":
            raw = op[2][:len(data) - pos]
            data[pos:pos + len(raw)] = raw
        elif op[0] == "insert":
            data[pos:pos] = op[2]
        elif op[0] == "delete":
            del data[pos:pos + op[2]]
        elif op[0] == "truncate":
            del data[pos:]
    return bytes(data)


def apply_in_place(seed: bytes, ops: list[Edit]) -> bytes:
    """apply() for edits that keep the size (RAM images: addresses must not move)."""
    out = apply(seed, ops)
    assert len(out) == len(seed)
    return out


# ----- BTF

@cache
def btf_seed() -> bytes:
    """tests/test_btf.py's miniature kernel: every kind, anonymous members, bitfields."""
    e, _ = kernel_like()
    return e.blob()


def btf_focus(blob: bytes) -> tuple[tuple[int, int], ...]:
    """The header, the type section and the string section of a little-endian blob."""
    hdr, t_off, t_len, s_off, s_len = struct.unpack_from("<5I", blob, 4)
    return ((0, hdr), (hdr + t_off, hdr + t_off + t_len), (hdr + s_off, hdr + s_off + s_len))


def mutated_btf() -> st.SearchStrategy[tuple[str, list[Edit]]]:
    blob = btf_seed()
    return st.tuples(st.just("kernel_like"),
                     edits(len(blob), btf_focus(blob), snippets=(b"\x9f\xeb\x01\x00",
                                                                 b"\0" * 12, b"\xff" * 12)))


NAMES = ("", "task_struct", "list_head", "int", "long unsigned int", "char", "pid", "next",
         "tasks", "comm", "mm", "x", "unsigned int", "_Bool")
# Real kinds weighted towards the ones with references and members; 20 and 31 are unknown.
KINDS = (Kind.INT, Kind.PTR, Kind.PTR, Kind.ARRAY, Kind.STRUCT, Kind.STRUCT, Kind.STRUCT,
         Kind.UNION, Kind.UNION, Kind.ENUM, Kind.FWD, Kind.TYPEDEF, Kind.TYPEDEF, Kind.VOLATILE,
         Kind.CONST, Kind.RESTRICT, Kind.FUNC, Kind.FUNC_PROTO, Kind.FUNC_PROTO, Kind.VAR,
         Kind.DATASEC, Kind.FLOAT, Kind.DECL_TAG, Kind.TYPE_TAG, Kind.ENUM64, 20, 31)
SIZES = (0, 1, 2, 4, 8, 16, 64, 0x1000, 0xFFFFFF, 0xFFFFFFFF)
BIT_OFFSETS = (0, 1, 3, 8, 32, 64, 127, 0xFFFFFF, 0x1000000, 0xFFFFFFFF)


@st.composite
def structured_btf(draw, max_types: int = 10) -> bytes:
    """A blob of a few random types that tile the type section exactly (so they get past the
    index pass), with references anywhere: self, forward, one past the end."""
    n = draw(st.integers(1, max_types))
    e = BtfEncoder()
    ref = st.one_of(st.integers(0, n), st.just(n + 1))
    for _ in range(n):
        kind = draw(st.sampled_from(KINDS))
        name: str | int = draw(st.sampled_from(NAMES))
        if draw(st.integers(0, 15)) == 0:
            name = draw(words())  # a raw, probably bad, string offset
        kflag = int(draw(st.booleans()))
        vlen = draw(st.integers(0, 4))
        third = draw(ref) if kind in (Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST,
                                      Kind.RESTRICT, Kind.FUNC, Kind.FUNC_PROTO, Kind.VAR,
                                      Kind.DECL_TAG, Kind.TYPE_TAG) \
            else draw(st.sampled_from(SIZES))
        extra = b""
        if kind == Kind.INT:
            enc = draw(st.sampled_from((0, 1, 2, 4, 15)))
            bits = draw(st.sampled_from((0, 1, 3, 8, 16, 32, 64, 128, 255)))
            off = draw(st.sampled_from((0, 1, 2, 8, 255)))
            extra = struct.pack("<I", enc << 24 | off << 16 | bits)
            if draw(st.booleans()):
                third = draw(st.sampled_from((1, 2, 4, 8)))
        elif kind == Kind.ARRAY:
            extra = struct.pack("<III", draw(ref), draw(ref),
                                draw(st.sampled_from((0, 1, 2, 16, 0xFFFF, 0xFFFFFFFF))))
        elif kind in (Kind.STRUCT, Kind.UNION, Kind.DATASEC):
            for _ in range(vlen):
                m_name = e.s(draw(st.sampled_from(NAMES)))
                off = draw(st.sampled_from(BIT_OFFSETS))
                if kind == Kind.DATASEC:
                    extra += struct.pack("<III", draw(ref), off, draw(st.sampled_from(SIZES)))
                else:
                    extra += struct.pack("<III", m_name, draw(ref), off)
        elif kind == Kind.ENUM:
            extra = b"".join(struct.pack("<II", e.s(draw(st.sampled_from(NAMES))), draw(words()))
                             for _ in range(vlen))
        elif kind == Kind.ENUM64:
            extra = b"".join(struct.pack("<III", e.s(draw(st.sampled_from(NAMES))), draw(words()),
                                         draw(words())) for _ in range(vlen))
        elif kind == Kind.FUNC_PROTO:
            extra = b"".join(struct.pack("<II", e.s(draw(st.sampled_from(NAMES))), draw(ref))
                             for _ in range(vlen))
        elif kind in (Kind.VAR, Kind.DECL_TAG):
            extra = struct.pack("<I", draw(words()))
        if kind not in (Kind.STRUCT, Kind.UNION, Kind.DATASEC, Kind.ENUM, Kind.ENUM64,
                        Kind.FUNC_PROTO, Kind.FUNC):
            vlen = 0 if draw(st.integers(0, 7)) else vlen  # a stray vlen now and then
        e.raw(name, int(kind), vlen, kflag, third, extra)
    return e.blob()


# ----- kallsyms

@dataclasses.dataclass(frozen=True)
class KallsymsSeed:
    data: bytes  # the RAM image (physical address 0 = offset 0)
    at: int  # where the tables start
    where: dict[str, int]  # each table's offset from AT
    focus: tuple[tuple[int, int], ...]

    @property
    def token_table(self) -> int:
        return self.at + self.where["token_table"]

    @property
    def offsets(self) -> tuple[int, int]:
        """(physical, virtual) address of kallsyms_offsets, as VMCOREINFO would give them."""
        return self.at + self.where["offsets"], TABLE_VIRT


# (layout, seqs_of_names width, absolute per-cpu, symbols): every layout, and tables big
# enough (5000 symbols, 20 blocks) that NameTables.prove samples rather than expands them.
KALLSYMS_LAYOUTS = {
    "old-seqs3": (OLD, 3, True, 300),
    "old-noseqs": (OLD, 0, True, 60),
    "new-seqs4": (NEW, 4, False, 300),
    "newest-seqs4": (NEWEST, 4, False, 300),
    "old-seqs4-big": (OLD, 4, True, 5000),
    "newest-seqs4-big": (NEWEST, 4, False, 5000),
    "new-noseqs-big": (NEW, 0, False, 5000),
}


@cache
def kallsyms_seed(name: str) -> KallsymsSeed:
    order, width, percpu, count = KALLSYMS_LAYOUTS[name]
    blob, where = build_tables(make_symbols(count, percpu=percpu), order, width,
                               abs_percpu=percpu)
    big = count > 1000
    at = 0x1000 if big else 0x13000  # past image()'s decoy anchors
    data = image(blob, at=at, size=at + len(blob) + 0x1000, decoys=not big)
    starts = sorted(where.values()) + [len(blob)]
    focus = tuple((at + a, at + b) for a, b in zip(starts, starts[1:], strict=False) if b > a)
    return KallsymsSeed(data, at, where, focus)


def mutated_kallsyms() -> st.SearchStrategy[tuple[str, list[Edit], str]]:
    """(layout, edits, how it is looked for: scan, hint, at, at+offsets)."""
    def one(name: str):
        seed = kallsyms_seed(name)
        return st.tuples(st.just(name), edits(len(seed.data), seed.focus, resize=False,
                                              snippets=(ANCHOR, b"\0" * 8, b"\xff" * 8)),
                         st.sampled_from(("scan", "hint", "at", "at+offsets")))
    return st.sampled_from(sorted(KALLSYMS_LAYOUTS)).flatmap(one)


# ----- VMCOREINFO

RELEASE = "6.1.0-fuzz"
BUILD_ID = bytes(range(20)).hex()
BANNER = f"Linux version {RELEASE} (fuzz@cloudvmi) (gcc 12) #1 SMP\n".encode()
NOTE_KEYS = ("OSRELEASE", "PAGESIZE", "SYMBOL(_stext)", "SYMBOL(kallsyms_token_table)",
             "SYMBOL(kallsyms_offsets)", "NUMBER(phys_base)", "KERNELOFFSET", "BUILD-ID",
             "SYMBOL(init_uts_ns)", "NUMBER(pgtable_l5_enabled)", "x")
NOTE_VALUES = ("", "0", "-1", "0x10", "ffffffff81000000", "-16777216", "zz", "1_0", RELEASE,
               "9" * 500, "0x" + "f" * 510, " 12 ", "+5", "-0x10")


def note(text: bytes, namesz: int = 11, descsz: int | None = None, kind: int = 0) -> bytes:
    """An Elf64_Nhdr "VMCOREINFO" note around TEXT (the header may lie about the sizes)."""
    desc = len(text) if descsz is None else descsz
    return struct.pack("<III", namesz, desc, kind) + b"VMCOREINFO\0\0" + text


@st.composite
def note_text(draw) -> bytes:
    """KEY=VALUE lines, mostly well-formed, OSRELEASE usually first."""
    lines = []
    if draw(st.integers(0, 7)):
        lines.append(b"OSRELEASE=" + draw(st.sampled_from((RELEASE, "", "x" * 600))).encode())
    for _ in range(draw(st.integers(0, 8))):
        key = draw(st.sampled_from(NOTE_KEYS)) if draw(st.integers(0, 5)) else \
            draw(st.text(max_size=12))
        value = draw(st.sampled_from(NOTE_VALUES)) if draw(st.integers(0, 3)) else \
            draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
                 if draw(st.booleans()) else st.text(max_size=20))
        lines.append(f"{key}={value}".encode("utf-8", "surrogatepass"))
    if draw(st.integers(0, 9)) == 0:
        lines.append(draw(st.binary(max_size=40)))
    return b"\n".join(lines) + draw(st.sampled_from((b"\n", b"", b"\n\0", b"\0junk")))


# ----- a small fake kernel, for locate()

TEXT_PHYS = 0x200000  # a 2 MiB slot: the scan's _load_slot and the note must both place it
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
PGD, BANNER_AT, BTF_AT, TABLES_AT, NOTE_AT = 0x1000, 0x4000, 0x5000, 0x40000, 0x10000


@dataclasses.dataclass(frozen=True)
class KernelSeed:
    data: bytes
    focus: tuple[tuple[int, int], ...]


def _kernel_symbols(btf_size: int) -> list[tuple[int, str, str]]:
    syms = [(KBASE, "T", "_text"), (KBASE, "T", "_stext"), (KBASE + PGD, "D", "init_top_pgt"),
            (KBASE + BANNER_AT, "R", "linux_banner"), (KBASE + BTF_AT, "R", "__start_BTF"),
            (KBASE + BTF_AT + btf_size, "R", "__stop_BTF"), (KBASE + 0x100000, "B", "_end"),
            (KBASE + 0xC0000, "D", "init_task")]  # a data symbol: KALLSYMS_ALL, as on x86
    syms += [(KBASE + 0x20000 + 0x40 * i, "tT"[i % 2], f"fuzz_fn_{i}") for i in range(300)]
    return sorted(syms)


@cache
def kernel_seed(layout: str = "new") -> KernelSeed:
    """RAM of 4 MiB holding a kernel image at TEXT_PHYS that locate() accepts: page tables that
    map it at KBASE, a banner, BTF, kallsyms in LAYOUT, and a VMCOREINFO note that names them."""
    blob = btf_seed()
    order = {"old": OLD, "new": NEW, "newest": NEWEST}[layout]
    tables, where = build_tables(_kernel_symbols(len(blob)), order, 4, abs_percpu=False)
    if layout == "newest":  # entries are relative to their own place: move them here
        count, at = len(_kernel_symbols(len(blob))), where["offsets"]
        shift = TABLE_VIRT - (KBASE + TABLES_AT + at)
        entries = struct.unpack_from(f"<{count}i", tables, at)
        tables = bytearray(tables)
        struct.pack_into(f"<{count}i", tables, at, *(e + shift for e in entries))
    ram = bytearray(random.Random(5).randbytes(4 << 20))  # RAM is rarely zeros
    text = TEXT_PHYS
    ram[text:text + BANNER_AT] = bytes(BANNER_AT)  # page tables: nothing else present
    ram[NOTE_AT - 12:NOTE_AT + 0x1000] = bytes(0x100c)
    ram[text:text + 16] = b"\x0f\x0b" * 8  # _text: something that is not zeros
    # init_top_pgt -> PDPT -> PD with one 2 MiB page mapping KBASE to TEXT_PHYS.
    pdpt, pd = text + 0x2000, text + 0x3000
    struct.pack_into("<Q", ram, text + PGD + 8 * ((KBASE >> 39) & 511), pdpt | 0x63)
    struct.pack_into("<Q", ram, pdpt + 8 * ((KBASE >> 30) & 511), pd | 0x63)
    struct.pack_into("<Q", ram, pd + 8 * ((KBASE >> 21) & 511), text | 0xE3)
    ram[text + BANNER_AT:text + BANNER_AT + len(BANNER) + 1] = BANNER + b"\0"
    ram[text + BTF_AT:text + BTF_AT + len(blob)] = blob
    ram[text + TABLES_AT:text + TABLES_AT + len(tables)] = tables
    phys_base = (text - KBASE + START_KERNEL_MAP) % (1 << 64)
    if phys_base >> 63:
        phys_base -= 1 << 64
    lines = [f"OSRELEASE={RELEASE}", "PAGESIZE=4096", f"SYMBOL(_stext)={KBASE:x}",
             f"NUMBER(phys_base)={phys_base}", f"KERNELOFFSET={KBASE - 0xFFFFFFFF81000000:x}"]
    if layout != "old":
        lines.append(f"SYMBOL(kallsyms_token_table)="
                     f"{KBASE + TABLES_AT + where['token_table']:x}")
    if layout == "newest":
        lines.append(f"SYMBOL(kallsyms_offsets)={KBASE + TABLES_AT + where['offsets']:x}")
    text_note = ("\n".join(lines) + "\n").encode()
    ram[NOTE_AT:NOTE_AT + len(text_note) + 24] = note(text_note)
    starts = sorted(where.values()) + [len(tables)]
    focus = ((NOTE_AT, NOTE_AT + 24 + len(text_note)), (text + PGD, text + PGD + 0x3000),
             (text + BANNER_AT, text + BANNER_AT + len(BANNER)),
             (text + BTF_AT, text + BTF_AT + len(blob)), (0, len(ram)),
             *((text + TABLES_AT + a, text + TABLES_AT + b)
               for a, b in zip(starts, starts[1:], strict=False) if b > a))
    return KernelSeed(bytes(ram), focus)


def kernel_snippets() -> tuple[bytes, ...]:
    """Look-alikes a hostile guest plants: notes, banners, token-table anchors, BTF magic."""
    return (note(b"OSRELEASE=" + RELEASE.encode() + b"\n"), note(b"OSRELEASE=x\n", descsz=0),
            note(b"OSRELEASE=x\n", descsz=1 << 20), b"Linux version " + RELEASE.encode() + b" ",
            b"Linux version ", ANCHOR, b"\x9f\xeb\x01\x00\x18\0\0\0", b"\xff" * 8, b"\0" * 8)


def mutated_kernel() -> st.SearchStrategy[tuple[str, list[Edit], bytes | None]]:
    """(layout, edits, a new note text or None)."""
    def one(layout: str):
        seed = kernel_seed(layout)
        return st.tuples(st.just(layout),
                         edits(len(seed.data), seed.focus, resize=False,
                               snippets=kernel_snippets()),
                         st.one_of(st.none(), note_text()))
    return st.sampled_from(("old", "new", "newest")).flatmap(one)


# ----- ELF files

def elf64(etype: int, phdrs: list[tuple[int, int, int, int, bytes]] = (),
          sections: list[tuple[str, int, int, bytes, int, int, int]] = ()) -> bytes:
    """A little-endian x86-64 ELF: program headers (type, flags, paddr, vaddr, data) and
    sections (name, type, addr, data, link, info, entsize); a section name table is added."""
    names = bytearray(b"\0")
    sections = [("", 0, 0, b"", 0, 0, 0), *sections]
    sh_names = []
    for s in sections[1:]:
        sh_names.append(len(names))
        names += s[0].encode() + b"\0"
    sections.append((".shstrtab", 3, 0, bytes(names), 0, 0, 0))
    sh_names = [0, *sh_names, len(names)]
    names += b".shstrtab\0"
    sections[-1] = (".shstrtab", 3, 0, bytes(names), 0, 0, 0)
    body = bytearray()
    base = 64 + 56 * len(phdrs)
    ph_table = b""
    for ptype, flags, paddr, vaddr, data in phdrs:
        ph_table += struct.pack("<IIQQQQQQ", ptype, flags, base + len(body), vaddr, paddr,
                                len(data), len(data), 4096 if ptype == 1 else 4)
        body += data + bytes(-len(data) % 8)
    sec_offsets = []
    for s in sections:
        sec_offsets.append(base + len(body))
        body += s[3] + bytes(-len(s[3]) % 8)
    shoff = base + len(body)
    sh_table = b""
    for i, (_, stype, addr, data, link, info, entsize) in enumerate(sections):
        sh_table += struct.pack("<IIQQQQIIQQ", sh_names[i], stype, 2 if addr else 0, addr,
                                sec_offsets[i] if stype else 0, len(data), link, info,
                                8, entsize)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", etype, 62, 1, 0, 64 if phdrs else 0, shoff, 0, 64, 56, len(phdrs),
        64, len(sections), len(sections) - 1)
    return header + ph_table + bytes(body) + sh_table


def _elf_note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"
    return struct.pack("<III", len(name), len(desc), kind) + name + bytes(-len(name) % 4) + \
        desc + bytes(-len(desc) % 4)


@cache
def elf_core_seed() -> bytes:
    """What QEMU's dump-guest-memory writes (paging=false): ET_CORE, one PT_NOTE with a CORE
    NT_PRSTATUS and a QEMU CPU-state note per vCPU and the guest's VMCOREINFO, then a PT_LOAD
    per RAM block at its guest-physical address."""
    qemu = struct.pack("<II", 1, 440) + struct.pack("<18Q", *range(18)) + \
        b"".join(struct.pack("<IIIIQ", i, 0xFFFFF, 0xA09B, 0, 0x1000 * i) for i in range(10)) + \
        struct.pack("<6Q", 0x80050033, 0, 0x1000, 0x1234000, 0x3406F0, 0)
    notes = (_elf_note(b"CORE", 1, bytes(336)) + _elf_note(b"QEMU", 0, qemu) +
             _elf_note(b"VMCOREINFO", 0, f"OSRELEASE={RELEASE}\nPAGESIZE=4096\n".encode()))
    ram0 = bytes(range(256)) * 32
    ram1 = b"\xaa" * 4096
    return elf64(4, [(4, 0, 0, 0, notes), (1, 7, 0, 0, ram0), (1, 7, 0x100000, 0, ram1)])


def elf_focus(data: bytes) -> tuple[tuple[int, int], ...]:
    """ELF header, program headers, the notes, and the rest."""
    (phoff,) = struct.unpack_from("<Q", data, 32)
    (phnum,) = struct.unpack_from("<H", data, 56)
    (note_off, note_size) = struct.unpack_from("<Q", data, phoff + 8)[0], \
        struct.unpack_from("<Q", data, phoff + 32)[0]
    return ((0, 64), (phoff, phoff + 56 * phnum), (note_off, note_off + note_size),
            (0, len(data)))


def elf_sections_focus(data: bytes) -> tuple[tuple[int, int], ...]:
    """The ELF header, the section headers and each section's data."""
    (shoff,) = struct.unpack_from("<Q", data, 40)
    (shnum,) = struct.unpack_from("<H", data, 60)
    out = [(0, 64), (shoff, shoff + 64 * shnum)]
    for i in range(1, shnum):
        offset, size = struct.unpack_from("<QQ", data, shoff + 64 * i + 24)
        out.append((offset, offset + size))
    return tuple(out)


def mutated_elf_core() -> st.SearchStrategy[list[Edit]]:
    data = elf_core_seed()
    return edits(len(data), elf_focus(data),
                 snippets=(b"VMCOREINFO\0\0", b"QEMU\0\0\0\0", b"\x7fELF", b"\xff" * 8))


@cache
def vmlinux_seed(btf: bytes = b"", banner: bytes = BANNER) -> bytes:
    """A vmlinux as typesource.py reads one: .BTF, a build-id note, and linux_banner in .rodata
    found through .symtab."""
    btf = btf or btf_seed()
    rodata = b"junk\0" * 4 + banner + b"\0"
    strtab = b"\0linux_banner\0"
    sym = struct.pack("<IBBHQQ", 1, 0x11, 0, 1, 0xFFFFFFFF82000000 + 20, len(banner) + 1)
    symtab = bytes(24) + sym
    build_id = _elf_note(b"GNU", 3, bytes.fromhex(BUILD_ID))
    return elf64(2, sections=[(".rodata", 1, 0xFFFFFFFF82000000, rodata, 0, 0, 0),
                              (".BTF", 1, 0, btf, 0, 0, 0),
                              (".notes", 7, 0, build_id, 0, 0, 0),
                              (".symtab", 2, 0, symtab, 5, 1, 24),
                              (".strtab", 3, 0, strtab, 0, 0, 0)])


# ----- ISF

@cache
def isf_seed() -> dict:
    """The miniature kernel's BTF exported as an ISF (with the fuzz banner)."""
    from cloudvmi.os.linux.isf import btf_to_isf

    return btf_to_isf(BTF.from_bytes(btf_seed()), {"init_task": 0xFFFFFFFF82000000,
                                                   "linux_banner": 0xFFFFFFFF81E00000}, BANNER)


def isf_paths(obj: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a node of a JSON tree."""
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += isf_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += isf_paths(v, path + (i,))
    return out


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(
        (0, -1, 1 << 32, 1 << 64, 1 << 70, -(1 << 63) - 1)), st.floats(),
        st.text(max_size=12), st.sampled_from(("struct", "union", "base", "pointer", "array",
                                               "bitfield", "enum", "function", "void",
                                               "unnamed_00", "task_struct", "__blob__")))
    keys = st.one_of(st.text(max_size=8), st.sampled_from(
        ("kind", "name", "size", "fields", "offset", "type", "subtype", "count",
         "bit_position", "bit_length", "anonymous", "constants", "__blob__")))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys, inner, max_size=4), max_leaves=max_leaves)


@st.composite
def tree_edits(draw, tree: Any, max_edits: int = 4) -> list[tuple]:
    """(path index, value or DELETE) edits of a JSON tree: replace a node, or drop it."""
    paths = isf_paths(tree)
    out = []
    for _ in range(draw(st.integers(1, max_edits))):
        i = draw(st.integers(1, len(paths) - 1))
        out.append((i, "DELETE" if draw(st.integers(0, 4)) == 0 else draw(json_values())))
    return out


def apply_tree(tree: Any, ops: list[tuple]) -> Any:
    import copy

    paths = isf_paths(tree)
    out = copy.deepcopy(tree)
    for i, value in ops:
        path = paths[i]
        parent = out
        try:
            for k in path[:-1]:
                parent = parent[k]
            if value == "DELETE" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif not isinstance(value, str) or value != "DELETE":
                parent[path[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the way there
    return out


# ----- the agent codec

@st.composite
def shaped(draw, hint: Any, depth: int = 0) -> Any:
    """JSON data shaped like HINT (a capability's argument or result type), wrong here and
    there: the shapes a hostile peer sends to get past the first checks."""
    from cloudvmi.remote import codec

    if depth > 6 or draw(st.integers(0, 9)) == 0:
        return draw(json_values(6))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bytes:
        return {codec.BLOB: draw(st.one_of(st.integers(0, 16), st.sampled_from(
            (-1, 1 << 40, 2.5, "3", True))))}
    if hint is int or hint is float:
        return draw(st.one_of(st.integers(), st.floats(), st.sampled_from((True, 1 << 70))))
    if hint is str:
        return draw(st.text(max_size=16))
    if hint is bool:
        return draw(st.booleans())
    if origin in (typing.Union, types.UnionType):
        return draw(shaped(draw(st.sampled_from(args)), depth + 1))
    if origin in (list, tuple):
        items = [a for a in args if a is not Ellipsis] or [Any]
        return [draw(shaped(items[i % len(items)], depth + 1))
                for i in range(draw(st.integers(0, 3)))]
    if origin is dict:
        return {draw(st.text(max_size=6)): draw(shaped(args[1] if args else Any, depth + 1))
                for _ in range(draw(st.integers(0, 2)))}
    cls = origin or hint
    if dataclasses.is_dataclass(cls):
        fields = codec._field_hints(hint)
        out = {}
        for name, field_hint in fields:
            if draw(st.integers(0, 5)):
                out[name] = draw(shaped(field_hint, depth + 1))
        if draw(st.integers(0, 5)) == 0:
            out[draw(st.text(max_size=6))] = draw(json_values(4))
        return out
    return draw(json_values(6))

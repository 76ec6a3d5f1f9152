"""BTF parser: a synthetic blob built here (including hostile ones), then real guest dumps."""

import random
import struct
import time

import pytest
from matrix import KERNELS

from cloudvmi.errors import ProfileError
from cloudvmi.os.linux.btf import (
    BTF,
    Kind,
    MemberNotFound,
    TypeNotFound,
    btf_candidates,
    load_btf,
    locate_btf,
)


class BtfEncoder:
    """A tiny BTF writer: types get ids in the order they are added (1, 2, ...)."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}
        self.types: list[bytes] = []

    def s(self, name: str | int) -> int:
        if isinstance(name, int):  # a raw (possibly bogus) string offset
            return name
        if name not in self._offsets:
            self._offsets[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        return self._offsets[name]

    def raw(self, name: str | int, kind: int, vlen: int = 0, kflag: int = 0, third: int = 0,
            extra: bytes = b"") -> int:
        name_off = name if isinstance(name, int) else self.s(name)
        info = (kflag << 31) | ((kind & 0x1F) << 24) | (vlen & 0xFFFF)
        self.types.append(struct.pack("<III", name_off, info, third) + extra)
        return len(self.types)

    def int_(self, name: str, size: int, signed: bool = False, char: bool = False,
             boolean: bool = False, bits: int | None = None, offset: int = 0) -> int:
        enc = (1 if signed else 0) | (2 if char else 0) | (4 if boolean else 0)
        bits = size * 8 if bits is None else bits
        return self.raw(name, Kind.INT, third=size,
                        extra=struct.pack("<I", (enc << 24) | (offset << 16) | bits))

    def ref(self, kind: int, target: int, name: str = "") -> int:
        return self.raw(name, kind, third=target)

    def array(self, elem: int, nelems: int, index: int = 1) -> int:
        return self.raw("", Kind.ARRAY, extra=struct.pack("<III", elem, index, nelems))

    def struct(self, name: str, size: int, members: list[tuple], union: bool = False,
               kflag: bool | None = None) -> int:
        """members: (name, type id, bit offset[, bitfield size])."""
        if kflag is None:
            kflag = any(len(m) > 3 and m[3] for m in members)
        extra = b""
        for m in members:
            off = m[2] | ((m[3] if len(m) > 3 else 0) << 24) if kflag else m[2]
            extra += struct.pack("<III", self.s(m[0]), m[1], off)
        return self.raw(name, Kind.UNION if union else Kind.STRUCT, len(members), int(kflag),
                        size, extra)

    def enum(self, name: str, values: dict[str, int], size: int = 4,
             signed: bool = False) -> int:
        extra = b"".join(struct.pack("<Ii", self.s(k), v) if signed else
                         struct.pack("<II", self.s(k), v & 0xFFFFFFFF)
                         for k, v in values.items())
        return self.raw(name, Kind.ENUM, len(values), int(signed), size, extra)

    def enum64(self, name: str, values: dict[str, int], signed: bool = False) -> int:
        extra = b"".join(struct.pack("<III", self.s(k), v & 0xFFFFFFFF, (v >> 32) & 0xFFFFFFFF)
                         for k, v in values.items())
        return self.raw(name, Kind.ENUM64, len(values), int(signed), 8, extra)

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack("<II", self.s(n), t) for n, t in params)
        return self.raw("", Kind.FUNC_PROTO, len(params), third=ret, extra=extra)

    def blob(self, magic: int = 0xEB9F, version: int = 1, flags: int = 0,
             type_len: int | None = None, str_len: int | None = None) -> bytes:
        types = b"".join(self.types)
        strings = bytes(self.strings)
        hdr = struct.pack("<HBBIIIII", magic, version, flags, 24, 0,
                          len(types) if type_len is None else type_len, len(types),
                          len(strings) if str_len is None else str_len)
        return hdr + types + strings


def kernel_like() -> tuple[BtfEncoder, dict[str, int]]:
    """A miniature kernel: task_struct with anonymous unions, bitfields, lists, typedefs."""
    e = BtfEncoder()
    ids: dict[str, int] = {}
    ids["int"] = e.int_("int", 4, signed=True)  # 1
    ids["uint"] = e.int_("unsigned int", 4)  # 2
    ids["char"] = e.int_("char", 1, char=True)  # 3
    ids["ulong"] = e.int_("long unsigned int", 8)  # 4
    ids["bool"] = e.int_("_Bool", 1, boolean=True)  # 5
    ids["list_head"] = e.struct("list_head", 16, [("next", 7, 0), ("prev", 7, 64)])  # 6
    ids["list_head *"] = e.ref(Kind.PTR, 6)  # 7
    ids["char[16]"] = e.array(3, 16, index=2)  # 8
    ids["pid_t"] = e.ref(Kind.TYPEDEF, 1, "pid_t")  # 9
    ids["mm_struct"] = e.struct("mm_struct", 16, [("pgd", 4, 0), ("mm_users", 1, 64)])  # 10
    ids["mm_struct *"] = e.ref(Kind.PTR, 10)  # 11
    ids["task_struct"] = e.struct("task_struct", 64, [  # 12
        ("state", 16, 0),
        ("", 13, 32),  # anonymous union holding pid
        ("tasks", 6, 64),
        ("mm", 11, 192),
        ("comm", 8, 256),
        ("flags", 2, 384, 3),
        ("nice", 1, 387, 4),
        ("on_rq", 5, 391, 1),
        ("", 17, 416),  # anonymous struct holding tgid, at byte 52
        ("real_parent", 15, 448),
    ])
    ids["anon union"] = e.struct("", 4, [("pid", 9, 0), ("upid", 2, 0)], union=True)  # 13
    ids["const task"] = e.ref(Kind.CONST, 12)  # 14
    ids["task_struct *"] = e.ref(Kind.PTR, 12)  # 15
    ids["enum state"] = e.enum("task_state", {"RUNNING": 0, "STOPPED": 4, "DEAD": -1},
                               signed=True)  # 16
    ids["anon struct"] = e.struct("", 4, [("tgid", 9, 0)])  # 17
    ids["enum64"] = e.enum64("big", {"HUGE": 1 << 40, "NEG": -2}, signed=True)  # 18
    ids["proto"] = e.func_proto(1, [("p", 15), ("", 0)])  # 19
    ids["func"] = e.raw("schedule", Kind.FUNC, vlen=1, third=19)  # 20
    ids["var"] = e.raw("init_task", Kind.VAR, third=12, extra=struct.pack("<I", 1))  # 21
    ids["datasec"] = e.raw(".data", Kind.DATASEC, 1, third=64,
                           extra=struct.pack("<III", 21, 0, 64))  # 22
    ids["float"] = e.raw("double", Kind.FLOAT, third=8)  # 23
    ids["decl_tag"] = e.raw("user", Kind.DECL_TAG, third=12, extra=struct.pack("<i", 3))  # 24
    ids["type_tag"] = e.ref(Kind.TYPE_TAG, 12, "percpu")  # 25
    ids["fwd"] = e.raw("task_struct", Kind.FWD)  # 26, a forward declaration sharing the name
    ids["volatile"] = e.ref(Kind.VOLATILE, 14)  # 27
    ids["restrict"] = e.ref(Kind.RESTRICT, 15)  # 28
    ids["task_t"] = e.ref(Kind.TYPEDEF, 27, "task_t")  # 29
    ids["legacy"] = e.struct("legacy", 4, [  # 30: bitfields encoded in the INT (no kind_flag)
        ("low", 31, 0), ("high", 2, 8)], kflag=False)
    ids["int:3 at 2"] = e.int_("int", 4, signed=True, bits=3, offset=2)  # 31
    ids["task[2]"] = e.array(12, 2)  # 32
    return e, ids


@pytest.fixture
def btf() -> BTF:
    e, _ = kernel_like()
    return BTF.from_bytes(e.blob())


def test_parses_every_kind(btf):
    _, ids = kernel_like()
    assert len(btf) == 33
    btf.validate()
    assert {btf.kind(i) for i in range(1, len(btf))} == set(Kind) - {Kind.VOID}
    t = btf.type_named("task_struct")
    assert t.kind == Kind.STRUCT and t.id == ids["task_struct"] and t.size == 64
    assert btf.type_named("task_struct", Kind.FWD).id == ids["fwd"]
    assert [m.name for m in t.members][:3] == ["state", "", "tasks"]
    e16 = btf.type(ids["enum state"])
    assert [(x.name, x.value) for x in e16.enumerators] == [
        ("RUNNING", 0), ("STOPPED", 4), ("DEAD", -1)]
    assert [x.value for x in btf.type(ids["enum64"]).enumerators] == [1 << 40, -2]
    proto = btf.type(ids["proto"])
    assert [(p.name, p.type_id) for p in proto.params] == [("p", 15), ("", 0)]
    assert btf.type_named("schedule").linkage == 1
    assert btf.type_named("init_task", Kind.VAR).linkage == 1
    assert btf.type(ids["datasec"]).secinfos[0].size == 64
    assert btf.type(ids["decl_tag"]).component_idx == 3
    assert btf.type(ids["bool"]).is_bool and btf.type(ids["int"]).is_signed
    assert btf.type_name(ids["task_struct *"]) == "struct task_struct *"
    assert btf.type_name(ids["char[16]"]) == "char [16]"
    assert btf.type_name(ids["proto"]) == "int (struct task_struct *, ...)"


def test_layout_and_anonymous_members(btf):
    s = btf.struct("task_struct")
    assert s is btf.struct("struct task_struct") is btf.layout(btf.lookup("task_t"))
    assert btf.member_offset("task_struct", "pid") == 4
    assert btf.member_offset("task_struct", "tgid") == 52
    assert s.offset("upid") == 4
    assert s.offset("tasks.prev") == 16
    assert s.offset("comm[3]") == 35
    f = s.field("nice")
    assert (f.bit_offset, f.bit_size, f.offset) == (387, 4, 48)
    assert "real_parent" in s and "nonexistent" not in s
    with pytest.raises(MemberNotFound):
        s.field("nonexistent")
    with pytest.raises(MemberNotFound):
        s.field("pid.x")
    legacy = btf.struct("legacy")
    assert (legacy.field("low").bit_offset, legacy.field("low").bit_size) == (2, 3)
    assert legacy.field("high").bit_size == 0


def test_resolve_sizeof_lookup(btf):
    _, ids = kernel_like()
    assert btf.resolve(ids["task_t"]) == ids["task_struct"]  # typedef->volatile->const
    assert btf.resolve(ids["type_tag"]) == ids["task_struct"]
    assert btf.resolve(ids["restrict"]) == ids["task_struct *"]
    assert btf.sizeof(ids["task_t"]) == 64
    assert btf.sizeof(ids["task[2]"]) == 128
    assert btf.sizeof(ids["char[16]"]) == 16
    assert btf.sizeof(ids["task_struct *"]) == 8
    assert btf.sizeof(ids["var"]) == 64
    with pytest.raises(ProfileError):
        btf.sizeof(ids["proto"])
    with pytest.raises(ProfileError):
        btf.sizeof(0)
    assert btf.lookup("struct task_struct") == ids["task_struct"]
    assert btf.lookup("struct task_struct *") == ids["task_struct *"]
    assert btf.lookup("unsigned long") == ids["ulong"]
    assert btf.lookup("unsigned int") == ids["uint"]
    assert btf.lookup("pid_t") == ids["pid_t"]
    assert btf.lookup("void") == 0
    pp = btf.lookup("struct task_struct **")  # not in the blob: synthesized
    assert btf.kind(pp) == Kind.PTR and btf.type(pp).type_id == ids["task_struct *"]
    assert btf.type_name(pp) == "struct task_struct * *"
    for bad in ("struct nope", "union task_struct", "enum task_struct"):
        with pytest.raises(TypeNotFound):
            btf.lookup(bad)
    with pytest.raises(LookupError):
        btf.type_named("nope")
    assert btf.find_type("nope") is None
    assert btf.ids_named("task_struct") == [ids["task_struct"], ids["fwd"]]


# ----- hostile blobs: every failure is a ProfileError (a hang is caught by pytest-timeout)

def assert_profile_error(data: bytes, then=None) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        btf = BTF.from_bytes(data)
        if then is not None:
            then(btf)
    return info.value


def test_bad_header():
    e, _ = kernel_like()
    assert "magic" in str(assert_profile_error(e.blob(magic=0x1234)))
    assert "version" in str(assert_profile_error(e.blob(version=2)))
    assert "flags" in str(assert_profile_error(e.blob(flags=1)))
    assert_profile_error(b"")
    assert_profile_error(b"\x9f\xeb\x01\x00")
    good = e.blob()
    assert "string section" in str(assert_profile_error(e.blob(str_len=len(e.strings) + 1)))
    bad_hdr = bytearray(good)
    bad_hdr[4:8] = struct.pack("<I", 10)
    assert "header length" in str(assert_profile_error(bytes(bad_hdr)))
    no_nul = bytearray(good)
    no_nul[-1] = ord("x")
    assert "NUL" in str(assert_profile_error(bytes(no_nul)))


def test_truncated_everywhere():
    good = kernel_like()[0].blob()
    for cut in range(len(good)):
        assert_profile_error(good[:cut])


def test_type_section_runs_short():
    e, _ = kernel_like()
    total = sum(len(t) for t in e.types)
    # Declare 4 bytes less: the last type no longer fits (its strings still line up).
    data = e.blob(type_len=total - 4)
    hdr = bytearray(data[:24])
    hdr[16:20] = struct.pack("<I", total)  # str_off stays after the real types
    assert "runs past" in str(assert_profile_error(bytes(hdr) + data[24:]))


def test_unknown_kind():
    e = BtfEncoder()
    e.int_("int", 4)
    e.raw("weird", 25)
    assert "unknown kind" in str(assert_profile_error(e.blob()))


def test_huge_vlen():
    e = BtfEncoder()
    e.int_("int", 4)
    e.raw("big", Kind.STRUCT, vlen=0xFFFF, third=8)  # claims 65535 members, has none
    assert "runs past" in str(assert_profile_error(e.blob()))


def test_type_id_out_of_range():
    e = BtfEncoder()
    e.int_("int", 4)
    e.ref(Kind.PTR, 9999)
    e.struct("s", 8, [("p", 4242, 0)])
    e.ref(Kind.TYPEDEF, 0xFFFFFFFF, "t")
    btf = BTF.from_bytes(e.blob())  # indexing is lazy; using the type is what fails
    assert "out of range" in str(assert_profile_error(e.blob(), lambda b: b.type(2)))
    with pytest.raises(ProfileError):
        btf.struct("s")
    with pytest.raises(ProfileError):
        btf.resolve(4)
    with pytest.raises(ProfileError):
        btf.validate()
    with pytest.raises(ProfileError):
        btf.type(77)
    with pytest.raises(ProfileError):
        btf.kind(-1)


def test_reference_cycles():
    e = BtfEncoder()
    e.ref(Kind.TYPEDEF, 2, "a")  # 1 -> 2
    e.ref(Kind.CONST, 3)  # 2 -> 3
    e.ref(Kind.TYPEDEF, 1, "c")  # 3 -> 1
    e.array(4, 2)  # 4: array of itself
    e.struct("self", 8, [("", 6, 0)])  # 5: anonymous member that contains 5 again
    e.ref(Kind.TYPEDEF, 5, "self_t")  # 6
    e.int_("int", 4)  # 7 (index type)
    btf = BTF.from_bytes(e.blob())
    for call in (lambda: btf.resolve(1), lambda: btf.sizeof(3), lambda: btf.sizeof(btf.lookup("c")),
                 lambda: btf.sizeof(4), lambda: btf.struct("self"), btf.validate):
        with pytest.raises(ProfileError, match="cycle|contains itself"):
            call()
    assert btf.type_name(1)  # formatting a cyclic type must not hang either


def test_string_offset_out_of_range():
    e = BtfEncoder()
    e.int_("int", 4)
    e.raw(100_000, Kind.STRUCT, third=0)
    btf = BTF.from_bytes(e.blob())
    with pytest.raises(ProfileError, match="out of range"):
        btf.type(2)
    with pytest.raises(ProfileError, match="out of range"):
        btf.type_named("int")  # building the name index checks every name
    e2 = BtfEncoder()
    e2.struct("s", 4, [(100_000, 0, 0)])  # a member name out of range
    with pytest.raises(ProfileError, match="out of range"):
        BTF.from_bytes(e2.blob()).struct("s")


def test_bad_int_bits():
    e = BtfEncoder()
    e.int_("int", 4, bits=200)
    with pytest.raises(ProfileError, match="bit layout"):
        BTF.from_bytes(e.blob()).type(1)


def test_fuzzed_blobs_only_raise_profile_error():
    """Random corruption of a valid blob: parse and use it; only ProfileError may escape."""
    good = bytearray(kernel_like()[0].blob())
    rng = random.Random(1234)
    for _ in range(1500):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256) if rng.random() < 0.7 else rng.choice([0, 0xFF])
        try:
            btf = BTF.from_bytes(bytes(data))
            btf.validate()
            for name in ("task_struct", "list_head", "pid_t", "legacy"):
                btf.find_type(name)
            btf.member_offset("task_struct", "pid")
            for tid in range(len(btf)):
                btf.type_name(tid)
        except ProfileError:
            pass


def test_big_endian_blob():
    e, _ = kernel_like()
    little = e.blob()
    # Byte-swap every u32 of header fields and types (all types are u32 words).
    hdr = struct.unpack_from("<HBBIIIII", little)
    types = little[24:24 + hdr[5]]
    swapped = b"".join(struct.pack(">I", w) for w in struct.unpack(f"<{len(types) // 4}I", types))
    big = struct.pack(">HBBIIIII", *hdr) + swapped + little[24 + hdr[5]:]
    btf = BTF.from_bytes(big)
    assert btf.member_offset("task_struct", "tgid") == 52
    assert [x.value for x in btf.type_named("task_state").enumerators] == [0, 4, -1]


# ----- locate_btf over synthetic memory

class BytesMemory:
    """Just enough of PhysicalMemory for locate_btf."""

    def __init__(self, data: bytes) -> None:
        from cloudvmi.memory.base import PhysicalMemory, Region

        class _M(PhysicalMemory):
            def _read_at(self, offset: int, size: int) -> bytes:
                return data[offset:offset + size]

        self.m = _M([Region(0, len(data), 0)])

    def __getattr__(self, name):
        return getattr(self.m, name)


def test_locate_btf_prefers_largest_clean_blob():
    small = BtfEncoder()
    small.int_("int", 4)
    big, _ = kernel_like()
    fake = bytearray(big.blob())
    fake[-1] = 0x41  # header intact but the string section is damaged: not a candidate
    ram = bytearray(1 << 20)
    ram[0x1000:0x1000 + len(small.blob())] = small.blob()
    ram[0x3000:0x3000 + len(fake)] = fake
    ram[0x8004:0x8004 + len(big.blob())] = big.blob()
    ram[0x20000:0x20004] = b"\x9f\xeb\x01\x00"  # stray magic
    mem = BytesMemory(bytes(ram))
    assert locate_btf(mem) == (0x8004, len(big.blob()))
    assert [c.paddr for c in btf_candidates(mem)] == [0x8004, 0x1000]
    assert load_btf(mem).member_offset("task_struct", "pid") == 4
    with pytest.raises(ProfileError, match="no BTF"):
        locate_btf(BytesMemory(bytes(4096)))


# ----- real guest memory dumps

EXPECTED_61 = {"tasks": 2192, "pid": 2416, "comm": 2976, "mm": 2272}  # pahole, 6.1.0-56


@pytest.mark.parametrize("version", KERNELS)
def test_real_dump(version, capsys, guest_images):
    path = guest_images(version) / f"{version}.raw"
    from cloudvmi.memory.mapped import MappedFileMemory

    mem = MappedFileMemory(path)
    try:
        t0 = time.perf_counter()
        paddr, size = locate_btf(mem)
        t_locate = time.perf_counter() - t0
        data = mem.read(paddr, size)
    finally:
        mem.close()
    assert size > 1 << 20
    t0 = time.perf_counter()
    btf = BTF.from_bytes(data)
    t_parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    task = btf.struct("task_struct")
    t_lookup = time.perf_counter() - t0
    fields = {f: task.offset(f) for f in ("pid", "tgid", "comm", "tasks", "mm", "real_parent")}
    for off in fields.values():
        assert 0 < off < task.size
    assert btf.sizeof(task.field("comm").type_id) == 16
    assert btf.kind(btf.resolve(task.field("mm").type_id)) == Kind.PTR
    assert btf.member_offset("task_struct", "pid") == fields["pid"]
    assert fields["tgid"] == fields["pid"] + 4
    pgd = btf.member_offset("mm_struct", "pgd")
    assert 0 < pgd < btf.struct("mm_struct").size
    assert btf.member_offset("list_head", "next") == 0
    with capsys.disabled():
        print(f"\n{version}: BTF at {paddr:#x}, {size} bytes, {len(btf) - 1} types; "
              f"locate {t_locate:.3f}s, parse {t_parse * 1000:.1f} ms, first struct lookup "
              f"(builds name index) {t_lookup * 1000:.1f} ms; task_struct size {task.size} "
              f"{fields}, mm_struct.pgd {pgd}")
    if version == "6.1":  # offsets pahole printed from the DWARF of Debian's 6.1 build
        assert {k: fields[k] for k in EXPECTED_61} == EXPECTED_61 and pgd == 72

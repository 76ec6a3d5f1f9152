"""BTF encoder and Volatility 3 ISF conversion: hand-built types and ISFs (including hostile
ones), then round trips of the real BTF of kept guest RAM images (no guest is booted when
$CLOUDVMI_VIEW_CORPUS names them)."""

import base64
import copy
import gzip
import json
import lzma
import random
import time
from pathlib import Path

import pytest
import volatility3

from cloudvmi.errors import ProfileError
from cloudvmi.os.linux.btf import BTF, Enumerator, Kind, Member, Param, load_btf
from cloudvmi.os.linux.btf_encode import BtfBuilder
from cloudvmi.os.linux.isf import (
    FORMAT_VERSION,
    MAX_ISF_BYTES,
    btf_to_isf,
    check_isf,
    isf_banner,
    isf_symbols,
    isf_to_btf,
    load_isf,
)

SCHEMAS = Path(volatility3.__file__).parent / "schemas"  # Volatility's own, as installed
BANNER = b"Linux version 6.1.0-test (gcc) #1 SMP PREEMPT_DYNAMIC\n"


# ----- the encoder alone


def test_encoder_round_trip():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int", 4)
    i32 = b.add_int("int", 4, signed=True)
    char = b.add_int("char", 1, signed=True)
    boolean = b.add_int("_Bool", 1, is_bool=True)
    dbl = b.add_float("double", 8)
    fwd = b.add_fwd("later")
    fwd_u = b.add_fwd("later_u", union=True)
    node = b.add_struct("node", 24)  # members set below: it points at itself
    pnode = b.add_ptr(node)
    b.set_members(node, [Member("next", pnode, 0, 0), Member("prev", pnode, 64, 0),
                         Member("val", i32, 128, 0)])
    comm = b.add_array(char, 16)
    cu32 = b.add_const(u32)
    vu32 = b.add_volatile(cu32)
    pid_t = b.add_typedef("pid_t", i32)
    proto = b.add_func_proto(i32, [Param("a", pnode), Param("", 0)])
    fptr = b.add_ptr(proto)
    inner = b.add_union("", 4, [Member("as_int", u32, 0, 0), Member("as_bool", boolean, 0, 0)])
    colour = b.add_enum("colour", 4, [Enumerator("RED", 0), Enumerator("BLUE", 7)])
    signed = b.add_enum("delta", 4, [Enumerator("DOWN", -1), Enumerator("UP", 1)])
    wide = b.add_enum("wide", 8, [Enumerator("SMALL", 1), Enumerator("HUGE", 1 << 40)])
    negwide = b.add_enum("negwide", 8, [Enumerator("LOW", -(1 << 40))])
    b.add_struct("thing", 64, [
        Member("pid", pid_t, 0, 0),
        Member("flag_a", u32, 32, 1),  # bitfields: kind_flag, size in the high byte
        Member("flag_b", u32, 33, 3),
        Member("colour", colour, 36, 2),
        Member("", inner, 64, 0),  # anonymous union: its members are thing's
        Member("comm", comm, 96, 0),
        Member("list", node, 256 - 32, 0),
        Member("fn", fptr, 448, 0),
        Member("ro", vu32, 480, 0),
        Member("d", dbl, 384, 0),
    ])
    blob = b.to_bytes()
    btf = BTF.from_bytes(blob)
    btf.validate()
    assert len(btf) == len(b)
    assert btf.kind(u32) == Kind.INT and btf.type(char).is_signed and btf.type(boolean).is_bool
    assert btf.kind(dbl) == Kind.FLOAT and btf.sizeof(dbl) == 8
    assert btf.lookup("struct later") == fwd and btf.lookup("union later_u") == fwd_u
    assert btf.lookup("struct node *") == pnode and btf.lookup("pid_t") == pid_t
    assert btf.type_name(fptr) == "int (struct node *, ...) *"
    assert btf.type_name(vu32) == "volatile const unsigned int"
    assert [(e.name, e.value) for e in btf.type(colour).enumerators] == [("RED", 0), ("BLUE", 7)]
    assert [e.value for e in btf.type(signed).enumerators] == [-1, 1]
    assert btf.kind(wide) == Kind.ENUM64 and btf.type(wide).enumerators[1].value == 1 << 40
    assert btf.type(negwide).enumerators[0].value == -(1 << 40)
    t = btf.struct("thing")
    assert btf.type(t.id).kind_flag and t.size == 64
    assert (t.field("flag_a").bit_offset, t.field("flag_a").bit_size) == (32, 1)
    assert (t.field("flag_b").bit_offset, t.field("flag_b").bit_size) == (33, 3)
    assert t.field("colour").bit_size == 2 and t.offset("as_bool") == 8
    assert t.offset("list.prev") == 28 + 8 and t.offset("list.val") == 28 + 16
    assert t.offset("comm[3]") == 15 and btf.type_name(t.field("comm").type_id) == "char [16]"
    assert btf.member_offset("node", "val") == 16
    # The same types, big-endian.
    assert BTF.from_bytes(b.to_bytes(">")).struct("thing").field("flag_b").bit_size == 3


def test_encoder_limits():
    b = BtfBuilder()
    u32 = b.add_int("unsigned int", 4)
    with pytest.raises(ProfileError, match="too large"):
        b.add_struct("far", 1 << 22, [Member("bf", u32, 1 << 24, 1)])
    with pytest.raises(ProfileError, match="BTF allows"):
        b.add_struct("many", 4, [Member(f"m{i}", u32, 0, 0) for i in range(70000)])
    with pytest.raises(ProfileError, match="NUL"):
        b.add_int("bad\0name", 4)
    with pytest.raises(ProfileError, match="32 bits"):
        b.add_array(u32, 1 << 32)
    with pytest.raises(ProfileError, match="64 bits"):
        b.add_enum("e", 8, [Enumerator("X", 1 << 64)])
    with pytest.raises(ProfileError, match="bits"):
        b.add_int("huge", 4, bits=64)
    b.add_ptr(999)
    with pytest.raises(ProfileError, match="does not exist"):
        b.to_bytes()


# ----- hand-built ISFs


def _isf(**over) -> dict:
    """A small ISF in dwarf2json's shape: anonymous members, bitfields, enums, pointers."""
    isf = {
        "metadata": {"format": FORMAT_VERSION, "producer": {"name": "test", "version": "1.0.0"}},
        "base_types": {
            "void": {"size": 0, "signed": False, "kind": "void", "endian": "little"},
            "pointer": {"size": 8, "signed": False, "kind": "int", "endian": "little"},
            "int": {"size": 4, "signed": True, "kind": "int", "endian": "little"},
            "unsigned int": {"size": 4, "signed": False, "kind": "int", "endian": "little"},
            "char": {"size": 1, "signed": True, "kind": "char", "endian": "little"},
            "_Bool": {"size": 1, "signed": False, "kind": "bool", "endian": "little"},
            "double": {"size": 8, "signed": True, "kind": "float", "endian": "little"},
        },
        "user_types": {
            "list_head": {"kind": "struct", "size": 16, "fields": {
                "next": {"offset": 0, "type": {"kind": "pointer", "subtype": {
                    "kind": "struct", "name": "list_head"}}},
                "prev": {"offset": 8, "type": {"kind": "pointer", "subtype": {
                    "kind": "struct", "name": "list_head"}}}}},
            "task": {"kind": "struct", "size": 64, "fields": {  # sorted by name, as Go writes
                "comm": {"offset": 24, "type": {"kind": "array", "count": 16, "subtype": {
                    "kind": "base", "name": "char"}}},
                "flags": {"offset": 4, "type": {"kind": "bitfield", "bit_position": 3,
                                                "bit_length": 5, "type": {
                                                    "kind": "base", "name": "unsigned int"}}},
                "fn": {"offset": 40, "type": {"kind": "pointer", "subtype": {
                    "kind": "function"}}},
                "mm": {"offset": 48, "type": {"kind": "pointer", "subtype": {
                    "kind": "struct", "name": "mm_struct"}}},
                "pid": {"offset": 0, "type": {"kind": "base", "name": "int"}},
                "state": {"offset": 5, "type": {"kind": "bitfield", "bit_position": 0,
                                                "bit_length": 2, "type": {
                                                    "kind": "enum", "name": "task_state"}}},
                "unnamed_field_0": {"anonymous": True, "offset": 8, "type": {
                    "kind": "union", "name": "unnamed_00112233aabbccdd"}},
                "weird": {"offset": 56, "type": {"kind": "base", "name": "u_missing"}},
                "why": {"offset": 60, "type": {"kind": "enum", "name": "missing_enum"}}}},
            "unnamed_00112233aabbccdd": {"kind": "union", "size": 16, "fields": {
                "tasks": {"offset": 0, "type": {"kind": "struct", "name": "list_head"}},
                "unnamed_field_0": {"anonymous": True, "offset": 0, "type": {
                    "kind": "struct", "name": "unnamed_ffeeddccbbaa0099"}}}},
            "unnamed_ffeeddccbbaa0099": {"kind": "struct", "size": 16, "fields": {
                "a": {"offset": 0, "type": {"kind": "base", "name": "double"}},
                "b": {"offset": 8, "type": {"kind": "base", "name": "_Bool"}}}},
            "atomic_t": {"kind": "struct", "size": 4, "fields": {
                "counter": {"offset": 0, "type": {"kind": "base", "name": "int"}}}},
        },
        "enums": {
            "task_state": {"size": 4, "base": "unsigned int", "constants": {
                "RUNNING": 0, "SLEEPING": 1}},
            "unnamed_0123456789abcdef": {"size": 8, "base": "long", "constants": {
                "BIG": 1 << 40, "NEG": -5}},
        },
        "symbols": {
            "init_task": {"address": 0xFFFFFFFF82000000,
                          "type": {"kind": "struct", "name": "task"}},
            "linux_banner": {"address": 0xFFFFFFFF81E00000,
                             "constant_data": base64.b64encode(BANNER + b"\0").decode()},
        },
    }
    isf.update(over)
    return isf


def test_isf_to_btf_small():
    btf = BTF.from_bytes(isf_to_btf(_isf()))
    btf.validate()
    task = btf.struct("task")
    assert btf.lookup("struct task") == task.id and task.size == 64
    # Anonymous members flatten as in kernel BTF: tasks and a/b are task's own fields.
    assert task.offset("tasks") == 8 and task.offset("a") == 8 and task.offset("b") == 16
    assert task.offset("tasks.prev") == 16
    assert (task.field("flags").bit_offset, task.field("flags").bit_size) == (35, 5)
    assert (task.field("state").bit_offset, task.field("state").bit_size) == (40, 2)
    assert btf.type_name(task.field("comm").type_id) == "char [16]"
    assert btf.type_name(task.field("mm").type_id) == "struct mm_struct *"  # FWD
    assert btf.type_name(task.field("fn").type_id) == "void () *"
    assert btf.sizeof(task.field("weird").type_id) == 0  # undefined base type
    assert btf.kind(btf.resolve(task.field("why").type_id)) == Kind.ENUM
    assert [m.name for m in task.members][:3] == ["pid", "flags", "state"]  # by offset
    union = btf.type(btf.resolve(task.members[3].type_id))
    assert task.members[3].name == "" and union.kind == Kind.UNION and union.name == ""
    assert btf.struct("atomic_t").size == 4 and btf.lookup("atomic_t")
    enum = btf.type_named("task_state")
    assert {e.name: e.value for e in enum.enumerators} == {"RUNNING": 0, "SLEEPING": 1}
    anon = [t for t in btf.types() if t.kind == Kind.ENUM64]
    assert len(anon) == 1 and anon[0].name == "" and anon[0].is_signed
    assert isf_banner(_isf()) == BANNER
    assert isf_symbols(_isf())["init_task"] == 0xFFFFFFFF82000000


def test_isf_to_btf_big_endian():
    isf = _isf()
    for bt in isf["base_types"].values():
        bt["endian"] = "big"
    btf = BTF.from_bytes(isf_to_btf(isf))
    assert btf.endian == ">" and btf.struct("task").offset("tasks") == 8
    isf["base_types"]["int"]["endian"] = "little"
    with pytest.raises(ProfileError, match="mix"):
        isf_to_btf(isf)


def test_load_isf_files(tmp_path):
    text = json.dumps(_isf()).encode()
    (tmp_path / "k.json").write_bytes(text)
    (tmp_path / "k.json.xz").write_bytes(lzma.compress(text))
    (tmp_path / "k.json.gz").write_bytes(gzip.compress(text))
    for name in ("k.json", "k.json.xz", "k.json.gz"):
        assert load_isf(tmp_path / name) == _isf()
    assert MAX_ISF_BYTES == 1 << 30
    # A compression bomb stops at the bound, not at the end of the stream.
    bomb = tmp_path / "bomb.json.xz"
    bomb.write_bytes(lzma.compress(b"[" + b" " * (8 << 20) + b"]"))
    t0 = time.perf_counter()
    with pytest.raises(ProfileError, match="decompresses past"):
        load_isf(bomb, max_bytes=1 << 20)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("content, message", [
    (b"", "not valid JSON"),
    (b"{\"metadata\": ", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[1, 2]", "not an ISF"),
    (b"{}", "not an ISF"),
    (b"{\"metadata\": {\"format\": \"six\"}}", "not an ISF"),
    (b"{\"metadata\": {\"format\": \"" + b"1" * 5000 + b".0.0\"}}", "not an ISF"),
    (b"{\"metadata\": {\"format\": \"9.0.0\"}, \"base_types\": {}, \"user_types\": {}}",
     "unsupported"),
    (b"{\"metadata\": {\"format\": \"6.2.0\"}, \"base_types\": {}}", "no user_types"),
    (b"{\"metadata\": {\"format\": \"6.2.0\"}, \"base_types\": [], \"user_types\": {}}",
     "not an object"),
    (b"[" * 200000 + b"]" * 200000, "nests too deeply|not valid JSON"),
    (b"{\"a\": 1" + b"0" * 5000 + b"}", "not valid JSON"),  # past int digit limits
    (lzma.compress(b"{\"metadata\": 1}")[:-8], "cannot read"),  # truncated stream
    (b"\x1f\x8b\x08\x00garbage", "cannot read"),
])
def test_load_isf_refuses(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ProfileError, match=message):
        load_isf(path)


def test_load_isf_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        load_isf(tmp_path / "nope.json.xz")


def _nested(depth: int) -> dict:
    d: dict = {"kind": "base", "name": "int"}
    for _ in range(depth):
        d = {"kind": "pointer", "subtype": d}
    return d


def _hostile_cases() -> dict[str, dict]:
    def with_field(desc=None, **field) -> dict:
        isf = _isf()
        f = {"offset": 0, "type": desc} if desc is not None else {}
        f.update(field)
        isf["user_types"]["task"]["fields"]["x"] = f
        return isf

    cases: dict[str, dict] = {}
    cyclic = _isf()
    cyclic["user_types"]["a"] = {"kind": "struct", "size": 8, "fields": {
        "b": {"offset": 0, "type": {"kind": "array", "count": 2, "subtype": {
            "kind": "struct", "name": "b"}}}}}
    cyclic["user_types"]["b"] = {"kind": "struct", "size": 8, "fields": {
        "a": {"offset": 0, "type": {"kind": "struct", "name": "a"}}}}
    cases["cycle by value"] = cyclic
    selfish = _isf()
    selfish["user_types"]["unnamed_00112233aabbccdd"]["fields"]["loop"] = {
        "offset": 0, "anonymous": True, "type": {"kind": "union",
                                                 "name": "unnamed_00112233aabbccdd"}}
    cases["anonymous member contains itself"] = selfish
    loop: dict = {"kind": "pointer"}
    loop["subtype"] = loop
    cases["self-referential descriptor"] = with_field(loop)
    cases["deep descriptor"] = with_field(_nested(5000))
    cases["huge array count"] = with_field({"kind": "array", "count": 1 << 40,
                                            "subtype": {"kind": "base", "name": "int"}})
    cases["negative count"] = with_field({"kind": "array", "count": -1,
                                          "subtype": {"kind": "base", "name": "int"}})
    cases["bitfield too long"] = with_field({"kind": "bitfield", "bit_position": 0,
                                             "bit_length": 300, "type": {
                                                 "kind": "base", "name": "int"}})
    cases["bitfield of a struct"] = with_field({"kind": "bitfield", "bit_position": 0,
                                                "bit_length": 3, "type": {
                                                    "kind": "struct", "name": "task"}})
    cases["bitfield far away"] = with_field({"kind": "bitfield", "bit_position": 0,
                                             "bit_length": 3, "type": {
                                                 "kind": "base", "name": "int"}},
                                            offset=1 << 22)
    cases["array of an undefined struct"] = with_field({
        "kind": "array", "count": 2, "subtype": {"kind": "struct", "name": "nowhere"}})
    cases["array of void"] = with_field({"kind": "array", "count": 2, "subtype": {
        "kind": "array", "count": 2, "subtype": {"kind": "base", "name": "void"}}})
    cases["unknown kind"] = with_field({"kind": "typedef", "name": "x"})
    cases["string offset"] = with_field({"kind": "base", "name": "int"}, offset="8")
    cases["bool offset"] = with_field({"kind": "base", "name": "int"}, offset=True)
    cases["missing offset"] = with_field(None, type={"kind": "base", "name": "int"})
    cases["missing type"] = with_field(None, offset=0)
    cases["name not a string"] = with_field({"kind": "base", "name": 7})
    cases["anonymous not a bool"] = with_field({"kind": "base", "name": "int"},
                                               anonymous="yes")
    too_many = _isf()
    too_many["user_types"]["wide"] = {"kind": "struct", "size": 4, "fields": {
        f"f{i}": {"offset": 0, "type": {"kind": "base", "name": "int"}} for i in range(70000)}}
    cases["too many fields"] = too_many
    for name, patch in {
        "fields a list": ("user_types", "task", "fields", []),
        "user type kind": ("user_types", "task", "kind", "class2"),
        "negative size": ("user_types", "task", "size", -4),
        "size a float": ("user_types", "task", "size", 4.0),
        "enum value too big": ("enums", "task_state", "constants", {"X": 1 << 64}),
        "enum value a string": ("enums", "task_state", "constants", {"X": "1"}),
        "enum constants a list": ("enums", "task_state", "constants", [1]),
        "base kind": ("base_types", "int", "kind", "integer"),
        "base signed": ("base_types", "int", "signed", "no"),
        "base endian": ("base_types", "int", "endian", ["little"]),
        "base size": ("base_types", "int", "size", 1 << 40),
    }.items():
        isf = _isf()
        table, key, attr, value = patch
        isf[table][key][attr] = value
        cases[name] = isf
    cases["user type not an object"] = _isf(user_types={"x": 5})
    cases["enums a list"] = _isf(enums=[])
    cases["key not a string"] = _isf(user_types={1: {"kind": "struct", "size": 0,
                                                     "fields": {}}})
    cases["NUL in a name"] = _isf(user_types={"a\0b": {"kind": "struct", "size": 0,
                                                       "fields": {}}})
    cases["not a dict"] = [1, 2]  # type: ignore[assignment]
    return cases


HOSTILE = _hostile_cases()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_isf(case):
    t0 = time.perf_counter()
    with pytest.raises(ProfileError):
        isf_to_btf(HOSTILE[case])
    assert time.perf_counter() - t0 < 5


def test_hostile_symbols_and_banner():
    isf = _isf()
    isf["symbols"]["linux_banner"]["constant_data"] = "not base64!"
    with pytest.raises(ProfileError, match="base64"):
        isf_banner(isf)
    isf["symbols"]["linux_banner"]["constant_data"] = 5
    with pytest.raises(ProfileError, match="base64"):
        isf_banner(isf)
    del isf["symbols"]["linux_banner"]
    assert isf_banner(isf) is None
    isf["symbols"]["bad"] = {"address": "0x10"}
    with pytest.raises(ProfileError, match="address"):
        isf_symbols(isf)
    isf["symbols"]["bad"] = {"address": -1}
    with pytest.raises(ProfileError, match="address"):
        isf_symbols(isf)
    isf["symbols"]["bad"] = []
    with pytest.raises(ProfileError, match="not an object"):
        isf_symbols(isf)
    with pytest.raises(ProfileError, match="not an ISF"):
        isf_banner({"symbols": {}})


_JUNK = [None, -1, 0, 1 << 70, 2.5, True, "", "x", "struct", "unnamed_01", [], {}, [1],
         {"kind": "base"}, {"kind": "pointer", "subtype": None}, {"kind": "struct"},
         {"kind": "bitfield"}, {"kind": "array", "count": 3}]


def _nodes(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _nodes(v, path + (i,))


def test_fuzzed_isf():
    """Random damage to a valid ISF: it converts to valid BTF, or fails with ProfileError."""
    rng = random.Random(1234)
    base = _isf()
    paths = [p for p in _nodes(base) if p]
    outcomes = {"ok": 0, "refused": 0}
    t0 = time.perf_counter()
    for _ in range(5000):
        isf = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            try:
                parent = isf
                for k in path[:-1]:
                    parent = parent[k]
                if rng.random() < 0.2 and isinstance(parent, dict):
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = copy.deepcopy(rng.choice(_JUNK))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier change removed this path
        try:
            blob = isf_to_btf(isf)
        except ProfileError:
            outcomes["refused"] += 1
            continue
        BTF.from_bytes(blob).validate()  # what converts is valid BTF
        outcomes["ok"] += 1
    assert outcomes["ok"] > 100 and outcomes["refused"] > 100, outcomes
    assert time.perf_counter() - t0 < 120


def test_btf_to_isf_small():
    btf = BTF.from_bytes(isf_to_btf(_isf()))
    isf = btf_to_isf(btf, {"init_task": 0x1000, "linux_banner": 0x2000}, BANNER)
    task = isf["user_types"]["task"]
    anon = task["fields"]["unnamed_field_0"]
    assert anon["anonymous"] and anon["offset"] == 8
    assert isf["user_types"][anon["type"]["name"]]["kind"] == "union"
    assert task["fields"]["flags"] == {"offset": 4, "type": {
        "kind": "bitfield", "bit_position": 3, "bit_length": 5,
        "type": {"kind": "base", "name": "unsigned int"}}}
    assert task["fields"]["state"]["type"]["type"] == {"kind": "enum", "name": "task_state"}
    assert "mm_struct" not in isf["user_types"]  # only declared
    assert isf_banner(isf) == BANNER and isf_symbols(isf)["init_task"] == 0x1000
    assert base64.b64decode(isf["symbols"]["linux_banner"]["constant_data"]).endswith(b"\n\0")
    assert "type" not in isf["symbols"]["init_task"]  # this BTF has no task_struct
    assert check_isf(json.loads(json.dumps(isf))) is not None
    _check_schema(isf)
    # A second trip changes nothing: the names of anonymous types hash their definitions.
    again = btf_to_isf(BTF.from_bytes(isf_to_btf(isf)), {}, BANNER)
    for table in ("base_types", "user_types", "enums"):
        assert again[table] == isf[table]


def test_btf_to_isf_global_types():
    """Globals BTF gives no type: typed from the kernel's declarations (a struct, a pointer,
    an anonymous struct told by its members, an array of a length the caller counted, the
    linker's section bounds); a kernel without the type leaves the symbol untyped."""
    b = BtfBuilder()
    u64 = b.add_int("long unsigned int", 8)
    char = b.add_int("char", 1, signed=True)
    head = b.add_struct("list_head", 16)
    b.set_members(head, [Member("next", b.add_ptr(head), 0, 0),
                         Member("prev", b.add_ptr(head), 64, 0)])
    kset = b.add_struct("kset", 8, [Member("n", u64, 0, 0)])
    b.add_ptr(kset)
    b.add_struct("taint_flag", 3, [Member("c_true", char, 0, 0),
                                   Member("c_false", char, 8, 0)])
    keeper = b.add_struct("timekeeper", 8, [Member("offs_real", u64, 0, 0)])
    b.add_struct("", 16, [Member("seq", u64, 0, 0), Member("timekeeper", keeper, 64, 0)])
    btf = BTF.from_bytes(b.to_bytes())
    names = ("modules", "module_kset", "tk_core", "taint_flags", "_text", "mod_tree", "x")
    symbols = {n: 0xFFFFFFFF81000000 + i * 64 for i, n in enumerate(names)}
    isf = btf_to_isf(btf, symbols, BANNER, {"taint_flags": 19})
    typed = {n: isf["symbols"][n].get("type") for n in names}
    assert typed["modules"] == {"kind": "struct", "name": "list_head"}
    assert typed["module_kset"] == {"kind": "pointer", "subtype": {"kind": "struct",
                                                                   "name": "kset"}}
    assert isf["user_types"][typed["tk_core"]["name"]]["fields"]["timekeeper"]["offset"] == 8
    assert typed["taint_flags"] == {"kind": "array", "count": 19, "subtype": {
        "kind": "struct", "name": "taint_flag"}}
    assert typed["_text"] == {"kind": "array", "count": 0, "subtype": {"kind": "base",
                                                                      "name": "char"}}
    assert typed["mod_tree"] is None and typed["x"] is None  # no such type; not a known global
    assert "type" not in btf_to_isf(btf, symbols, BANNER)["symbols"]["taint_flags"]
    _check_schema(isf)


def test_btf_to_isf_hostile_btf():
    b = BtfBuilder()
    ptrs = [b.add_ptr(0)]
    for _ in range(300):  # a pointer chain deeper than any C type
        ptrs.append(b.add_ptr(ptrs[-1]))
    b.add_struct("deep", 8, [Member("p", ptrs[-1], 0, 0)])
    with pytest.raises(ProfileError, match="deep"):
        btf_to_isf(BTF.from_bytes(b.to_bytes()), {}, BANNER)
    b = BtfBuilder()
    anon = b.add_struct("", 8)
    b.set_members(anon, [Member("me", b.add_ptr(anon), 0, 0)])
    b.add_struct("outer", 8, [Member("", anon, 0, 0)])
    with pytest.raises(ProfileError, match="refers to itself"):
        btf_to_isf(BTF.from_bytes(b.to_bytes()), {}, BANNER)


# ----- the schema


def _check_schema(isf: dict, versions: tuple[str, ...] = ("6.2.0", "6.3.0")) -> None:
    """By hand, the parts Volatility relies on; then with jsonschema against Volatility's own
    schema files (6.3.0 only adds requirements to 6.2.0; each takes ~15 s on a whole kernel)."""
    _check_by_hand(isf)
    _check_jsonschema(isf, versions)


def _check_by_hand(isf: dict) -> None:
    assert set(isf) == {"metadata", "base_types", "user_types", "enums", "symbols"}
    meta = isf["metadata"]
    assert meta["format"] == FORMAT_VERSION and meta["producer"]["name"] == "cloudvmi"
    for bt in isf["base_types"].values():
        assert bt["kind"] in ("void", "int", "float", "char", "bool")
        assert bt["endian"] in ("little", "big") and isinstance(bt["signed"], bool)
    for ut in isf["user_types"].values():
        assert ut["kind"] in ("struct", "union") and isinstance(ut["size"], int)
        for f in ut["fields"].values():
            assert set(f) <= {"type", "offset", "anonymous"} and isinstance(f["offset"], int)
            if f.get("anonymous"):
                assert f["type"]["name"] in isf["user_types"]
    for sym in isf["symbols"].values():
        assert isinstance(sym["address"], int)


def _check_jsonschema(isf: dict, versions: tuple[str, ...]) -> None:
    try:
        import jsonschema
    except ImportError:
        return
    for version in versions:
        schema = json.loads((SCHEMAS / f"schema-{version}.json").read_text())
        jsonschema.Draft4Validator.check_schema(schema)  # its "id" is draft 4's
        jsonschema.Draft4Validator(schema).validate(isf)


# ----- real kernels


@pytest.fixture(scope="module", params=["5.10", "6.1", "6.12"])
def real_btf(request, guest_images):
    from cloudvmi.memory.mapped import MappedFileMemory

    version = request.param
    mem = MappedFileMemory(guest_images(version) / f"{version}.raw")
    try:
        yield version, load_btf(mem), mem
    finally:
        mem.close()


# Structs CloudVMI's views read, with member paths through anonymous members, nested named
# members and arrays.
VIEW_STRUCTS = {
    "task_struct": ["pid", "tgid", "comm", "tasks", "mm", "real_parent", "thread.sp", "cred",
                    "files", "fs", "nsproxy", "signal", "thread_group", "comm[3]"],
    "mm_struct": ["pgd", "mmap_base", "arg_start", "env_end", "exe_file"],
    "module": ["list", "name", "state", "mkobj.kobj"],
    "list_head": ["next", "prev"],
    "file": ["f_path.dentry", "f_inode", "f_op", "f_pos", "f_flags", "f_mode"],
    "dentry": ["d_name.name", "d_parent", "d_inode", "d_sb", "d_iname"],
    "inode": ["i_mode", "i_ino", "i_sb", "i_size"],
    "sock": ["__sk_common.skc_family", "__sk_common.skc_state", "sk_type", "sk_protocol"],
    "net_device": ["name", "ifindex", "flags", "dev_list", "mtu"],
    "pid": ["numbers", "level", "numbers[0].nr"],
    "upid": ["nr", "ns"],
    "vm_area_struct": ["vm_start", "vm_end", "vm_flags", "vm_file", "vm_mm", "vm_pgoff"],
    "cred": ["uid", "gid", "euid", "cap_effective"],
    "mount": ["mnt", "mnt_parent", "mnt_mountpoint", "mnt_id", "mnt_ns"],
    "files_struct": ["fdt", "fdtab"],
    "nsproxy": ["mnt_ns", "net_ns", "uts_ns"],
    "net": ["dev_base_head", "loopback_dev"],
    "super_block": ["s_type", "s_dev", "s_root"],
    "pid_namespace": ["level", "idr"],
    "kobject": ["name", "parent"],
}


def _named_composites(btf: BTF) -> dict[str, int]:
    """First definition of each named struct/union, as BTF.struct() picks."""
    out: dict[str, int] = {}
    for tid in range(1, len(btf)):
        if btf.kind(tid) in (Kind.STRUCT, Kind.UNION):
            name = btf.name(tid)
            if name:
                out.setdefault(name, tid)
    return out


def test_real_round_trip(real_btf, capsys):
    version, btf, mem = real_btf
    t0 = time.perf_counter()
    isf = btf_to_isf(btf, {"init_task": 0xFFFFFFFF82000000}, BANNER)
    t_export = time.perf_counter() - t0
    text = json.dumps(isf)
    t0 = time.perf_counter()
    blob = isf_to_btf(json.loads(text))
    t_import = time.perf_counter() - t0
    again = BTF.from_bytes(blob)
    again.validate()

    compared = fields = bitfields = through_anon = 0
    for name, tid in _named_composites(btf).items():
        old = btf.layout(tid)
        new = again.struct(f"union {name}" if old.is_union else f"struct {name}")
        assert new.size == old.size, name
        assert set(new.fields) == set(old.fields), name
        direct = {m.name for m in old.members}
        for fname, f in old.fields.items():
            g = new.fields[fname]
            assert (g.bit_offset, g.bit_size) == (f.bit_offset, f.bit_size), (name, fname)
            if btf.kind(btf.resolve(f.type_id)) not in (Kind.FWD, Kind.FUNC_PROTO, Kind.VOID):
                assert again.sizeof(g.type_id) == btf.sizeof(f.type_id), (name, fname)
            bitfields += bool(f.bit_size)
            through_anon += fname not in direct
        fields += len(old.fields)
        compared += 1
    assert compared > 5000 and bitfields > 100 and through_anon > 1000

    for name, paths in VIEW_STRUCTS.items():
        old, new = btf.struct(name), again.struct(name)
        for path in paths:
            if path.split(".")[0].split("[")[0] not in old:
                continue  # not in this kernel version
            f, g = old.field(path), new.field(path)
            assert (g.bit_offset, g.bit_size) == (f.bit_offset, f.bit_size), (name, path)
    task = again.struct("task_struct")
    assert again.type_name(task.field("mm").type_id) == "struct mm_struct *"
    assert again.type_name(task.field("real_parent").type_id) == "struct task_struct *"
    assert again.type_name(task.field("comm").type_id) == "char [16]"
    assert again.type_name(task.field("tasks").type_id) == "struct list_head"
    f_op = again.struct("file").field("f_op").type_id
    assert again.type_name(f_op) == "struct file_operations *"
    read = again.struct("file_operations").field("read").type_id
    assert again.type_name(read) == "void () *"  # ISF keeps no signatures
    numbers = btf.struct("pid").field("numbers").type_id  # [1] before 5.19, then []
    assert again.type_name(again.struct("pid").field("numbers").type_id) == \
        btf.type_name(numbers) in ("struct upid [1]", "struct upid [0]")
    assert again.lookup("struct task_struct") == task.id
    # Bitfields from the ISF still sit where the kernel's own BTF puts them.
    sock = btf.struct("sock")
    for fname in ("sk_userlocks", "sk_kern_sock", "sk_no_check_tx"):
        if fname in sock and sock.field(fname).bit_size:
            assert again.struct("sock").field(fname).bit_offset == sock.field(fname).bit_offset

    second = btf_to_isf(again, {}, BANNER)
    for table in ("base_types", "user_types", "enums"):
        assert second[table] == isf[table], table
    # Every part by hand; a slice (the view structs, every 16th other type) with jsonschema.
    _check_by_hand(isf)
    names = sorted(isf["user_types"])
    keep = set(VIEW_STRUCTS) | set(names[::16])
    _check_jsonschema({**isf, "user_types": {n: isf["user_types"][n] for n in keep}},
                      ("6.3.0",))
    with capsys.disabled():
        print(f"\n{version}: {compared} structs/unions compared ({fields} flattened fields, "
              f"{bitfields} bitfields, {through_anon} through anonymous members); "
              f"BTF->ISF {t_export:.2f}s ({len(text) >> 20} MiB JSON, "
              f"{len(isf['user_types'])} user types), ISF->BTF {t_import:.2f}s "
              f"({len(blob)} bytes, {len(again) - 1} types vs {len(btf) - 1})")


def test_real_export_with_kallsyms(tmp_path, guest_images, capsys):
    """A full export of the 6.1 image (kallsyms decoded from its RAM, banner found there),
    written as .json.xz, read back, and the banner and symbols are what went in."""
    from cloudvmi.memory.mapped import MappedFileMemory
    from cloudvmi.os.linux.kallsyms import find_kallsyms

    mem = MappedFileMemory(guest_images("6.1") / "6.1.raw")
    try:
        btf = load_btf(mem)
        ks = find_kallsyms(mem)
        at = next(iter(mem.find(b"Linux version ")))
        raw = mem.read(at, 512)
    finally:
        mem.close()
    banner = raw[:raw.index(b"\0")]
    symbols = dict(zip(reversed(ks.names), reversed(ks.addresses), strict=True))
    isf = btf_to_isf(btf, symbols, banner)
    path = tmp_path / "6.1.json.xz"
    t0 = time.perf_counter()
    path.write_bytes(lzma.compress(json.dumps(isf).encode(), preset=1))
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = load_isf(path)
    t_load = time.perf_counter() - t0
    assert isf_banner(back) == banner and banner.startswith(b"Linux version 6.1")
    syms = isf_symbols(back)
    assert syms["init_task"] == symbols["init_task"] and len(syms) >= len(symbols)
    assert back["symbols"]["init_task"]["type"] == {"kind": "struct", "name": "task_struct"}
    typed = [n for n, s in back["symbols"].items() if "type" in s]
    assert "runqueues" in typed  # a per-cpu variable: BTF knows its type
    t0 = time.perf_counter()
    _check_schema(back, ("6.3.0",))
    t_schema = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n6.1 export: {len(syms)} symbols ({len(typed)} typed), "
              f"{path.stat().st_size >> 10} KiB .json.xz (xz {t_write:.1f}s, "
              f"load {t_load:.1f}s), schema check {t_schema:.0f}s")

"""Fuzzers of every parser of guest-controlled bytes (issue 14): each ends in a result or in
one of the project's own errors, bounded in time. A short run here, the same inputs every time
(derandomized) and about a minute in all; bench/bench_fuzz.py runs the same fuzzers longer.

Below them, each bug the fuzzers found, as the smallest input that showed it."""

import struct
import time
import tracemalloc

import fuzz_strategies as fs
import pytest
from fuzz_targets import TARGETS, fixed_sampling, fuzz, run_typesource
from test_btf import BtfEncoder
from test_kallsyms import NEWEST, TABLE_VIRT, BytesMemory, build_tables, image, make_symbols
from test_objects import BASE, FakeSpace

from cloudvmi import capability
from cloudvmi.errors import CloudVMIError, ProfileError, WalkLimit
from cloudvmi.memory.elfdump import open_elf_dump
from cloudvmi.os.linux import kernel as kernel_mod
from cloudvmi.os.linux.btf import BTF
from cloudvmi.os.linux.kallsyms import find_kallsyms
from cloudvmi.os.linux.objects import Object
from cloudvmi.os.linux.records import Record
from cloudvmi.remote import codec


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name):
    target = TARGETS[name]
    fuzz(target, target.ci_examples)
    assert sum(target.outcomes.values()) >= target.ci_examples


@pytest.mark.parametrize("layout", ["old", "new", "newest"])
def test_the_fake_kernel_is_located(layout):
    """The fuzzers start from inputs that go all the way through: by its note, and by a
    scan once the note is gone."""
    data = fs.kernel_seed(layout).data
    with fixed_sampling():
        assert kernel_mod.locate(BytesMemory(data), None).stats.how == "vmcoreinfo"
        no_note = data[:fs.NOTE_AT] + bytes(64) + data[fs.NOTE_AT + 64:]
        kernel = kernel_mod.locate(BytesMemory(no_note), None)
    assert kernel.stats.how == "scan" and kernel.text_virt == fs.KBASE


def test_the_other_seeds_are_accepted(tmp_path):
    BTF.from_bytes(fs.btf_seed()).validate()
    memory, info = open_elf_dump(_write(tmp_path / "core", fs.elf_core_seed()))
    assert len(memory.regions()) == 2 and len(info.cpus) == 1 and "OSRELEASE" in info.vmcoreinfo
    for kind in ("btf", "btf.xz", "btf.tar.xz", "json", "json.xz", "vmlinux"):
        assert run_typesource((kind, False, []), tmp_path) == "types", kind


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# ----- regressions: what the fuzzers found

def test_btf_without_types_looks_names_up():
    """btf.py _by_offset read the name of void from an empty type section (IndexError)."""
    btf = BTF.from_bytes(BtfEncoder().blob())
    assert btf.find_type("int") is None and btf.ids_named("int") == []


def test_btf_spells_function_types_of_function_types_in_bounded_time():
    """btf.py type_name recursed into every parameter of every parameter, 16 deep: a
    function type whose 8 parameters are itself took 8**16 steps."""
    e = BtfEncoder()
    proto = e.func_proto(1, [("", 1)] * 8)  # type 1, its own parameters
    btf = BTF.from_bytes(e.blob())
    start = time.perf_counter()
    assert btf.type_name(proto).endswith(")")
    assert time.perf_counter() - start < 1


def _fan_out(levels: int, fan: int, anonymous: bool) -> tuple[BTF, int]:
    """Structs s0..sN, each with FAN members of the one before (a DAG, no cycle)."""
    e = BtfEncoder()
    below = e.struct("leaf", 4, [("x", e.int_("int", 4), 0)])
    for level in range(levels):
        below = e.struct(f"s{level}", 4, [("" if anonymous else f"m{i}", below, 0)
                                          for i in range(fan)])
    return BTF.from_bytes(e.blob()), below


def test_btf_layout_of_shared_anonymous_members_is_bounded():
    """btf.py Struct._flatten bounded the named fields it kept, not the members it visited:
    anonymous members that share one struct at each level cost fan**levels."""
    btf, top = _fan_out(6, 16, anonymous=True)
    start = time.perf_counter()
    with pytest.raises(ProfileError, match="too many fields"):
        btf.layout(top)
    assert time.perf_counter() - start < 2


def test_object_value_of_nested_struct_members_is_bounded():
    """objects.py Object.value_ read nested struct members 8 deep with no bound on their
    number: 16 members of a struct of 16 members... cost 16**8 reads."""
    btf, top = _fan_out(8, 16, anonymous=False)
    start = time.perf_counter()
    with pytest.raises(WalkLimit, match="members"):
        Object(FakeSpace(1 << 12), btf, top, BASE).value_()
    assert time.perf_counter() - start < 2


def test_object_value_of_a_struct_holding_an_array_of_itself():
    """objects.py Object.value_ started each array element afresh at depth 0, so a struct
    holding an array of itself (legal BTF: sizes do not recurse) recursed until
    RecursionError."""
    e = BtfEncoder()
    e.struct("s", 8, [("a", 2, 0)])  # type 1: struct s { struct s a[2]; }
    e.array(1, 2, index=3)  # type 2
    e.int_("int", 4)  # type 3
    value = Object(FakeSpace(1 << 12), BTF.from_bytes(e.blob()), 1, BASE).value_()
    depth = 0
    while value:
        value, depth = value["a"][0], depth + 1
    assert depth == 9  # structs nest 8 deep at most, as they always did


def test_record_of_a_bitfield_wider_than_64_bits():
    """records.py Record let StopIteration out for a bitfield no integer holds."""
    e = BtfEncoder()
    e.struct("s", 16, [("wide", e.int_("int", 4), 0, 65)])
    with pytest.raises(ProfileError, match="65-bit bitfield"):
        Record(BTF.from_bytes(e.blob()), "s", {"wide": "wide"})


def test_codec_refuses_deep_nesting_and_arguments_that_are_not_an_object():
    """codec.py: json.loads' RecursionError and check_args' AttributeError on a list got
    past the agent, which turns only ValueError and TypeError into INVALID_ARGUMENT."""
    deep = "[" * 100_000
    with pytest.raises(ValueError, match="nest"):
        codec.blob_sizes(deep)
    with pytest.raises(ValueError, match="nest"):
        codec.decode(deep, b"")
    with pytest.raises(TypeError, match="JSON object"):
        codec.check_args(capability.get("guest", "sysctl_get"), codec.decode('""', b""))


def _core(notes: bytes, phoff: int | None = None) -> bytes:
    data = bytearray(fs.elf64(4, [(4, 0, 0, 0, notes), (1, 7, 0, 0, b"\xaa" * 4096)]))
    if phoff is not None:
        struct.pack_into("<Q", data, 32, phoff)
    return bytes(data)


def test_elf_dump_notes_of_any_shape(tmp_path):
    """elfdump.py: a note name without its NUL (pyelftools' construct error), a note that
    claims a 4 GiB name (pyelftools allocated it: MemoryError under a limit), a VMCOREINFO
    note whose type pyelftools parses into a structure (AttributeError on .decode) and a
    program header table at an absurd offset (OSError) escaped as non-project errors."""
    unterminated = struct.pack("<III", 4, 0, 0) + b"QEMU"
    memory, info = open_elf_dump(_write(tmp_path / "a", _core(unterminated)))
    assert not info.cpus and memory.read(0, 1) == b"\xaa"
    huge = struct.pack("<III", 0xFFFFFFFF, 0xFFFFFFFF, 0) + b"QEMU"
    tracemalloc.start()
    try:
        _, info = open_elf_dump(_write(tmp_path / "h", _core(huge)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.truncated and peak < 16 << 20
    typed = fs._elf_note(b"VMCOREINFO", 3, b"OSRELEASE=6.1\n".ljust(136, b"\0"))
    _, info = open_elf_dump(_write(tmp_path / "b", _core(typed)))
    assert info.vmcoreinfo.startswith("OSRELEASE=6.1\n")
    with pytest.raises(CloudVMIError, match="not a readable ELF"):
        open_elf_dump(_write(tmp_path / "c", _core(b"", phoff=1 << 63)))


def test_vmlinux_with_damaged_notes_or_symbols(tmp_path):
    """typesource.py _from_vmlinux let pyelftools' construct errors out (a note name without
    its NUL), _elf_banner an AttributeError (a .symtab that is not a symbol table), and
    _elf_build_id allocated the 4 GiB a note claimed."""
    data = fs.vmlinux_seed()
    name_end = data.index(b"GNU\0") + 3
    assert run_typesource(("vmlinux", False, [("byte", name_end, 0x41)]), tmp_path) == "types"
    shoff = struct.unpack_from("<Q", data, 40)[0]
    symtab_type = shoff + 64 * 4 + 4  # section 4 is .symtab: make it SHT_NOTE
    assert run_typesource(("vmlinux", False, [("word", symtab_type, 7, 4)]), tmp_path) == "types"
    tracemalloc.start()
    try:
        outcome = run_typesource(("vmlinux", False, [("word", name_end - 15, 0xFFFFFFFF, 4)]),
                                 tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome == "refused" and peak < 16 << 20


def test_place_relative_seqs_after_padding():
    """kallsyms.py _seqs took seqs_of_names from 4 bytes early, in the padding after an odd
    number of place-relative offsets: the shifted table passed the min/max and sampled order
    checks, and the name that sorts last could not be looked up."""
    syms = make_symbols(297, percpu=False)
    assert len(syms) % 2  # 4-byte offsets, then 4 bytes of padding before seqs
    blob, _ = build_tables(syms, NEWEST, 4, abs_percpu=False)
    with fixed_sampling():
        found = find_kallsyms(BytesMemory(image(blob)))
    assert found.tables.seqs is not None
    names = sorted({name for _, _, name in syms})
    assert all(found.get(name) is not None for name in (names[0], names[-1]))


def test_rebased_table_keeps_its_compressed_names():
    """kallsyms.py with_addresses dropped the compressed tables once the names had been
    expanded, and a 7.x kernel found by a scan then failed to become a profile."""
    blob, _ = build_tables(make_symbols(60, percpu=False), NEWEST, 0, abs_percpu=False)
    found = find_kallsyms(BytesMemory(image(blob)))
    assert found.names  # expanded
    assert found.rebased(TABLE_VIRT).tables is found.tables


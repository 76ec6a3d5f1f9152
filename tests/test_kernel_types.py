"""Locating any kernel: by its VMCOREINFO note or by scanning, and, for a kernel whose BTF is
missing or destroyed, with types from outside (raw BTF, BTFHub tree, .tar.xz, vmlinux) that
must fit this very kernel. Real guest images of the lab's kernels; a damaged copy stands for
a kernel built without BTF."""

import json
import lzma
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from matrix import KERNELS
from test_kallsyms import BytesMemory

from cloudvmi import config
from cloudvmi.errors import ProfileError
from cloudvmi.lab import kernels
from cloudvmi.memory.base import Region
from cloudvmi.memory.mapped import MappedFileMemory
from cloudvmi.os.linux import kernel as kernel_mod
from cloudvmi.os.linux.btf import BTF
from cloudvmi.os.linux.isf import btf_to_isf
from cloudvmi.os.linux.typesource import TypeSources, search_path
from cloudvmi.os.linux.vmcoreinfo import find_vmcoreinfo, parse
from cloudvmi.vm import attach

DAMAGED = "6.1"  # the kernel whose BTF the tests destroy
OTHER = "5.10"  # a kernel whose types do not fit it


def _lists(vm) -> tuple:
    """What the issue compares: processes, threads and modules."""
    linux = vm.linux
    return (sorted((p.pid, p.ppid, p.comm, tuple(p.cmdline)) for p in linux.processes().items),
            sorted((t.tid, t.tgid, t.comm) for t in linux.threads().items),
            sorted((m.name, m.size) for m in linux.modules().items))


def _btf_section(version: str) -> bytes:
    with kernels.vmlinux(kernels.fetch(version)).open("rb") as f:
        return ELFFile(f).get_section_by_name(".BTF").data()


@pytest.fixture(scope="module")
def damaged(guest_images, tmp_path_factory):
    """(copy of a 6.1 image with its BTF zeroed, the intact image's lists, its release,
    its banner)."""
    raw = guest_images(DAMAGED) / f"{DAMAGED}.raw"
    intact = attach(str(raw), profile_cache=None)
    try:
        k = intact.linux.kernel
        assert k.profile.types_source == "memory"
        want = _lists(intact)
        where, size = k.text_phys + k.profile.btf_offset, k.profile.btf_size
        release = k.profile.banner.split()[2].decode()
        banner = k.profile.banner
    finally:
        intact.close()
    copy = tmp_path_factory.mktemp("damaged") / "damaged.raw"
    shutil.copyfile(raw, copy)
    with copy.open("r+b") as f:
        f.seek(where)
        f.write(bytes(size))
    return copy, want, release, banner


def _open(path, symbols=None, cache=None):
    return attach(str(path), profile_cache=cache, symbols=symbols)


def test_without_types_the_error_says_what_to_give(damaged, monkeypatch):
    monkeypatch.delenv("CLOUDVMI_SYMBOLS", raising=False)
    monkeypatch.setenv("CLOUDVMI_CONFIG", "/nonexistent/config.toml")
    path, *_ = damaged
    vm = _open(path)
    with pytest.raises(ProfileError, match=r"BTF .*damaged.*--symbols"):
        vm.linux.kernel  # noqa: B018
    vm.close()


def test_raw_btf_in_a_btfhub_tree_gives_the_same_lists(damaged, tmp_path):
    path, want, release, _ = damaged
    tree = tmp_path / "btfhub" / "debian" / "12" / "x86_64"
    tree.mkdir(parents=True)
    (tree / f"{release}.btf").write_bytes(_btf_section(DAMAGED))
    vm = _open(path, symbols=str(tmp_path / "btfhub"), cache=tmp_path / "profiles")
    try:
        assert vm.linux.kernel.profile.types_source == str(tree / f"{release}.btf")
        assert _lists(vm) == want
    finally:
        vm.close()
    again = _open(path, symbols=None, cache=tmp_path / "profiles")  # warm: the cached types
    try:
        assert again.linux.kernel.stats.warm and _lists(again) == want
    finally:
        again.close()


def test_btfhub_archive_and_vmlinux_sources(damaged, tmp_path):
    path, want, release, _ = damaged
    blob = tmp_path / f"{release}.btf"
    blob.write_bytes(_btf_section(DAMAGED))
    archive = tmp_path / "hub" / f"{release}.btf.tar.xz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(blob, arcname=f"{release}.btf")
    for source in (archive, kernels.vmlinux(kernels.fetch(DAMAGED))):
        vm = _open(path, symbols=str(source))
        try:
            assert _lists(vm) == want, source
        finally:
            vm.close()


def test_types_of_another_kernel_are_refused(damaged, tmp_path):
    path, _, release, _ = damaged
    wrong = tmp_path / "tree" / f"{release}.btf"  # named right, holding 5.10's types
    wrong.parent.mkdir()
    wrong.write_bytes(_btf_section(OTHER))
    vm = _open(path, symbols=str(wrong.parent))
    with pytest.raises(ProfileError, match="do not fit this kernel"):
        vm.linux.kernel  # noqa: B018
    vm.close()
    other = kernels.vmlinux(kernels.fetch(OTHER))  # a vmlinux with another build id
    vm = _open(path, symbols=str(other))
    with pytest.raises(ProfileError, match="build id|do not fit"):
        vm.linux.kernel  # noqa: B018
    vm.close()
    junk = tmp_path / "junk.btf"
    junk.write_bytes(b"\x9f\xeb\x01\x00" + bytes(40))
    vm = _open(path, symbols=str(junk))
    with pytest.raises(ProfileError, match="junk.btf"):
        vm.linux.kernel  # noqa: B018
    vm.close()


def test_volatility_isf_gives_the_same_lists_and_a_foreign_one_is_refused(damaged, tmp_path):
    path, want, release, banner = damaged
    isf = btf_to_isf(BTF.from_bytes(_btf_section(DAMAGED)), {}, banner)
    good = tmp_path / f"debian-{release}.json.xz"
    good.write_bytes(lzma.compress(json.dumps(isf).encode()))
    vm = _open(path, symbols=str(tmp_path))  # a directory: the file named for the release
    try:
        assert vm.linux.kernel.profile.types_source == str(good)
        assert _lists(vm) == want
    finally:
        vm.close()
    foreign = tmp_path / "foreign" / f"{release}.json"
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({**isf, "symbols": btf_to_isf(
        BTF.from_bytes(_btf_section(OTHER)), {}, b"Linux version 5.10.0-32-amd64 (x) #1\n",
    )["symbols"]}))
    vm = _open(path, symbols=str(foreign))
    with pytest.raises(ProfileError, match="its banner is .*5.10"):
        vm.linux.kernel  # noqa: B018
    vm.close()


# --- VMCOREINFO ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", KERNELS)
def test_vmcoreinfo_locates_every_kernel(version, guest_images):
    raw = guest_images(version) / f"{version}.raw"
    mem = MappedFileMemory(raw)
    try:
        notes = list(find_vmcoreinfo(mem))
        assert notes and notes[0].release
        by_note = kernel_mod.locate(mem)
        assert by_note.stats.how == "vmcoreinfo"
        assert by_note.banner.split()[2] == notes[0].release
        assert by_note.text_virt - by_note.arch.default_text == notes[0].kaslr_offset
    finally:
        mem.close()


def test_a_destroyed_or_planted_note_falls_back_to_the_scan(guest_images, tmp_path):
    """The note is a claim: a guest can erase it or plant a false one; either way the kernel
    is found, at the same place, by the scan."""
    version = KERNELS[-1]
    raw = guest_images(version) / f"{version}.raw"
    mem = MappedFileMemory(raw)
    try:
        truth = kernel_mod.locate(mem)
        note = next(find_vmcoreinfo(mem))
    finally:
        mem.close()
    copy = tmp_path / "guest.raw"
    shutil.copyfile(raw, copy)
    text = bytearray(copy.read_bytes()[note.paddr:note.paddr + 4096])
    forged = bytes(text).replace(b"SYMBOL(kallsyms_token_table)=ffffffff",
                                 b"SYMBOL(kallsyms_token_table)=ffffff00")
    with copy.open("r+b") as f:
        f.seek(note.paddr)
        f.write(forged)
    mem = MappedFileMemory(copy, [Region(0, copy.stat().st_size, 0)])
    try:
        found = kernel_mod.locate(mem)
        assert found.stats.how == "scan"
        assert (found.text_virt, found.text_phys) == (truth.text_virt, truth.text_phys)
    finally:
        mem.close()


def test_note_parsing_is_strict():
    good = b"OSRELEASE=6.1.0\nPAGESIZE=4096\nSYMBOL(_stext)=ffffffff81000000\nNUMBER(phys_base)=-16777216\nKERNELOFFSET=1a000000\n"  # noqa: E501
    info = parse(good)
    assert info.release == "6.1.0" and info.symbol("_stext") == 0xFFFFFFFF81000000
    assert info.number("phys_base") == -16777216 and info.kaslr_offset == 0x1A000000
    assert info.symbol("missing") is None
    for bad in (b"PAGESIZE=4096\n", b"OSRELEASE=6.1\n\x1b[31m=1\n", b"OSRELEASE=6.1\nno equals\n",
                b"", b"OSRELEASE=" + b"x" * 600 + b"\n"):
        assert parse(bad) is None


def test_notes_in_hostile_memory_are_bounded():
    """A RAM full of note look-alikes is looked at a bounded number of times."""
    header = (11).to_bytes(4, "little") + (40).to_bytes(4, "little") + bytes(4)
    chunk = header + b"VMCOREINFO\0\0" + b"OSRELEASE=x\nSYMBOL(_stext)=zz\n" + bytes(9)
    ram = chunk * 20000
    mem = BytesMemory(ram)
    notes = list(find_vmcoreinfo(mem))
    assert len(notes) <= 64
    with pytest.raises(ProfileError, match="cannot locate the kernel"):
        kernel_mod.locate(mem)


def test_xz_raw_btf_is_bounded(tmp_path):
    bomb = tmp_path / "bomb.btf.xz"
    bomb.write_bytes(lzma.compress(b"\x9f\xeb" + bytes(80 << 20)))
    refused: list[str] = []
    found = list(TypeSources([bomb]).candidates(b"Linux version 6.1 (x) #1", None, refused))
    assert not found and "past any real BTF" in refused[0]


# --- sources, without a guest ------------------------------------------------------------

SOURCE_C = b"""
struct list_head { struct list_head *next, *prev; };
struct task_struct { int pid; char comm[16]; struct list_head tasks; unsigned flags:3, x:5; };
struct task_struct init_task;
const char linux_banner[] = "Linux version 9.9.9-test (b@h) #1 SMP\\n";
"""


def test_dwarf_is_converted_by_pahole_and_banners_must_match(tmp_path):
    """A vmlinux with DWARF and no .BTF (here a small object file with the same shape)."""
    source = tmp_path / "k.c"
    source.write_bytes(SOURCE_C)
    elf = tmp_path / "vmlinux-9.9.9-test"
    subprocess.run(["gcc", "-g", "-c", "-o", str(elf), str(source)], check=True)
    refused: list[str] = []
    banner = b"Linux version 9.9.9-test (b@h) #1 SMP\n"
    [(blob, where)] = list(TypeSources([tmp_path]).candidates(banner, None, refused))
    task = BTF.from_bytes(blob).struct("task_struct")
    assert where == str(elf) and (task.offset("comm"), task.offset("tasks")) == (4, 24)
    other = list(TypeSources([elf]).candidates(b"Linux version 9.9.8 (b@h) #2\n", None,
                                               refused))
    assert not other and "its banner is" in refused[-1]


def test_search_path_order(tmp_path, monkeypatch):
    settings = tmp_path / "config.toml"
    settings.write_text('symbols = "/srv/btfhub"\n')
    monkeypatch.setenv("CLOUDVMI_CONFIG", str(settings))
    monkeypatch.setenv("CLOUDVMI_SYMBOLS", "/a:/b")
    config._load.cache_clear()
    try:
        assert search_path("/given") == [Path("/given"), Path("/a"), Path("/b"),
                                         Path("/srv/btfhub")]
    finally:
        config._load.cache_clear()


def test_profile_versions_and_the_cached_type_index(guest_images, tmp_path):
    """A cold attach caches format 3 (profiles/v3/, with the BTF's type index); a warm one
    uses the index and gives the same lists. A version-2 profile (the format before, beside
    v3/) is still read, and written again as version 3; a version-1 file is never decoded."""
    import json

    from cloudvmi.os.linux.btf import BTF
    from cloudvmi.os.linux.kernel import _LOADED

    dump = guest_images("6.1") / "6.1.elf"
    cache = tmp_path / "profiles"

    def lists() -> tuple[list, str]:
        _LOADED.clear()
        with attach(str(dump), profile_cache=cache) as vm:
            return ([(p.pid, p.ppid, p.comm, p.cmdline, p.exe)
                     for p in vm.linux.processes().items], vm.linux.kernel.stats.how)

    cold, how = lists()
    assert how == "vmcoreinfo"
    v3 = cache / "v3"
    key = next(v3.glob("*.json")).stem
    assert {p.suffix for p in v3.glob(f"{key}.*")} == {".json", ".sym", ".btf", ".idx"}
    blob, index = (v3 / f"{key}.btf").read_bytes(), (v3 / f"{key}.idx").read_bytes()
    plain, indexed = BTF.from_bytes(blob), BTF.from_bytes(blob, index)
    for name in ("task_struct", "list_head", "pid", "int", "mm_struct", "no_such_type"):
        assert indexed.ids_named(name) == plain.ids_named(name), name
    assert BTF.from_bytes(blob, index[:-4])._name_order is None  # cut short: not used
    assert lists() == (cold, "cached profile")

    for suffix in (".btf", ".sym"):  # as the format before kept it
        (v3 / f"{key}{suffix}").rename(cache / f"{key}{suffix}")
    meta = json.loads((v3 / f"{key}.json").read_text())
    (cache / f"{key}.json").write_text(json.dumps({**meta, "version": 2}))
    (cache / "old.json").write_text(json.dumps({"banner": "x" * (1 << 20)}))  # version 1
    for stale in v3.iterdir():
        stale.unlink()
    assert lists() == (cold, "cached profile")
    assert (v3 / f"{key}.idx").exists() and json.loads(
        (v3 / f"{key}.json").read_text())["version"] == 3

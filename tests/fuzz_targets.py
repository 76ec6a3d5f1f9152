"""What each fuzzer does with an input, and which errors it may end in.

Every parser of guest-controlled bytes must end in a result or in one of the project's own
errors (cloudvmi.errors), never hang and never grow without bound. A target runs one input
through a parser and then through everything a caller does with the result (lookups, layouts,
lazily expanded names), since hostile data often gets past the parser and fails later.

Shared by tests/test_fuzz.py (a short, reproducible run) and bench/bench_fuzz.py (a long one).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import random
import shutil
import signal
import tarfile
import tempfile
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fuzz_strategies as fs
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from test_btf import kernel_like
from test_kallsyms import BytesMemory
from test_objects import BASE, FakeSpace, ring, task_addr

from cloudvmi import capability
from cloudvmi.errors import CloudVMIError, ProfileError
from cloudvmi.memory.elfdump import is_elf_dump, open_elf_dump
from cloudvmi.os.linux import kallsyms_names, typesource
from cloudvmi.os.linux import kernel as kernel_mod
from cloudvmi.os.linux.btf import BTF, COMPOSITE_KINDS, Kind
from cloudvmi.os.linux.isf import isf_banner, isf_symbols, isf_to_btf, load_isf
from cloudvmi.os.linux.kallsyms import Kallsyms, find_kallsyms, kallsyms_at
from cloudvmi.os.linux.objects import Object, list_for_each, list_for_each_entry, read_string
from cloudvmi.os.linux.records import Record
from cloudvmi.os.linux.views.common import ListWalkError, list_nodes
from cloudvmi.os.linux.vmcoreinfo import find_vmcoreinfo, parse
from cloudvmi.remote import codec
from cloudvmi.write.channel import CallResult, GuestCall

PROJECT = (CloudVMIError,)
SECONDS = 10.0  # per input: far above any target's worst seen (~0.3 s), far below a hang


class Hang(Exception):
    """An input ran past the watchdog: a parser loops or does unbounded work."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise Hang in the code under test after SECONDS (SIGALRM: the main thread only). The
    caller re-raises it afterwards too, in case code under test caught and converted it."""
    fired = []

    def fire(signum, frame):
        fired.append(True)
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if fired:
            raise Hang(f"no result after {seconds} s (and the Hang was swallowed)")


def attempt(allowed: tuple[type[BaseException], ...], fn: Callable, *args: Any) -> Any:
    """FN(*ARGS), or None when it fails with an allowed error; anything else propagates."""
    try:
        return fn(*args)
    except allowed:
        return None


# ----- BTF

SPECS = ("struct task_struct", "struct task_struct *", "union x", "enum task_state", "int",
         "unsigned long", "long unsigned int", "char", "void", "void *", "const char *",
         "struct list_head **", "task_t", "pid_t", "struct nonexistent", "_Bool", "")


def _paths(btf: BTF, layout) -> list[str]:
    """Member paths of a layout, a level into nested structs and arrays."""
    out = []
    for name, f in list(layout.fields.items())[:32]:
        out.append(name)
        rid = attempt(PROJECT, btf.resolve, f.type_id)
        if rid is None:
            continue
        kind = btf.kind(rid)
        if kind in COMPOSITE_KINDS:
            inner = attempt(PROJECT, btf.layout, rid)
            if inner is not None:
                out += [f"{name}.{sub}" for sub in list(inner.fields)[:4]]
        elif kind == Kind.ARRAY:
            out += [f"{name}[0]", f"{name}[1]", f"{name}[4294967295]", f"{name}[1].x"]
        elif kind == Kind.PTR:
            out.append(f"{name}.next")
    return out + ["", "a.", "x[", "nonexistent"]


def exercise_btf(blob: bytes) -> str:
    """Parse, then every accessor on every type, every layout and member path, records over
    zeroed memory, values of objects, and validate() last."""
    btf = BTF.from_bytes(blob)
    n = len(btf)
    ids = list(range(min(n, 48))) + [n, n + 1, -1, 1 << 40]
    for tid in ids:
        for op in (btf.kind, btf.type, btf.name, btf.resolve, btf.sizeof, btf.pointer_to,
                   btf.layout):
            attempt(PROJECT, op, tid)
        btf.type_name(tid)  # never raises: it spells bad types as <bad type N>
    space = FakeSpace(1 << 16)
    for tid in range(1, min(n, 48)):
        if btf.kind(tid) not in COMPOSITE_KINDS:
            continue
        layout = attempt(PROJECT, btf.layout, tid)
        if layout is None:
            continue
        repr(layout)
        paths = _paths(btf, layout)
        for path in paths:
            attempt(PROJECT, layout.field, path)
            attempt(PROJECT, layout.offset, path)
        name = btf.name(tid)
        if name:
            record = attempt(PROJECT, Record, btf, name, {p: p for p in paths[:16]},
                             tuple(paths))
            if record is not None:
                attempt(PROJECT, record.read, space, BASE)
        obj = Object(space, btf, tid, BASE)
        attempt(PROJECT + (TypeError,), obj.value_)  # TypeError: a float of no C size
    for spec in SPECS:
        attempt(PROJECT, btf.lookup, spec)
        attempt(PROJECT, btf.struct, spec)
        btf.find_type(spec.split(" ")[-1])
        btf.ids_named(spec)
    btf.validate()
    return "valid"


def run_btf_mutated(case: tuple[str, list]) -> str:
    return exercise_btf(fs.apply(fs.btf_seed(), case[1]))


# ----- kallsyms

@contextlib.contextmanager
def fixed_sampling() -> Iterator[None]:
    """NameTables.prove samples blocks at random: seed it, so a failure replays."""
    real = kallsyms_names.random
    kallsyms_names.random = types.SimpleNamespace(Random=lambda *_: random.Random(0))
    try:
        yield
    finally:
        kallsyms_names.random = real


NAMES = ("_end", "static_helper", "alias_0", "percpu_var3", "_text", "linux_banner",
         "nonexistent", "", "\0", "zzzz")


def touch_kallsyms(k: Kallsyms) -> None:
    """What callers do with a found table: lookups by name (binary search through
    seqs_of_names, names expanded one by one), by address, then every name at once."""
    for name in NAMES + tuple(k.name_at(i) for i in (0, len(k) // 2, len(k) - 1)):
        attempt(PROJECT + (KeyError,), k.lookup, name)
    step = max(1, len(k) // 16)
    for address in k.addresses[::step] + [0, (1 << 64) - 1, k.addresses[-1] + 1]:
        attempt(PROJECT, k.symbolize, address)
        attempt(PROJECT, k.aliases, address)
        k.next_address(address)
    names, kinds = k.names, k.types
    assert len(names) == len(kinds) == len(k)
    if k.relative_to is not None:
        k = k.rebased(fs.TABLE_VIRT)
    assert Kallsyms.from_cache(json.loads(json.dumps(k.to_cache()))) == k


def run_kallsyms(case: tuple[str, list, str]) -> str:
    name, ops, how = case
    seed = fs.kallsyms_seed(name)
    mem = BytesMemory(fs.apply_in_place(seed.data, ops))
    with fixed_sampling():
        if how == "scan":
            k = find_kallsyms(mem)
        elif how == "hint":
            k = find_kallsyms(mem, hint=seed.token_table + 0x200000)
        elif how == "at":
            k = kallsyms_at(mem, seed.token_table)
        else:
            k = kallsyms_at(mem, seed.token_table, seed.offsets)
        touch_kallsyms(k)
    return "found"


# ----- VMCOREINFO and locate

def touch_note(info) -> None:
    for key in list(info.fields)[:16]:
        info.get(key)
        if key.startswith("SYMBOL(") and key.endswith(")"):
            info.symbol(key[7:-1])
        if key.startswith("NUMBER(") and key.endswith(")"):
            info.number(key[7:-1])
    _ = info.kaslr_offset, info.summary()
    assert info.release is not None  # parse() insists on OSRELEASE first


def run_vmcoreinfo(case: tuple[bytes, list]) -> str:
    """A note's text parsed alone, then notes found in a small RAM of look-alikes."""
    text, ops = case
    info = parse(text)
    if info is not None:
        touch_note(info)
    ram = bytearray(0x4000)
    for at in range(0, len(ram), 0x800):
        raw = fs.note(text)[:0x800]
        ram[at:at + len(raw)] = raw
    mem = BytesMemory(fs.apply_in_place(bytes(ram), ops))
    found = False
    for info in find_vmcoreinfo(mem):
        touch_note(info)
        found = True
    return "notes" if found else "no note"


def run_locate(case: tuple[str, list, bytes | None]) -> str:
    """A 4 MiB RAM with a kernel locate() accepts, damaged: it is found, or ProfileError."""
    layout, ops, text = case
    seed = fs.kernel_seed(layout)
    data = bytearray(seed.data)
    if text is not None:
        raw = fs.note(text)[:0x1000]
        data[fs.NOTE_AT:fs.NOTE_AT + len(raw)] = raw
    mem = BytesMemory(fs.apply_in_place(bytes(data), ops))
    with fixed_sampling():
        kernel = kernel_mod.locate(mem, None)
        kernel.symbols.lookup("_text")
    return kernel.stats.how


# ----- ELF dumps

def run_elf_dump(ops: list, workdir: Path) -> str:
    path = workdir / "dump.elf"
    path.write_bytes(fs.apply(fs.elf_core_seed(), ops))
    is_elf_dump(path)
    memory, info = open_elf_dump(path)
    try:
        for r in memory.regions():
            memory.read(r.start, 1)
            memory.read(r.end - 1, 1)
            attempt(PROJECT, memory.read, r.end - 1, 2)
        list(memory.find(b"\xaa\xaa"))
        assert all({"rip", "cr3", "gs_base"} <= set(cpu) for cpu in info.cpus)
        if info.vmcoreinfo is not None:
            parse(info.vmcoreinfo.encode("utf-8", "surrogateescape"))
    finally:
        memory.close()
    return "opened" + (" truncated" if info.truncated else "")


# ----- objects, records and list walks over hostile memory

POINTERS = (0, 8, 1, BASE, BASE - 8, BASE + 8, (1 << 64) - 1, 1 << 63)


@st.composite
def hostile_tasks(draw) -> list[tuple[int, int]]:
    """(offset, u64) writes over a ring of 8 tasks: links to other tasks' links (cycles that
    skip the head), to themselves, out of the space, NULL."""
    links = [task_addr(i) + 8 for i in range(12)]
    out = []
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.sampled_from([task_addr(i) - BASE + off for i in range(8)
                                   for off in (0, 8, 16, 24, 48, 56)]))
        value = draw(st.one_of(st.sampled_from(links + list(POINTERS)),
                               fs.words(64)))
        out.append((at, value))
    return out


def run_objects(writes: list[tuple[int, int]]) -> str:
    e, _ = kernel_like()
    btf = BTF.from_bytes(e.blob())
    space = FakeSpace(1 << 16)
    ring(space, 8)
    for at, value in writes:
        space.write(BASE + at, value.to_bytes(8, "little"))
    head = task_addr(0) + 8
    allowed = PROJECT + (ListWalkError,)
    walked = attempt(allowed, lambda: list(list_for_each(head, space=space, btf=btf, limit=32)))
    tasks = attempt(allowed, lambda: list(list_for_each_entry(
        "struct task_struct", head, "tasks", space=space, btf=btf, limit=32))) or []
    record = Record(btf, "task_struct", {"pid": "pid", "comm": "comm", "flags": "flags",
                                         "nice": "nice", "next": "tasks.next", "tgid": "tgid"})
    for task in tasks[:12]:
        attempt(allowed, task.value_)
        attempt(allowed, lambda t=task: t.comm.string_())
        attempt(allowed, lambda t=task: int(t.mm.pgd))
        attempt(allowed, lambda t=task: t.real_parent.comm.string_(64))
        attempt(allowed, lambda t=task: int(t.nice) + int(t.on_rq))
        attempt(allowed, record.read, space, task.address_)
        attempt(allowed, lambda t=task: read_string(space, int(t.real_parent), 64))

    def read_u64(address: int) -> int:
        return int.from_bytes(space.read(address, 8), "little")

    nodes = attempt(allowed, lambda: list(list_nodes(read_u64, head, 32)))
    return "ring" if walked is not None and nodes is not None else "broken ring"


# ----- the agent codec

HINTS: dict[str, Any] = {"exec calls": list[GuestCall], "exec results": list[CallResult]}


@st.composite
def codec_cases(draw) -> tuple[str, str, bytes]:
    """(capability key or extra hint, JSON text, blob bytes): text shaped like the call's
    arguments or result, random JSON, truncated or deeply nested text."""
    caps = {c.key: c for c in capability.all_capabilities()}
    key = draw(st.sampled_from(sorted(caps) + sorted(HINTS)))
    hint = HINTS.get(key) or caps[key].result
    how = draw(st.integers(0, 9))
    if how == 0:
        depth = draw(st.sampled_from((10, 100, 999, 5000, 100_000)))
        text = draw(st.sampled_from(("[", '{"a":', '{"__blob__":['))) * depth
    elif how == 1:
        text = draw(st.text(max_size=40))
    else:
        if key in caps and how < 5:
            value = {p.name: draw(fs.shaped(p.type)) for p in caps[key].params
                     if draw(st.integers(0, 5))}
        else:
            value = draw(fs.shaped(hint))
        text = json.dumps(value)
        if how == 9:
            text = text[:draw(st.integers(0, len(text)))]
    return key, text, draw(st.binary(max_size=24))


def run_codec(case: tuple[str, str, bytes]) -> str:
    """What the agent does with a call (blob_sizes, decode, check_args) and the client with
    a reply (decode as the declared result): only ValueError or TypeError, the errors the
    agent turns into INVALID_ARGUMENT."""
    key, text, blobs = case
    allowed = PROJECT + (ValueError, TypeError)
    attempt(allowed, codec.blob_sizes, text)
    cap = capability.by_key(key)
    hint = HINTS.get(key) or cap.result
    attempt(allowed, codec.decode, text, blobs, hint)
    if cap is None:
        return "decoded"
    args = attempt(allowed, codec.decode, text, blobs)
    if args is not None:
        attempt(allowed, codec.check_args, cap, args)
    return "checked"


# ----- ISF and kernel types from files

def run_isf_convert(ops: list) -> str:
    isf = fs.apply_tree(fs.isf_seed(), ops)
    attempt(PROJECT, isf_symbols, isf)
    attempt(PROJECT, isf_banner, isf)
    blob = isf_to_btf(isf)
    BTF.from_bytes(blob).validate()  # what converts is valid BTF
    return "converted"


COMPRESSIONS = {"json": lambda b: b, "xz": lzma.compress, "bz2": bz2.compress,
                "gz": lambda b: gzip.compress(b, mtime=0)}  # no time stamp: inputs replay


@st.composite
def isf_files(draw) -> tuple[str, bool, list, list]:
    """(compression, edits after compressing?, tree edits, byte edits)."""
    fmt = draw(st.sampled_from(sorted(COMPRESSIONS)))
    after = draw(st.booleans())
    tree = draw(fs.tree_edits(fs.isf_seed(), 2)) if draw(st.booleans()) else []
    size = len(_isf_bytes(fmt, tree)) if after else len(_isf_text(tree))
    return fmt, after, tree, draw(fs.edits(size, max_edits=3) | st.just([]))


def _isf_text(tree: list) -> bytes:
    return json.dumps(fs.apply_tree(fs.isf_seed(), tree)).encode()


def _isf_bytes(fmt: str, tree: list) -> bytes:
    return COMPRESSIONS[fmt](_isf_text(tree))


def run_isf_load(case: tuple[str, bool, list, list], workdir: Path) -> str:
    fmt, after, tree, ops = case
    raw = fs.apply(_isf_bytes(fmt, tree), ops) if after else \
        COMPRESSIONS[fmt](fs.apply(_isf_text(tree), ops))
    path = workdir / "types.json"
    path.write_bytes(raw)
    attempt(PROJECT, load_isf, path, 4096)  # the size bound itself
    isf = load_isf(path)
    BTF.from_bytes(isf_to_btf(isf)).validate()
    return "loaded"


SOURCE_KINDS = ("btf", "btf.xz", "btf.tar.xz", "json", "json.xz", "vmlinux", "vmlinux", "vmlinux")


def _plain_source(kind: str) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """The content of one kind of types file, and the ranges worth editing in it."""
    if kind in ("json", "json.xz"):
        return json.dumps(fs.isf_seed()).encode(), ()
    if kind == "vmlinux":
        data = fs.vmlinux_seed()
        return data, fs.elf_sections_focus(data)
    return fs.btf_seed(), fs.btf_focus(fs.btf_seed())


def _source_file(kind: str, ops: list, after: bool) -> tuple[str, bytes]:
    """(file name, content) of one kind of types file, EDITS applied to its content or to
    its (compressed) bytes."""
    release = fs.RELEASE
    plain = _plain_source(kind)[0]
    if not after:
        plain = fs.apply(plain, ops)
    if kind in ("btf.xz", "json.xz"):
        raw = lzma.compress(plain)
    elif kind == "btf.tar.xz":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            info = tarfile.TarInfo(f"{release}.btf")
            info.size = len(plain)
            tar.addfile(info, io.BytesIO(plain))
        raw = buf.getvalue()
    else:
        raw = plain
    name = {"json": f"isf-{release}.json", "json.xz": f"isf-{release}.json.xz",
            "vmlinux": f"vmlinux-{release}"}.get(kind, f"{release}.{kind}")
    return name, fs.apply(raw, ops) if after else raw


@st.composite
def source_files(draw) -> tuple[str, bool, list]:
    kind = draw(st.sampled_from(SOURCE_KINDS))
    after = draw(st.booleans()) if kind not in ("btf", "json", "vmlinux") else False
    plain, focus = _plain_source(kind)
    if after:
        plain, focus = _source_file(kind, [], False)[1], ()
    return kind, after, draw(fs.edits(len(plain), focus, max_edits=4))


def _no_pahole(path: Path) -> bytes:
    raise ProfileError("pahole is not run by the fuzzer")


def run_typesource(case: tuple[str, bool, list], workdir: Path) -> str:
    """A types file of each kind, damaged, in a search directory and given directly."""
    kind, after, ops = case
    folder = workdir / "types"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    name, raw = _source_file(kind, ops, after)
    (folder / name).write_bytes(raw)
    found = 0
    real = typesource._pahole
    typesource._pahole = _no_pahole
    try:
        for paths in ([folder], [folder / name]):
            refused: list[str] = []
            for blob, _ in typesource.TypeSources(paths).candidates(fs.BANNER, fs.BUILD_ID,
                                                                   refused):
                found += 1
                attempt(PROJECT, lambda b=blob: BTF.from_bytes(b).validate())
    finally:
        typesource._pahole = real
    return "types" if found else "refused"


# ----- the registry

@dataclass
class Target:
    name: str
    strategy: Callable[[], st.SearchStrategy]
    run: Callable[..., str]
    allowed: tuple[type[BaseException], ...] = PROJECT
    ci_examples: int = 100
    needs_dir: bool = False
    outcomes: Counter = field(default_factory=Counter)


TARGETS = {t.name: t for t in [
    Target("btf-mutated", fs.mutated_btf, run_btf_mutated, ci_examples=800),
    Target("btf-structured", fs.structured_btf, exercise_btf, ci_examples=800),
    Target("kallsyms", fs.mutated_kallsyms, run_kallsyms, PROJECT + (KeyError,),
           ci_examples=400),
    Target("vmcoreinfo", lambda: st.tuples(
        st.one_of(fs.note_text(), st.binary(max_size=64)),
        fs.edits(0x4000, resize=False, snippets=fs.kernel_snippets())), run_vmcoreinfo,
        ci_examples=500),
    Target("locate", fs.mutated_kernel, run_locate, (ProfileError,), ci_examples=200),
    Target("elf-dump", fs.mutated_elf_core, run_elf_dump, ci_examples=600, needs_dir=True),
    Target("objects", hostile_tasks, run_objects, ci_examples=600),
    Target("codec", codec_cases, run_codec, ci_examples=400),
    Target("isf-convert", lambda: fs.tree_edits(fs.isf_seed()), run_isf_convert,
           ci_examples=300),
    Target("isf-load", isf_files, run_isf_load, ci_examples=300, needs_dir=True),
    Target("typesource", source_files, run_typesource, ci_examples=400, needs_dir=True),
]}


def check(target: Target, value: Any, workdir: Path | None, seconds: float = SECONDS) -> str:
    """Run one input; an allowed error is an outcome like any result."""
    args = (value, workdir) if target.needs_dir else (value,)
    with watchdog(seconds):
        try:
            outcome = target.run(*args)
        except target.allowed as exc:
            outcome = type(exc).__name__
    target.outcomes[outcome] += 1
    return outcome


def fuzz(target: Target, examples: int, derandomize: bool = True, seed: int | None = None,
         deadline_ms: float | None = 5000, seconds: float = SECONDS) -> float:
    """Run TARGET on EXAMPLES inputs (hypothesis shrinks a failure and raises it); the
    wall-clock seconds taken."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target.name}-") as tmp:
        workdir = Path(tmp)

        @settings(max_examples=examples, derandomize=derandomize, database=None,
                  deadline=deadline_ms, print_blob=False,
                  suppress_health_check=list(HealthCheck))
        @given(target.strategy())
        def one(value: Any) -> None:
            check(target, value, workdir, seconds)

        if seed is not None:
            one = hypothesis_seed(seed)(one)
        one()
    return time.perf_counter() - started



"""The integrity view: a clean guest of every kernel gives no findings (and every check shows
what it examined); tampering done on a copy of a guest's RAM gives exactly the finding it
should, with its evidence; hostile garbage ends bounded, with the result marked partial."""

import contextlib
import random
import shutil
import struct

import pytest
from matrix import KERNELS
from test_hostile import _edit, _timed

from cloudvmi.errors import CloudVMIError
from cloudvmi.os.linux.kallsyms import Kallsyms
from cloudvmi.os.linux.views.integrity import check_integrity
from cloudvmi.os.linux.views.modules import ModuleReader, modules
from cloudvmi.vm import attach

TAMPER_KERNELS = KERNELS
VIEW_READS = 200_000  # guest-memory reads one integrity view may make on hostile memory


# -- a clean guest --------------------------------------------------------------------------

def _runs(vm) -> dict[str, object]:
    result = vm.linux.integrity_checks()
    assert result.partial is None
    return {r.subject: r for r in result.items}


def _truth_modules(truth) -> list[str]:
    return [line.split()[0] for line in (truth / "modules").read_text().splitlines() if line]


@pytest.fixture(scope="module", params=KERNELS)
def seen(request, viewed):
    """x86-64 guests (arm64's system-call tables, vectors and module memory are checked in
    test_arm64_live)."""
    return viewed(request.param)


def test_a_clean_guest_has_no_findings(seen):
    vm, _ = seen
    result = vm.linux.integrity()
    assert result.partial is None
    assert result.items == [], result.items


def test_every_check_really_ran(seen):
    vm, truth = seen
    runs = _runs(vm)
    symbols = vm.linux.kernel.symbols
    last = max(vm.linux.kernel.arch.syscall.numbers.values())
    # The x86-64 table: every number up to 5.10's last (440, process_madvise), and nothing
    # past the table's end (newer kernels have numbers this ABI table does not name yet:
    # those entries are checked for their kind only).
    table = symbols.lookup("sys_call_table")
    assert 440 < runs["sys_call_table"].checked <= (symbols.next_address(table) - table) // 8
    if symbols.get("x64_sys_call"):  # the switch: every number decoded, none left to chance
        assert runs["x64_sys_call"].checked > last
        assert "not used for dispatch" in runs["sys_call_table"].covers
        for dispatcher in ("ia32_sys_call", "x32_sys_call"):
            if symbols.get(dispatcher):
                assert runs[dispatcher].checked > 400
    else:
        assert "dispatched through" in runs["sys_call_table"].covers
    assert runs["idt_table"].checked == 256
    names = _truth_modules(truth)
    assert len(names) >= 6
    for source in ("modules list", "module_kset", "module memory", "all three compared"):
        assert runs[source].checked == len(names), source
    assert "ftrace_ops_list" in runs and "kprobe_table" in runs
    assert all(r.findings == 0 for r in runs.values())


def test_every_hook_of_a_clean_guest_is_the_kernels_own(seen):
    vm, _ = seen
    hooks = vm.linux.kernel_hooks()
    assert hooks.partial is None
    assert all(h.owner == "kernel" for h in hooks.items), hooks.items


def test_kallsyms_aliases_and_extents():
    """The reverse lookups the checks use: every name at an address, and where the next
    symbol starts (a table's or function's end at the latest)."""
    syms = Kallsyms(names=["a", "b_alias", "b", "c"], addresses=[0x10, 0x20, 0x20, 0x30],
                    types="TTTT", table_paddr=0)
    assert syms.aliases(0x20) == ["b_alias", "b"]
    assert syms.aliases(0x21) == [] and syms.aliases(0x10) == ["a"]
    assert syms.next_address(0x10) == 0x20 and syms.next_address(0x20) == 0x30
    assert syms.next_address(0x18) == 0x20 and syms.next_address(0x30) is None


# -- tampering on a copy of the RAM ---------------------------------------------------------

@pytest.fixture(params=TAMPER_KERNELS)
def ram(request, guest_images, tmp_path):
    """(version, a private copy of that guest's RAM)."""
    path = tmp_path / "ram.raw"
    shutil.copyfile(guest_images(request.param) / f"{request.param}.raw", path)
    return request.param, path


@pytest.fixture
def ram61(guest_images, tmp_path):
    path = tmp_path / "ram.raw"
    shutil.copyfile(guest_images("6.1") / "6.1.raw", path)
    return path


def _u64(kernel, address: int, value: int) -> None:
    kernel.space.write(address, struct.pack("<Q", value))


def _findings(path, view: str = "integrity"):
    """VIEW of the edited copy, its own reads bounded (a clean guest: under 10,000)."""
    with attach(str(path), profile_cache=None) as vm:
        vm.linux.ready()  # the kernel is found first: what is bounded is the view's reads
        return _timed(getattr(vm.linux, view), VIEW_READS)


def _runs_of(path) -> dict[str, object]:
    """What each check of the edited copy examined, by subject."""
    return {r.subject: r for r in _findings(path, "integrity_checks").items}


def _only(result, **want):
    """The one finding of RESULT, which must have the fields WANT."""
    assert result.partial is None, result.partial
    assert len(result.items) == 1, result.items
    f = result.items[0]
    for name, value in want.items():
        assert getattr(f, name) == value, (name, f)
    return f


def _module(kernel, name: str):
    return next(m for m in modules(kernel).items if m.name == name)


def _scratch(mem, kernel, size: int = 8192) -> int:
    """Zeroed RAM high in the guest, as a kernel (direct-map) address: room for fake
    structures the tampering links in."""
    top = max(r.end for r in mem.regions()) & ~0xFFF
    for paddr in range(top - size, 64 << 20, -4096):
        if mem.read(paddr, size) == bytes(size):
            return kernel.page_offset + paddr
    raise AssertionError("no free page in the guest's RAM")


def test_syscall_table_entry_redirected_to_another_function(ram):
    version, path = ram
    mem, kernel, _ = _edit(path)
    nr = kernel.arch.syscall.numbers["kill"]
    read = kernel.symbols.lookup("__x64_sys_read")
    table = kernel.symbols.lookup("sys_call_table")
    _u64(kernel, table + 8 * nr, read)
    mem.close()
    f = _only(_findings(path), check="syscall_table", subject=f"sys_call_table[{nr}] kill",
              address=read, expected="__x64_sys_kill", actual="__x64_sys_read",
              severity="high")
    assert f"{table + 8 * nr:#x}" in f.detail
    if kernel.symbols.get("x64_sys_call"):
        assert "dispatches through x64_sys_call" in f.detail


def test_syscall_table_entry_redirected_into_a_module(ram):
    version, path = ram
    mem, kernel, _ = _edit(path)
    nr = kernel.arch.syscall.numbers["getdents64"]
    target = _module(kernel, "dummy").address + 0x10  # inside the module's text
    _u64(kernel, kernel.symbols.lookup("sys_call_table") + 8 * nr, target)
    mem.close()
    f = _only(_findings(path), check="syscall_table", subject=f"sys_call_table[{nr}] getdents64",
              address=target, expected="__x64_sys_getdents64", severity="high")
    assert f.actual.startswith("module dummy"), f.actual


def test_switch_dispatch_redirected(guest_images, tmp_path):
    """Kernels that dispatch with a switch: one case's jump now leads elsewhere."""
    import capstone

    for version in ("6.1", "6.12"):
        path = tmp_path / f"{version}.raw"
        shutil.copyfile(guest_images(version) / f"{version}.raw", path)
        mem, kernel, _ = _edit(path)
        s = kernel.symbols
        start = s.lookup("x64_sys_call")
        code = kernel.read(start, s.next_address(start) - start)
        kill, read = s.lookup("__x64_sys_kill"), s.lookup("__x64_sys_read")
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        leaf = next(i for i in md.disasm(code, start)
                    if i.mnemonic == "jmp" and int(i.op_str, 16) == kill)
        assert leaf.size == 5  # jmp rel32
        rel = read - (leaf.address + leaf.size)
        kernel.space.write(leaf.address + 1, struct.pack("<i", rel))
        mem.close()
        nr = kernel.arch.syscall.numbers["kill"]
        f = _only(_findings(path), check="syscall_dispatch",
                  subject=f"x64_sys_call case {nr} kill", address=read,
                  expected="__x64_sys_kill", actual="__x64_sys_read", severity="high")
        assert "x64_sys_call" in f.detail
        path.unlink()


@pytest.mark.parametrize("patch", ["jmp", "int3"])
def test_switch_dispatcher_patched_at_its_entry(ram61, patch):
    """An inline hook on x64_sys_call's first bytes sends every number to a module: one
    finding for all of them. An int3 (a breakpoint) is code the decoder does not follow: the
    result says so instead of guessing."""
    mem, kernel, _ = _edit(ram61)
    start = kernel.symbols.lookup("x64_sys_call")
    target = _module(kernel, "dummy").address + 0x10
    code = (b"\xe9" + struct.pack("<i", target - (start + 5)) if patch == "jmp" else b"\xcc")
    kernel.space.write(start, code)
    mem.close()
    result = _findings(ram61)
    if patch == "int3":
        assert result.items == [] and "x64_sys_call: dispatch not decoded" in result.partial
        return
    f = _only(result, check="syscall_dispatch", address=target, severity="high")
    assert f.subject.startswith("x64_sys_call case 0 read, 1 write, 2 open") and "more" in f.subject
    assert f.actual.startswith("module dummy")
    assert f.expected == "each number's own syscall entry"


@pytest.mark.parametrize("registered", [True, False], ids=["ftrace", "unknown"])
def test_a_call_before_the_switch(ram61, registered):
    """x64_sys_call's fentry site calls out before dispatching: an ftrace trampoline that a
    registered ftrace_ops owns is tracing (the ftrace check reports its handler); the same
    call with no ops owning it is a hook."""
    mem, kernel, _ = _edit(ram61)
    s = kernel.symbols
    start = s.lookup("x64_sys_call")
    ops = _scratch(mem, kernel)
    trampoline = 0xFFFF_FFFF_C800_0000  # module space, in no module: where ftrace makes them
    kernel.space.write(start, b"\xe8" + struct.pack("<i", trampoline - (start + 5)))
    if registered:
        o = kernel.btf.struct("ftrace_ops")
        _fake_ftrace_ops(kernel, ops, s.lookup("ftrace_stub"), [start])
        _u64(kernel, ops + o.offset("trampoline"), trampoline)
        kernel.space.write(ops + o.offset("trampoline_size"), struct.pack("<I", 0x100))
    mem.close()
    result = _findings(ram61)
    if registered:
        assert result.partial is None and result.items == []
        hooks = _findings(ram61, "kernel_hooks").items
        assert [(h.owner, h.hooks) for h in hooks] == [("kernel", ["x64_sys_call"])]
        return
    f = _only(result, check="syscall_dispatch", subject="x64_sys_call (before dispatching)",
              address=trampoline, actual="outside kernel text", severity="high")
    assert "every system call" in f.detail


def _gate(kernel, vector: int, handler: int) -> int:
    btf = kernel.btf
    gate = btf.struct("gate_struct")
    at = kernel.symbols.lookup("idt_table") + vector * gate.size
    for name, value in (("offset_low", handler & 0xFFFF), ("offset_middle", handler >> 16 & 0xFFFF),
                        ("offset_high", handler >> 32)):
        kernel.space.write(at + gate.offset(name), value.to_bytes(
            btf.sizeof(gate.field(name).type_id), "little"))
    return at


def _handler(kernel, vector: int) -> int:
    gate = kernel.btf.struct("gate_struct")
    at = kernel.symbols.lookup("idt_table") + vector * gate.size
    parts = [int.from_bytes(kernel.read(at + gate.offset(name),
                                        kernel.btf.sizeof(gate.field(name).type_id)), "little")
             for name in ("offset_low", "offset_middle", "offset_high")]
    return parts[0] | parts[1] << 16 | parts[2] << 32


def test_idt_gate_redirected_to_another_exception(ram):
    version, path = ram
    mem, kernel, _ = _edit(path)
    int3 = kernel.symbols.lookup("asm_exc_int3")
    at = _gate(kernel, 14, int3)
    mem.close()
    f = _only(_findings(path), check="idt", subject="idt[14] (0x0e)", address=int3,
              expected="asm_exc_page_fault", actual="asm_exc_int3", severity="high")
    assert f"{at:#x}" in f.detail and "another exception" in f.detail


def test_idt_gate_redirected_into_a_module(ram61):
    mem, kernel, _ = _edit(ram61)
    target = _module(kernel, "dummy").address + 0x20
    _gate(kernel, 0x41, target)
    mem.close()
    f = _only(_findings(ram61), check="idt", subject="idt[65] (0x41)", address=target,
              severity="high")
    assert f.actual.startswith("module dummy")


def test_idt_gate_pointing_at_another_vectors_stub(ram61):
    mem, kernel, _ = _edit(ram61)
    stubs = kernel.symbols.lookup("irq_entries_start")
    handler_31 = _handler(kernel, 0x31)
    assert stubs < handler_31 < stubs + 0x1000
    _gate(kernel, 0x30, handler_31)
    mem.close()
    f = _only(_findings(ram61), check="idt", subject="idt[48] (0x30)", address=handler_31,
              expected="the irq_entries_start stub for vector 0x30", severity="high")
    assert "the stub of vector 0x31" in f.detail


def _unlink(kernel, node: int) -> None:
    """list_del: the neighbours of NODE point past it (NODE keeps its own pointers)."""
    nxt, prev = kernel.read_u64(node), kernel.read_u64(node + 8)
    _u64(kernel, prev, nxt)
    _u64(kernel, nxt + 8, prev)


def _hide(kernel, name: str, from_kset: bool):
    m = _module(kernel, name)
    _unlink(kernel, m.struct_address + kernel.helper(ModuleReader).list_offset)
    if from_kset:
        btf = kernel.btf
        kobj = m.struct_address + btf.struct("module").offset("mkobj")
        _unlink(kernel, kobj + btf.struct("kobject").offset("entry"))
    return m


@pytest.mark.parametrize("from_kset", [False, True], ids=["list", "list-and-kset"])
def test_module_unlinked_is_still_found(ram, from_kset):
    version, path = ram
    mem, kernel, _ = _edit(path)
    hidden = _hide(kernel, "dummy", from_kset)
    mem.close()
    seen_by = "module memory" if from_kset else "module_kset and module memory"
    f = _only(_findings(path), check="modules", subject="dummy", address=hidden.struct_address,
              expected="in the modules list (/proc/modules)", actual=f"only in {seen_by}",
              severity="high")
    assert ("and /sys/module" in f.detail) == from_kset
    with attach(str(path), profile_cache=None) as vm:
        runs = {r.subject: r for r in vm.linux.integrity_checks().items}
        assert [m.name for m in vm.linux.modules()].count("dummy") == 0
    assert runs["modules list"].checked == 5
    assert runs["module_kset"].checked == (5 if from_kset else 6)
    assert runs["module memory"].checked == 6
    assert runs["all three compared"].findings == 1


def test_a_hook_in_a_hidden_module_is_high(ram61):
    """A module hidden from every list, hooking the syscall table: the entry's evidence names
    the module and says it is not listed."""
    mem, kernel, _ = _edit(ram61)
    hidden = _hide(kernel, "dummy", from_kset=True)
    nr = kernel.arch.syscall.numbers["kill"]
    _u64(kernel, kernel.symbols.lookup("sys_call_table") + 8 * nr, hidden.address + 0x10)
    report = check_integrity(kernel)  # the Python API, on the kernel being edited
    mem.close()
    result = _findings(ram61)
    assert result.partial is None and result.items == report.findings
    by_check = {f.check: f for f in result.items}
    assert sorted(by_check) == ["modules", "syscall_table"]
    actual = by_check["syscall_table"].actual
    assert actual.startswith("module dummy") and "not in the modules list" in actual


# -- ftrace and kprobe hooks (fake ones, linked into a copy) --------------------------------

def _fake_ftrace_ops(kernel, at: int, func: int, hooked: list[int]) -> None:
    """An ftrace_ops at AT whose filter hash holds HOOKED, first on ftrace_ops_list."""
    btf = kernel.btf
    ops, ops_hash = btf.struct("ftrace_ops"), btf.struct("ftrace_ops_hash")
    fhash, entry = btf.struct("ftrace_hash"), btf.struct("ftrace_func_entry")
    s = kernel.symbols
    hash_at, fhash_at, buckets = at + 0x400, at + 0x480, at + 0x500
    _u64(kernel, at + ops.offset("func"), func)
    _u64(kernel, at + ops.offset("next"), kernel.read_u64(s.lookup("ftrace_ops_list")))
    _u64(kernel, at + ops.offset("func_hash"), hash_at)
    _u64(kernel, hash_at + ops_hash.offset("filter_hash"), fhash_at)
    _u64(kernel, fhash_at + fhash.offset("size_bits"), 1)
    _u64(kernel, fhash_at + fhash.offset("buckets"), buckets)
    _u64(kernel, fhash_at + fhash.offset("count"), len(hooked))
    for i, ip in enumerate(hooked):  # all in bucket 0, chained
        e = at + 0x600 + 0x40 * i
        nxt = at + 0x600 + 0x40 * (i + 1) if i + 1 < len(hooked) else 0
        _u64(kernel, e + entry.offset("hlist"), nxt + entry.offset("hlist") if nxt else 0)
        _u64(kernel, e + entry.offset("ip"), ip)
    _u64(kernel, buckets, at + 0x600 + entry.offset("hlist"))
    _u64(kernel, s.lookup("ftrace_ops_list"), at)


@pytest.mark.parametrize("owner", ["module", "outside"])
def test_ftrace_hook(ram61, owner):
    mem, kernel, _ = _edit(ram61)
    ops = _scratch(mem, kernel)
    s = kernel.symbols
    func = _module(kernel, "dummy").address + 0x10 if owner == "module" else ops + 0x1000
    hooked = sorted(("__x64_sys_kill", "__x64_sys_read"), key=s.lookup)  # by address
    _fake_ftrace_ops(kernel, ops, func, [s.lookup(n) for n in hooked])
    mem.close()
    f = _only(_findings(ram61), check="ftrace", address=func, expected="a handler in kernel text",
              severity="info" if owner == "module" else "high")
    assert f.subject == f"ftrace_ops.func of {ops:#x}"
    assert f"hooks {hooked[0]}, {hooked[1]}" in f.detail
    if owner == "module":
        assert f.actual.startswith("module dummy")
    else:
        assert f.actual == "outside kernel text" and "no listed module" in f.detail
    hooks = _findings(ram61, "kernel_hooks")
    assert hooks.partial is None and len(hooks.items) == 1
    h = hooks.items[0]
    assert (h.kind, h.address, h.handler) == ("ftrace_ops.func", ops, func)
    assert h.hooks == hooked
    assert h.owner == ("module dummy" if owner == "module" else "unknown")


def _fake_kprobe(kernel, at: int, addr: int, pre: int, post: int, nxt: int) -> None:
    kp = kernel.btf.struct("kprobe")
    _u64(kernel, at + kp.offset("hlist"), nxt + kp.offset("hlist") if nxt else 0)
    _u64(kernel, at + kp.offset("addr"), addr)
    _u64(kernel, at + kp.offset("pre_handler"), pre)
    _u64(kernel, at + kp.offset("post_handler"), post)


def test_kprobe_hook_outside_kernel_text(ram61):
    mem, kernel, _ = _edit(ram61)
    kp = _scratch(mem, kernel)
    s = kernel.symbols
    target = s.lookup("__x64_sys_kill") + 4
    _fake_kprobe(kernel, kp, target, kp + 0x1000, s.lookup("__x64_sys_read"), 0)
    bucket = s.lookup("kprobe_table") + 8 * 5
    _u64(kernel, bucket, kp + kernel.btf.struct("kprobe").offset("hlist"))
    mem.close()
    f = _only(_findings(ram61), check="kprobe", subject=f"kprobe.pre_handler of {kp:#x}",
              address=kp + 0x1000, actual="outside kernel text", severity="high")
    assert "hooks __x64_sys_kill+0x4" in f.detail
    hooks = _findings(ram61, "kernel_hooks").items
    assert sorted(h.kind for h in hooks) == ["kprobe.post_handler", "kprobe.pre_handler"]
    assert {h.owner for h in hooks} == {"kernel", "unknown"}


def test_kprobes_under_an_aggregate_and_a_kretprobe(ram61):
    """Two probes on one address make an aggregate whose list holds them: one by a module
    (informational), one a kretprobe whose return handler runs outside any module (high)."""
    mem, kernel, _ = _edit(ram61)
    s, btf = kernel.symbols, kernel.btf
    kp = btf.struct("kprobe")
    aggr = _scratch(mem, kernel)
    first, second = aggr + 0x200, aggr + 0x400
    kill = s.lookup("__x64_sys_kill")
    in_module = _module(kernel, "dummy").address + 0x10
    outside = aggr + 0x1000
    _fake_kprobe(kernel, aggr, kill, s.lookup("aggr_pre_handler"), 0, 0)
    _fake_kprobe(kernel, first, kill, in_module, 0, 0)
    _fake_kprobe(kernel, second, kill, s.lookup("pre_handler_kretprobe"), 0, 0)
    kret = btf.struct("kretprobe")
    _u64(kernel, second - kret.offset("kp") + kret.offset("handler"), outside)
    ring = [aggr, first, second]  # the aggregate's list: aggr -> first -> second -> aggr
    for i, at in enumerate(ring):
        _u64(kernel, at + kp.offset("list"), ring[(i + 1) % 3] + kp.offset("list"))
        _u64(kernel, at + kp.offset("list") + 8, ring[i - 1] + kp.offset("list"))
    _u64(kernel, s.lookup("kprobe_table") + 8 * 17, aggr + kp.offset("hlist"))
    mem.close()
    result = _findings(ram61)
    assert result.partial is None
    got = sorted((f.subject, f.address, f.severity) for f in result.items)
    assert got == [(f"kprobe.pre_handler of {first:#x}", in_module, "info"),
                   (f"kretprobe.handler of {second:#x}", outside, "high")]
    assert all(f.detail.startswith("hooks __x64_sys_kill") for f in result.items)
    runs = _runs_of(ram61)
    assert runs["kprobe_table"].checked == 3


# -- hostile garbage ------------------------------------------------------------------------

def test_cyclic_kprobe_chain_is_bounded_and_partial(ram61):
    mem, kernel, _ = _edit(ram61)
    a = _scratch(mem, kernel)
    b = a + 0x200
    s = kernel.symbols
    kill, read = s.lookup("__x64_sys_kill"), s.lookup("__x64_sys_read")
    _fake_kprobe(kernel, a, kill, read, 0, b)
    _fake_kprobe(kernel, b, read, kill, 0, a)  # b leads back to a
    _u64(kernel, s.lookup("kprobe_table") + 8 * 9, a + kernel.btf.struct("kprobe").offset("hlist"))
    mem.close()
    result = _findings(ram61)
    assert result.items == [] and "kprobe_table[9]" in result.partial
    assert "loops" in result.partial
    runs = _runs_of(ram61)
    assert runs["kprobe_table"].checked == 2 and runs["idt_table"].checked == 256


@pytest.mark.parametrize("wild", ["unmapped", "self"])
def test_wild_ftrace_ops_pointer_is_bounded_and_partial(ram61, wild):
    mem, kernel, _ = _edit(ram61)
    head = kernel.symbols.lookup("ftrace_ops_list")
    if wild == "unmapped":
        _u64(kernel, head, 0xDEAD_0000_0000_0100)
    else:  # an ops whose next is itself, its handler in kernel text
        ops = _scratch(mem, kernel)
        o = kernel.btf.struct("ftrace_ops")
        _u64(kernel, ops + o.offset("func"), kernel.symbols.lookup("ftrace_stub"))
        _u64(kernel, ops + o.offset("next"), ops)
        _u64(kernel, head, ops)
    mem.close()
    result = _findings(ram61)
    assert result.items == []
    assert result.partial and "ftrace_ops" in result.partial
    assert ("loops" in result.partial) == (wild == "self")


def test_garbage_module_kset_and_module_list(ram61):
    mem, kernel, _ = _edit(ram61)
    s = kernel.symbols
    _u64(kernel, s.lookup("module_kset"), 0xFFFF_FFFF_FFFF_F000)
    m = _module(kernel, "mrp")  # its list entry now leads to itself
    node = m.struct_address + kernel.helper(ModuleReader).list_offset
    _u64(kernel, node, node)
    mem.close()
    result = _findings(ram61)
    assert result.partial and "module_kset" in result.partial and "modules list" in result.partial
    # Modules past mrp are only in memory now, but a source read in part proves no absence.
    assert result.items == []
    runs = _runs_of(ram61)
    assert runs["modules list"].checked == 3 and runs["module memory"].checked == 6


@pytest.mark.parametrize("seed", range(4))
def test_seeded_random_garbage_over_the_checked_structures(ram61, seed):
    """Random bytes over the tables, lists and heads every check reads: the view answers,
    complete or partial, within its read bound, or raises a clear error."""
    rng = random.Random(seed)
    mem, kernel, _ = _edit(ram61)
    s = kernel.symbols
    for name, size in (("idt_table", 4096), ("sys_call_table", 8 * 451), ("kprobe_table", 512),
                       ("ftrace_ops_list", 8), ("module_kset", 8)):
        at = s.lookup(name)
        for _ in range(8):
            off = rng.randrange(0, size // 8) * 8
            kernel.space.write(at + off, rng.randbytes(8))
    kset = kernel.read_u64(s.lookup("module_kset"))
    with contextlib.suppress(CloudVMIError):
        kernel.space.write(kset, rng.randbytes(16))
    mem.close()
    with attach(str(ram61), profile_cache=None) as vm:
        vm.linux.ready()
        for view in (vm.linux.integrity, vm.linux.integrity_checks, vm.linux.kernel_hooks):
            try:
                result = _timed(view, VIEW_READS)
            except CloudVMIError:
                continue
            assert result is not None

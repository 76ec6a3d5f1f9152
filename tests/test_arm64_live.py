"""arm64 guests read from outside as x86-64 ones are, against the guest's own /proc: the
process list, threads, modules, the kernel's identity and layout, a dump of it, and the
architecture found from QEMU and from the dump (never assumed), the integrity checks, an agent
serving it. One guest per kernel:
6.1 (48-bit, kallsyms without data symbols) and 6.12 (52-bit with FEAT_LPA2), the same
paused guest the view tests read (conftest's `viewed`), its own view asked before the pause."""

import shutil

import pytest
from matrix import ARM64

from cloudvmi.vm import attach

import oracle
from test_live_views import _compare


@pytest.fixture(scope="module", params=ARM64)
def live(request, viewed):
    """(vm, truth) of a paused arm64 guest; truth/console holds what its console said."""
    return viewed(request.param)


def _console(truth, name: str) -> str:
    return (truth / "console" / name).read_text()


def test_process_list_and_threads_equal_guest_proc(live):
    vm, truth = live
    assert vm.arch.name == "arm64"  # from QEMU's query-target
    theirs = oracle.parse_processes(_console(truth, "procview"))
    mine = _compare(vm.linux.processes(), theirs)
    odd = [p for p in mine.values() if p.comm == "odd (name) ü"]
    assert odd and odd[0].cmdline[3:] == ["odd", "arg with spaces", "(paren)", "ünïcödé"]
    multi = [p for p in mine.values() if p.cmdline[:2] == ["/bin/workload", "threads"]]
    assert multi and multi[0].threads == 4 and multi[0].exe == "/bin/workload"
    threads = vm.linux.threads()
    assert threads.partial is None
    by_process: dict[int, set[int]] = {}
    for t in threads.items:
        by_process.setdefault(t.tgid, set()).add(t.tid)
    for pid, want in theirs.items():
        assert by_process.get(pid) == set(want.threads), pid


def test_modules_equal_guest_proc_modules(live):
    vm, truth = live
    mine = vm.linux.modules()
    assert mine.partial is None
    assert {m.name: (m.size, m.refcount, m.state) for m in mine.items} == \
        oracle.parse_modules((truth / "modules").read_text())


def test_kernel_identity_and_layout_equal_guest(live):
    vm, truth = live
    info = vm.linux.info()
    assert info.architecture == "arm64"
    assert info.release == (truth / "release").read_text().strip()
    assert _console(truth, "machine").strip() == "aarch64"
    assert info.cmdline == _console(truth, "cmdline").strip()
    kallsyms = {}
    for line in _console(truth, "kallsyms-text").splitlines():
        address, _, name = line.split()
        kallsyms[name] = int(address, 16)
    stext = kallsyms["_stext"]  # 6.1 keeps no _text in kallsyms (it lies before _stext)
    assert vm.linux.kernel.symbols.lookup("_stext") == stext
    assert kallsyms.get("_text", info.text_virtual) == info.text_virtual
    # /proc/iomem's "Kernel code" starts at _stext on 6.1; 6.12 starts it at _text
    iomem = _console(truth, "iomem")
    code = next(int(line.split("-")[0].strip(), 16) for line in iomem.splitlines()
                if "Kernel code" in line)
    first = info.text_virtual if info.release.startswith("6.12") else stext
    assert info.text_physical + (first - info.text_virtual) == code
    # TCG's max CPU has FEAT_LPA2: the 52-bit 6.12 build walks 5 levels, 6.1 (48-bit) 4
    assert info.paging_levels == (5 if info.release.startswith("6.12") else 4)
    ram = next(line for line in iomem.splitlines() if "System RAM" in line)
    assert int(ram.split("-")[0].strip(), 16) == min(r[0] for r in vm.memory_regions()) \
        == 0x4000_0000


def test_dump_gives_the_same_results_as_live(live, tmp_path):
    vm, _ = live
    dump = tmp_path / "guest.elf"
    assert vm.qmp.execute("query-status")["status"] == "paused"  # views and dump: one moment
    live_views = (vm.linux.processes(), vm.linux.threads(), vm.linux.modules(),
                  vm.linux.files(), vm.linux.sockets())
    vm.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{dump}")
    with attach(str(dump), profile_cache=None, symbols=vm.symbols) as offline:
        assert offline.arch.name == "arm64"  # from the dump's ELF machine
        dump_views = (offline.linux.processes(), offline.linux.threads(),
                      offline.linux.modules(), offline.linux.files(), offline.linux.sockets())
        assert offline.linux.info().release == vm.linux.info().release
    for a, b in zip(live_views, dump_views, strict=True):
        assert a == b


def _dump(vm, path):
    """A dump of the paused guest at PATH (a kept one copied, with $CLOUDVMI_VIEW_CORPUS)."""
    if vm.qmp is not None:
        vm.qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{path}")
    else:
        shutil.copyfile(vm.phys.path, path)
    return path


def test_served_by_an_agent_as_read_locally(live, tmp_path):
    """An arm64 VM behind an agent answers as the local one: here its dump, served on
    loopback (the live guest's one QMP connection is this session's)."""
    from cloudvmi.remote.client import Node

    from agent_process import Agent

    vm, _ = live
    dump = _dump(vm, tmp_path / "arm.elf")
    agent = Agent(tmp_path, env={"CLOUDVMI_SYMBOLS": vm.symbols} if vm.symbols else None,
                  config=f"""
[agent]
node = "arm"
listen = "127.0.0.1:0"
insecure = true
lab = false
audit_log = "{tmp_path / 'audit.jsonl'}"
dumps = ["{dump}"]

[[allow]]
identity = "insecure-loopback"
vms = ["arm"]
permissions = ["read"]
""")
    node = Node(agent.address)
    try:
        remote = node.vm("arm")
        assert [v.name for v in node.vms()] == ["arm"]
        assert remote.linux.info().architecture == "arm64"
        for view in ("processes", "threads", "modules", "sockets", "integrity"):
            assert getattr(remote.linux, view)() == getattr(vm.linux, view)(), view
        assert remote.read_physical(vm.linux.kernel.text_phys, 4096) == \
            vm.linux.kernel.phys.read(vm.linux.kernel.text_phys, 4096)
    finally:
        node.close()
        agent.stop()


def _patch(vm, path, vaddr: int, data: bytes) -> None:
    """Write DATA at kernel address VADDR into the dump file PATH of VM's memory."""
    paddr = vm.linux.kernel.space.translate(vaddr)
    region = next(r for r in vm.phys.regions() if r.start <= paddr < r.start + r.size)
    with open(path, "r+b") as f:
        f.seek(region.offset + paddr - region.start)
        f.write(data)


def test_integrity_clean_then_tampering_found(live, tmp_path):
    """Every check runs on arm64 (system-call tables, exception vectors, module memory) and
    finds nothing on a clean guest; a system-call entry and a vector entry redirected in a
    dump of it are found, each as the one finding of its check."""
    vm, _ = live
    clean = vm.linux.integrity_checks()
    assert clean.partial is None
    runs = {r.subject: r for r in clean.items}
    assert runs["sys_call_table"].checked > 400 and runs["vectors"].checked == 16
    assert runs["module memory"].checked == len(vm.linux.modules().items)
    assert vm.linux.integrity().items == []

    from cloudvmi.arch.aarch64.branches import branches

    dump = _dump(vm, tmp_path / "guest.elf")
    kernel = vm.linux.kernel
    symbols = kernel.symbols
    nr = kernel.arch.syscall.numbers["kill"]
    read = symbols.lookup("__arm64_sys_read")
    with attach(str(dump), profile_cache=None, symbols=vm.symbols) as offline:
        table = symbols.lookup("sys_call_table")
        _patch(offline, dump, table + 8 * nr, read.to_bytes(8, "little"))
        # vectors[4] (EL1 sync): its branch to its handler sent to the EL0 IRQ handler
        slot = symbols.lookup("vectors") + 4 * 128
        out = [b for b in branches(kernel.read(slot, 128), slot)
               if b.kind == "b" and not slot <= b.target < slot + 128][-1]
        other = symbols.lookup("el0t_64_irq" if symbols.get("el0t_64_irq") else "el0_irq")
        word = 0x1400_0000 | ((other - out.at) >> 2) & 0x3FF_FFFF
        _patch(offline, dump, out.at, word.to_bytes(4, "little"))
    with attach(str(dump), profile_cache=None, symbols=vm.symbols) as offline:
        found = {(f.check, f.subject): f for f in offline.linux.integrity().items}
    assert set(found) == {("syscall_table", f"sys_call_table[{nr}] kill"),
                          ("vectors", "vectors[4] (el1 sync)")}, found
    f = found["syscall_table", f"sys_call_table[{nr}] kill"]
    assert (f.address, f.expected, f.actual, f.severity) == \
        (read, "__arm64_sys_kill", "__arm64_sys_read", "high")
    assert found["vectors", "vectors[4] (el1 sync)"].address == other

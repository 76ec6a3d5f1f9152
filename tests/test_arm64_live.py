"""arm64 guests read from outside as x86-64 ones are, against the guest's own /proc: the
process list, threads, modules, the kernel's identity and layout, a dump of it, and the
architecture found from QEMU and from the dump (never assumed). One guest per kernel:
6.1 (48-bit, kallsyms without data symbols) and 6.12 (52-bit with FEAT_LPA2), the same
paused guest the view tests read (conftest's `viewed`), its own view asked before the pause."""

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


"""The same views on other guest shapes: cloud and real-time kernels, 4-level paging, RAM split
around the PCI hole, several vCPUs, and a QEMU without a shared-memory file (/proc/<pid>/mem)."""

import uuid

import pytest

from cloudvmi.lab import guest as lab
from cloudvmi.memory.mapped import MappedFileMemory
from cloudvmi.memory.procmem import ProcessMemory
from cloudvmi.vm import attach

import oracle
from test_live_views import _compare

VARIANTS = [
    pytest.param(("6.1", "generic", {"mem": "4G", "paging": 4, "smp": 2}),
                 id="6.1-4G-4level-smp2"),
    pytest.param(("6.1", "cloud", {"shm": False}), id="6.1-cloud-procmem"),
    pytest.param(("5.10", "cloud", {}), id="5.10-cloud"),
    pytest.param(("6.12", "cloud", {"paging": 4}), id="6.12-cloud-4level"),
    pytest.param(("unstable", "rt", {"smp": 2}), id="unstable-rt-smp2"),  # PREEMPT_RT
]


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, profile_dir):
    kernel, flavour, options = request.param
    g = lab.up(f"lx{uuid.uuid4().hex[:6]}", kernel=kernel, flavour=flavour, **options)
    vm = attach(g.name, profile_cache=profile_dir)
    try:
        yield g, vm, options
    finally:
        vm.close()
        lab.down(g.name)


def test_views_equal_guest_proc(variant):
    g, vm, options = variant
    _compare(vm.linux.processes(), oracle.processes(g), vm.linux.processes())
    assert {m.name for m in vm.linux.modules().items} == set(oracle.modules(g))
    info = vm.linux.info()
    assert info.release == g.console.check("uname -r").strip()
    assert info.paging_levels == options.get("paging", 4 if g.meta["kernel"] == "5.10" else 5)


def test_memory_source_and_layout(variant):
    g, vm, options = variant
    if options.get("shm", True):
        assert isinstance(vm.phys, MappedFileMemory)
    else:
        assert isinstance(vm.phys, ProcessMemory)
    regions = vm.phys.regions()
    mib = lab.parse_size(options.get("mem", "256M"))
    assert sum(r.size for r in regions) >= mib << 20
    if mib >= 4096:  # RAM beyond the PCI hole lives above 4 GiB and maps back into the file
        high = [r for r in regions if r.start >= 1 << 32]
        assert high and high[0].offset < 1 << 32
        probe = high[0].start + 0x1000
        data = vm.read_physical(probe, 64)
        with open(g.shm_path, "rb") as f:
            f.seek(high[0].offset + 0x1000)
            assert f.read(64) == data

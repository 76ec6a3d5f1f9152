"""Hostile guest memory: crafted cycles, wild pointers, corrupt BTF and kallsyms, truncated
dumps. Each case must end in bounded time with a clear error or a result marked partial."""

import os
import random
import shutil
import struct

import pytest

from cloudvmi.errors import CloudVMIError, ProfileError
from cloudvmi.memory.mapped import MappedFileMemory
from cloudvmi.os.linux import kernel as kernel_mod
from cloudvmi.os.linux.views.processes import TaskReader, processes
from cloudvmi.vm import attach

READ_BOUND = 2_000_000  # reads any hostile case may make (a normal process list: ~10,000)


@pytest.fixture(scope="module")
def images(guest_images):
    """A raw RAM image and an ELF dump of one real paused 6.1 guest."""
    return guest_images("6.1")


@pytest.fixture
def raw_copy(images, tmp_path):
    path = tmp_path / "ram.raw"
    shutil.copyfile(images / "6.1.raw", path)
    return path


def _edit(path):
    """A writable view of the copy, with its kernel located and a task reader."""
    mem = MappedFileMemory(path, writable=True)
    kernel = kernel_mod.locate(mem, None)
    return mem, kernel, kernel.helper(TaskReader)


def _timed(fn, reads: int = READ_BOUND):
    """FN's result, having checked that it read guest memory at most READS times: a walk
    that loops or runs away on hostile memory is caught by its work, not by a clock."""
    from cloudvmi.memory.mapped import MappedFileMemory

    count = 0
    original = MappedFileMemory.read

    def counting(self, address, size):
        nonlocal count
        count += 1
        return original(self, address, size)

    MappedFileMemory.read = counting
    try:
        result = fn()
    finally:
        MappedFileMemory.read = original
    assert count <= reads, f"{count} reads of guest memory"
    return result


def test_intact_copy_is_complete(raw_copy):
    with attach(str(raw_copy), profile_cache=None) as vm:
        result = vm.linux.processes()
    assert result.partial is None and len(result.items) > 40


def test_cyclic_task_list_gives_a_marked_partial_result(raw_copy):
    mem, kernel, reader = _edit(raw_copy)
    tasks = processes(kernel).items
    a, b = tasks[10], tasks[20]
    # b's next now points back to a: the ring never returns to init_task.
    kernel.space.write(b.address + reader.tasks_offset, struct.pack("<Q",
                       a.address + reader.tasks_offset))
    with attach(str(raw_copy), profile_cache=None) as vm:
        result = _timed(vm.linux.processes)
        threads = _timed(vm.linux.threads)
    assert result.partial and "loops" in result.partial
    assert [p.pid for p in result.items] == [p.pid for p in tasks[:21]]
    assert threads.partial


def test_pointers_outside_ram(raw_copy):
    mem, kernel, reader = _edit(raw_copy)
    tasks = processes(kernel).items
    victim = next(p for p in tasks if p.cmdline[:1] == ["sleep"])
    wild = kernel.page_offset + (64 << 30)  # direct map, far beyond this guest's RAM
    mm_field = victim.address + reader.task.offset("mm")
    kernel.space.write(mm_field, struct.pack("<Q", wild))
    # And a later task whose next pointer leaves RAM altogether.
    last = tasks[-3]
    kernel.space.write(last.address + reader.tasks_offset, struct.pack("<Q", 0xDEAD_0000_0000))
    with attach(str(raw_copy), profile_cache=None) as vm:
        result = _timed(vm.linux.processes)
    by_pid = {p.pid: p for p in result.items}
    assert by_pid[victim.pid].errors and by_pid[victim.pid].cmdline == []
    assert result.partial and "list entry" in result.partial
    assert last.pid in by_pid and tasks[-1].pid not in by_pid
    healthy = [p for p in result.items if p.pid != victim.pid and not p.kernel_thread]
    assert healthy and all(not p.errors and p.cmdline for p in healthy if p.state != "Z")


def test_corrupt_btf_is_a_clear_error(raw_copy):
    mem, kernel, _ = _edit(raw_copy)
    btf_at = kernel.text_phys + kernel.profile.btf_offset
    type_off, type_len = struct.unpack("<II", mem.read(btf_at + 8, 8))  # after magic, hdr_len
    # Garble the type section: every kind/vlen word becomes nonsense.
    start = btf_at + 24 + type_off
    mem.write(start, os.urandom(min(type_len, 1 << 20)))
    mem.close()
    with attach(str(raw_copy), profile_cache=None) as vm, pytest.raises(ProfileError):
        _timed(vm.linux.processes)


def test_corrupt_kallsyms_is_a_clear_error(raw_copy):
    mem, kernel, _ = _edit(raw_copy)
    digits = b"".join(bytes([c]) + b"\0" for c in b"0123456789")
    for address in list(mem.find(digits)):
        mem.write(address, b"\xff" * len(digits))
    mem.close()
    with attach(str(raw_copy), profile_cache=None) as vm, pytest.raises(ProfileError) as err:
        _timed(vm.linux.processes)
    assert "kallsyms" in str(err.value).lower()


def test_random_memory_is_not_a_kernel(tmp_path):
    path = tmp_path / "noise.raw"
    path.write_bytes(os.urandom(32 << 20))
    with attach(str(path), profile_cache=None) as vm, pytest.raises(ProfileError):
        _timed(vm.linux.processes)


@pytest.mark.parametrize("fraction", [0.0001, 0.3, 0.75, 0.999])
def test_truncated_dump(images, tmp_path, fraction):
    full = images / "6.1.elf"
    cut = tmp_path / "cut.elf"
    size = int(full.stat().st_size * fraction)
    with open(full, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(size))

    def attempt():
        try:
            with attach(str(cut), profile_cache=None) as vm:
                assert "truncated" in vm.phys.description
                return vm.linux.processes()
        except CloudVMIError as exc:
            return exc

    outcome = _timed(attempt)
    if fraction < 0.01:  # not even the kernel image is left
        assert isinstance(outcome, ProfileError), outcome
    elif fraction > 0.99:  # only the top of RAM is gone: the kernel and tasks are all there
        assert not isinstance(outcome, Exception), outcome
        assert outcome.partial is None and len(outcome.items) > 40
    elif not isinstance(outcome, CloudVMIError):  # a partial result, or a clear error
        assert outcome.items


def test_a_planted_fake_kallsyms_table_is_passed_over(raw_copy):
    """A consistent copy of the tables with every symbol moved, lower in RAM than the real
    ones (a guest could plant it): the page tables refute it and the real table wins."""
    mem, kernel, _ = _edit(raw_copy)
    table = kernel.symbols  # the real, slid symbols
    real_text = kernel.text_virt
    from cloudvmi.os.linux.kallsyms import find_kallsyms

    token_table = find_kallsyms(mem).table_paddr
    start = token_table - (8 << 20)
    decoy_at = 0x800000
    if kernel.text_phys < decoy_at + (9 << 20) or start < 0:
        pytest.skip("KASLR put this kernel too low for a decoy below it")
    block = bytearray(mem.read(start, (8 << 20) + 4096))
    base = block.rfind(struct.pack("<Q", real_text), 0, 8 << 20)  # kallsyms_relative_base
    if base < 0:
        pytest.skip("relative_base is not _text in this build")
    struct.pack_into("<Q", block, base, real_text + (256 << 20))
    mem.write(decoy_at, bytes(block))
    mem.close()
    fake = find_kallsyms(MappedFileMemory(raw_copy))
    assert fake.table_paddr < token_table  # the decoy is what a plain scan finds first
    assert fake.lookup("_text") == real_text + (256 << 20)
    with attach(str(raw_copy), profile_cache=None) as vm:
        found = _timed(lambda: vm.linux.kernel)
        assert found.text_virt == real_text
        assert found.symbols.lookup("init_task") == table.lookup("init_task")


@pytest.mark.parametrize("seed", range(6))
def test_seeded_random_corruption_of_tasks(raw_copy, seed):
    """Random bytes over random fields of a dozen task_structs (seeded, so a failure can be
    replayed): every view answers, complete or marked partial, or raises a clear error."""
    rng = random.Random(seed)
    mem, kernel, reader = _edit(raw_copy)
    tasks = processes(kernel).items
    size = reader.task.struct.size
    for victim in rng.sample(tasks, 12):
        for _ in range(4):
            offset = rng.randrange(0, size - 8) & ~7
            kernel.space.write(victim.address + offset, rng.randbytes(8))
    mem.close()
    with attach(str(raw_copy), profile_cache=None) as vm:
        for view in (vm.linux.processes, vm.linux.threads, vm.linux.modules, vm.linux.info):
            try:
                result = _timed(view)
            except CloudVMIError:
                continue
            assert result is not None

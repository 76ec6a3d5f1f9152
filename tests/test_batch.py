"""The batched channel's code and table format (no guest needed)."""

import shutil
import struct
import subprocess
from importlib import resources

import pytest

from cloudvmi.arch.x86_64 import batch as x86_batch
from cloudvmi.arch.x86_64 import helper as x86_helper
from cloudvmi.write import batch, persistent, session
from cloudvmi.write.errors import errno_of


def _assemble(tmp_path, name: str) -> tuple[bytes, dict[str, int]]:
    source = resources.files("cloudvmi.arch.x86_64") / name
    (tmp_path / "b.S").write_bytes(source.read_bytes())
    subprocess.run(["as", "--64", "-o", str(tmp_path / "b.o"), str(tmp_path / "b.S")],
                   check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "b.o"),
                    str(tmp_path / "b.bin")], check=True)
    symbols = subprocess.run(["nm", str(tmp_path / "b.o")], capture_output=True, text=True,
                             check=True).stdout
    return (tmp_path / "b.bin").read_bytes(), {
        line.split()[2]: int(line.split()[0], 16) for line in symbols.splitlines()
        if len(line.split()) == 3}


@pytest.mark.skipif(shutil.which("as") is None, reason="binutils not installed")
def test_code_is_the_assembled_source(tmp_path):
    code, symbols = _assemble(tmp_path, "batch.S")
    assert code == x86_batch.CODE
    done = symbols["done"]
    assert done == x86_batch.DONE and x86_batch.CODE[done:done + 2] == b"\xeb\xfe"  # jmp done


@pytest.mark.skipif(shutil.which("as") is None, reason="binutils not installed")
def test_helper_is_the_assembled_source_and_matches_the_mailbox_layout(tmp_path):
    code, symbols = _assemble(tmp_path, "helper.S")
    assert code == x86_helper.CODE
    parked = symbols["parked"]
    assert parked == x86_helper.PARKED and code[parked:parked + 2] == b"\xeb\xfe"
    assert len(code) + persistent.CODE_OFFSET <= session.STUB_OFFSET
    for name in ("SEQ", "DONE", "FIRST", "HEARTBEAT", "COMMAND", "PID", "STATE", "LEASE",
                 "SPIN", "SIZE", "TICK", "MASK", "NAME", "CHILD", "ROOT"):
        assert symbols[name] == getattr(persistent, name), name  # .equ values are absolute


def test_table_encoding_with_result_references():
    b = batch.Batch(table=0x7F00_0000_0000)
    fd = b.add(257, -100, 0x1000, 0)
    b.add(0, b.result(fd), 0x2000, 64, stop_on_error=False)
    pid = b.add(57, parent_skips=2)
    raw = b.encode()
    assert len(raw) == 3 * batch.ENTRY.size
    first = batch.ENTRY.unpack_from(raw, 0)
    assert first[:4] == (257, (1 << 64) - 100, 0x1000, 0)
    assert first[7] == batch.STOP_ON_ERROR and first[8] == batch.NOT_RUN
    second = batch.ENTRY.unpack_from(raw, batch.ENTRY.size)
    assert second[1] == b.table + 64 and second[7] == 1  # arg 0 read from call 0's result
    third = batch.ENTRY.unpack_from(raw, 2 * batch.ENTRY.size)
    assert third[7] == batch.STOP_ON_ERROR | (2 << 16)
    done = bytearray(raw)
    struct.pack_into("<Q", done, 64, 3)
    assert b.decode_results(bytes(done))[:2] == [3, None]
    assert pid == 2


def test_errno_of_raw_results():
    assert errno_of((1 << 64) - 2) == 2
    assert errno_of(0x7FFF_0000_1000) is None  # an mmap address
    assert errno_of(0) is None
    with pytest.raises(ValueError):
        batch.Batch(0).add(0, 1, 2, 3, 4, 5, 6, 7)

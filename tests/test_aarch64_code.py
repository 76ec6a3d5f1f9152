"""arm64's batch interpreter and persistent helper: the committed bytes are the assembled
sources, and they run real system calls (qemu-user runs them as an arm64 process of this
host, so what they open, read and write are this host's files and processes)."""

import os
import shutil
import struct
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from cloudvmi.arch.aarch64 import ARCH
from cloudvmi.arch.aarch64 import batch as arm_batch
from cloudvmi.arch.aarch64 import helper as arm_helper
from cloudvmi.write import batch, persistent, session
from cloudvmi.write.errors import errno_of

CROSS = "aarch64-linux-gnu-"
QEMU = shutil.which("qemu-aarch64")
BASE = 0x10_0000_0000  # where the harness maps the code and table (any free address)
MAILBOX_BASE = 0x20_0000_0000
PAGE = 4096
B_SELF = b"\x00\x00\x00\x14"  # b . (the park)
RET = bytes.fromhex("c0035fd6")
abi = ARCH.syscall

needs_cross = pytest.mark.skipif(shutil.which(CROSS + "as") is None,
                                 reason="aarch64 binutils not installed")
needs_qemu = pytest.mark.skipif(QEMU is None or shutil.which(CROSS + "gcc") is None,
                                reason="qemu-user or the aarch64 cross compiler not installed")


def _assemble(tmp_path: Path, name: str) -> tuple[bytes, dict[str, int]]:
    source = resources.files("cloudvmi.arch.aarch64") / name
    (tmp_path / "b.S").write_bytes(source.read_bytes())
    subprocess.run([CROSS + "as", "-I", str(resources.files("cloudvmi.arch.aarch64")), "-o",
                    str(tmp_path / "b.o"), str(tmp_path / "b.S")], check=True)
    subprocess.run([CROSS + "objcopy", "-O", "binary", "-j", ".text", str(tmp_path / "b.o"),
                    str(tmp_path / "b.bin")], check=True)
    symbols = subprocess.run([CROSS + "nm", str(tmp_path / "b.o")], capture_output=True,
                             text=True, check=True).stdout
    return (tmp_path / "b.bin").read_bytes(), {
        line.split()[2]: int(line.split()[0], 16) for line in symbols.splitlines()
        if len(line.split()) == 3}


@needs_cross
def test_batch_code_is_the_assembled_source(tmp_path):
    code, symbols = _assemble(tmp_path, "batch.S")
    assert code == arm_batch.CODE == ARCH.batch_code
    assert symbols["done"] == arm_batch.DONE == ARCH.batch_done
    assert code[arm_batch.DONE:arm_batch.DONE + 4] == B_SELF
    assert len(code) <= persistent.CODE_OFFSET  # the helper's code follows it


@needs_cross
def test_helper_is_the_assembled_source_and_matches_the_mailbox_layout(tmp_path):
    code, symbols = _assemble(tmp_path, "helper.S")
    assert code == arm_helper.CODE == ARCH.helper_code
    assert symbols["parked"] == arm_helper.PARKED == ARCH.helper_parked
    assert code[arm_helper.PARKED:arm_helper.PARKED + 4] == B_SELF
    assert len(code) + persistent.CODE_OFFSET <= session.STUB_OFFSET
    for name in ("SEQ", "DONE", "FIRST", "HEARTBEAT", "COMMAND", "PID", "STATE", "LEASE",
                 "SPIN", "SIZE", "TICK", "MASK", "NAME", "CHILD", "ROOT"):
        assert symbols[name] == getattr(persistent, name), name


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("harness") / "harness"
    source = Path(__file__).with_name("aarch64_harness.c")
    subprocess.run([CROSS + "gcc", "-static", "-O1", "-o", str(out), str(source)], check=True)
    return out


def _run(harness: Path, *args: str) -> dict[str, int]:
    done = subprocess.run([QEMU, str(harness), *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return {k: int(v) for k, v in (w.split("=") for w in done.stdout.split())}


def _data(blob: bytearray, start: int, base: int):
    """put(bytes) -> their address where BLOB is mapped at BASE, placed from START on."""
    cursor = [start]

    def put(payload: bytes) -> int:
        at = cursor[0]
        blob[at:at + len(payload)] = payload
        cursor[0] = (at + len(payload) + 15) // 16 * 16
        return base + at

    return put


def _file_calls(b: batch.Batch, put, tmp_path: Path) -> dict[str, int]:
    """openat/read/close of one file, openat(O_CREAT)/write/close of another, an openat that
    fails without stopping: the recipes' shapes. Indices and buffers by name."""
    source = tmp_path / "source.txt"
    source.write_bytes(b"read through arm64 system calls\n")
    src, dst = put(str(source).encode() + b"\0"), put(str(tmp_path / "out.txt").encode() + b"\0")
    buf, text = put(bytes(64)), put(b"written by the batch\n")
    fd = b.add(abi.nr("openat"), abi.AT_FDCWD, src, abi.O_RDONLY)
    n = b.add(abi.nr("read"), b.result(fd), buf, 64)
    b.add(abi.nr("close"), b.result(fd))
    out = b.add(abi.nr("openat"), abi.AT_FDCWD, dst, abi.O_WRONLY | abi.O_CREAT | abi.O_TRUNC,
                0o600)
    wrote = b.add(abi.nr("write"), b.result(out), text, 21)
    b.add(abi.nr("close"), b.result(out))
    missing = b.add(abi.nr("openat"), abi.AT_FDCWD, put(b"/nonexistent/x\0"), abi.O_RDONLY,
                    stop_on_error=False)
    return {"read": n, "buf": buf, "wrote": wrote, "missing": missing}


def _check_file_calls(results, at, raw: bytes, base: int, tmp_path: Path) -> None:
    assert results[at["read"]] == 32
    offset = at["buf"] - base
    assert raw[offset:offset + 32] == b"read through arm64 system calls\n"
    assert results[at["wrote"]] == 21
    assert (tmp_path / "out.txt").read_bytes() == b"written by the batch\n"
    assert errno_of(results[at["missing"]]) == 2  # ENOENT, and the batch went on


@needs_qemu
def test_batch_interpreter_runs_real_system_calls(harness, tmp_path):
    """getpid, file reads and writes with results fed to later calls, a fork whose child
    runs the skipped entry (exit_group(7)) while the parent reaps it, and a failing call
    that stops the batch: the calls after it never run."""
    blob = bytearray(PAGE + session.TABLE_PAGES * PAGE + PAGE)
    code = arm_batch.CODE
    # The park (`b .`) becomes `ret` so the harness gets control back; nothing else changes.
    blob[:len(code)] = code[:arm_batch.DONE] + RET + code[arm_batch.DONE + 4:]
    data = PAGE + session.TABLE_PAGES * PAGE
    put = _data(blob, data, BASE)
    b = batch.Batch(BASE + PAGE)
    pid = b.add(abi.nr("getpid"))
    at = _file_calls(b, put, tmp_path)
    status = put(bytes(8))
    child = b.add(abi.nr("clone"), 17, 0, 0, 0, 0, parent_skips=1)  # SIGCHLD: a fork
    b.add(abi.nr("exit_group"), 7)
    reaped = b.add(abi.nr("wait4"), b.result(child), status, 0, 0)
    b.add(abi.nr("openat"), abi.AT_FDCWD, put(b"/nonexistent/y\0"), abi.O_RDONLY)
    after = b.add(abi.nr("getpid"))
    table = b.encode()
    blob[PAGE:PAGE + len(table)] = table
    struct.pack_into("<QQ", blob, 0x800, b.table, b.end)
    (tmp_path / "in").write_bytes(blob)
    ids = _run(harness, "batch", hex(BASE), str(tmp_path / "in"), str(tmp_path / "out"))
    raw = (tmp_path / "out").read_bytes()
    results = b.decode_results(raw[PAGE:PAGE + len(table)])
    assert results[pid] == ids["pid"]
    _check_file_calls(results, at, raw, BASE, tmp_path)
    assert results[child] > 0 and results[reaped] == results[child]
    assert os.WEXITSTATUS(struct.unpack_from("<I", raw, status - BASE)[0]) == 7
    assert errno_of(results[after - 1]) == 2 and results[after] is None


@needs_qemu
def test_helper_forks_serves_a_list_and_quits(harness, tmp_path):
    """The helper comes up as its own process (a grandchild the parked thread's child left
    behind, named by prctl), runs the list the host posts, and exits when asked."""
    size = PAGE + session.TABLE_PAGES * PAGE + PAGE
    mailbox = bytearray(size)
    put = _data(mailbox, size - PAGE, MAILBOX_BASE)
    b = batch.Batch(MAILBOX_BASE + PAGE)
    pid = b.add(abi.nr("getpid"))
    name = put(bytes(16))
    b.add(abi.nr("prctl"), 16, name)  # PR_GET_NAME
    at = _file_calls(b, put, tmp_path)
    table = b.encode()
    mailbox[PAGE:PAGE + len(table)] = table
    fields = {persistent.FIRST: b.table, persistent.FIRST + 8: b.end, persistent.LEASE: 20000,
              persistent.SPIN: 100, persistent.SIZE: size, persistent.TICK + 8: 1_000_000,
              persistent.MASK: (1 << 64) - 1}
    for offset, value in fields.items():
        struct.pack_into("<Q", mailbox, offset, value)
    mailbox[:8] = persistent.MAGIC
    mailbox[persistent.NAME:persistent.NAME + 16] = persistent.COMM.ljust(16, b"\0")
    mailbox[persistent.ROOT:persistent.ROOT + 2] = b"/\0"
    (tmp_path / "code").write_bytes(arm_helper.CODE)
    (tmp_path / "mailbox").write_bytes(mailbox)
    ids = _run(harness, "helper", hex(BASE), str(tmp_path / "code"), hex(MAILBOX_BASE),
               str(tmp_path / "mailbox"), str(tmp_path / "out"))
    raw = (tmp_path / "out").read_bytes()
    word = lambda offset: struct.unpack_from("<Q", raw, offset)[0]  # noqa: E731
    assert word(persistent.STATE) == persistent.GONE and word(persistent.DONE) == 1
    helper = word(persistent.PID)
    assert helper not in (0, ids["pid"], ids["parked"], word(persistent.CHILD))
    reaped = word(0x90)  # REAPED: the parked side reaped its child
    assert word(persistent.CHILD) > 0 and reaped == word(persistent.CHILD)
    results = b.decode_results(raw[PAGE:PAGE + len(table)])
    assert results[pid] == helper
    assert raw[name - MAILBOX_BASE:name - MAILBOX_BASE + 16].rstrip(b"\0") == persistent.COMM
    _check_file_calls(results, at, raw, MAILBOX_BASE, tmp_path)


def test_resume_stub_restores_x0_and_branches_to_the_saved_pc():
    import capstone

    saved = {"x0": 0xFFFF_FFFF_FFFF_FFFC, "pc": 0xAAAA_0040_1230}
    address = saved["pc"] - (64 << 20)
    code, entry = arm_batch.resume_stub(saved, address)
    md = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    ins = [(i.address, i.mnemonic, i.op_str) for i in md.disasm(code[:12], address)]
    assert ins[0][1] == "nop" and entry == 4  # a restarted call, rewound by 4, lands here
    assert ins[1][1:] == ("ldr", f"x0, #{address + 16:#x}")
    assert ins[2][1:] == ("b", f"#{saved['pc']:#x}")
    assert int.from_bytes(code[16:24], "little") == saved["x0"]
    assert arm_batch.resume_stub(saved, saved["pc"] + (128 << 20)) is None  # out of reach


QEMU_SYSTEM = shutil.which("qemu-system-aarch64")


@pytest.mark.skipif(QEMU_SYSTEM is None, reason="qemu-system-arm not installed")
def test_qemu_describes_every_register_the_injection_uses(tmp_path):
    """QEMU's own target description (a QEMU started stopped, with no guest: nothing runs):
    x0-x30, sp, pc, cpsr in the `g` packet, the system registers by `p` (read only: QEMU
    7.2 ignores writes to them, and the injection never writes them)."""
    from cloudvmi.control.gdbstub import GDBStub

    sock, pidfile = tmp_path / "gdb.sock", tmp_path / "qemu.pid"
    subprocess.run([QEMU_SYSTEM, "-S", "-M", "virt,gic-version=3", "-accel", "tcg",
                    "-cpu", "max,pauth-impdef=on", "-m", "64", "-nodefaults", "-display",
                    "none", "-gdb", f"unix:{sock},server=on,wait=off", "-daemonize",
                    "-pidfile", str(pidfile)], check=True, timeout=30)
    pid = int(pidfile.read_text())
    try:
        with GDBStub.connect(str(sock)) as gdb:
            regs = gdb.read_registers()  # the `g` packet
            assert set(ARCH.saved_registers) <= set(regs) and ARCH.pc in regs
            assert set(ARCH.pt_regs) == set(ARCH.saved_registers)
            assert not ARCH.user_mode(regs)  # reset: EL1h (cpsr 0x3c5)
            for name in ARCH.system_registers:
                assert name not in regs
                gdb.read_register(name)  # `p` knows it
    finally:
        os.kill(pid, 15)


@needs_qemu
def test_arm64_stat_and_open_flags_reach_programs_as_x86_64s(harness, tmp_path):
    """What the syscall channel gives redirected (x86-64) programs from an arm64 guest: its
    struct stat in x86-64's layout, field for field as the kernel's own stat says, and
    x86-64's O_DIRECTORY doing what it means (qemu-user's arm64 process: real calls)."""
    from cloudvmi.arch.x86_64.abi import ABI as X86
    from cloudvmi.write import hostabi

    target = tmp_path / "file"
    target.write_bytes(b"x" * 12345)
    target.chmod(0o640)
    blob = bytearray(PAGE + session.TABLE_PAGES * PAGE + PAGE)
    blob[:len(arm_batch.CODE)] = (arm_batch.CODE[:arm_batch.DONE] + RET
                                  + arm_batch.CODE[arm_batch.DONE + 4:])
    put = _data(blob, PAGE + session.TABLE_PAGES * PAGE, BASE)
    b = batch.Batch(BASE + PAGE)
    path, buf = put(str(target).encode() + b"\0"), put(bytes(X86.stat_size))
    st = b.add(abi.nr("newfstatat"), abi.AT_FDCWD, path, buf, abi.AT_SYMLINK_NOFOLLOW)
    directory = hostabi.open_flags(abi, X86.O_RDONLY | X86.O_DIRECTORY)
    on_dir = b.add(abi.nr("openat"), abi.AT_FDCWD, put(str(tmp_path).encode() + b"\0"),
                   directory, stop_on_error=False)
    on_file = b.add(abi.nr("openat"), abi.AT_FDCWD, path, directory, stop_on_error=False)
    table = b.encode()
    blob[PAGE:PAGE + len(table)] = table
    struct.pack_into("<QQ", blob, 0x800, b.table, b.end)
    (tmp_path / "in").write_bytes(blob)
    _run(harness, "batch", hex(BASE), str(tmp_path / "in"), str(tmp_path / "out"))
    raw = (tmp_path / "out").read_bytes()
    results = b.decode_results(raw[PAGE:PAGE + len(table)])
    assert results[st] == 0
    mine = X86.parse_stat(hostabi.host_stat(abi, raw[buf - BASE:buf - BASE + X86.stat_size]))
    theirs = os.lstat(target)
    assert (mine["ino"], mine["mode"], mine["nlink"], mine["uid"], mine["gid"], mine["size"]) \
        == (theirs.st_ino, theirs.st_mode, theirs.st_nlink, theirs.st_uid, theirs.st_gid,
            12345)
    assert abs(mine["mtime"] - theirs.st_mtime) < 1e-6
    assert errno_of(results[on_dir]) is None and errno_of(results[on_file]) == 20  # ENOTDIR
    assert hostabi.open_flags(X86, 0o200000) == 0o200000 == X86.O_DIRECTORY
    assert hostabi.number(abi, "utimes") == hostabi.ABSENT  # arm64 has none: ENOSYS

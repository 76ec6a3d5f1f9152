"""The gdbstub client: framing against a fake stub in-process, then a real QEMU guest."""

import os
import re
import socket
import stat
import statistics
import subprocess
import sys
import threading
import time
import uuid

import pytest

from cloudvmi.control.gdbserver import (
    GDBStubBusy,
    ensure_gdbstub,
    find_gdbstub,
    gdbstub_chardev,
    start_gdbstub,
    stop_gdbstub,
)
from cloudvmi.control.gdbstub import (
    GDBMemoryError,
    GDBStub,
    GDBStubError,
    GDBStubTimeout,
    checksum,
    escape,
    fallback_registers,
    frame,
    parse_stop,
    parse_target_xml,
    rle_decode,
    unescape,
)
from cloudvmi.control.qmp import QMP
from cloudvmi.lab import guest as lab
from cloudvmi.vm import attach

# -- framing --------------------------------------------------------------------------------


def rle_encode(text: bytes) -> bytes:
    """GDB's run-length encoding, avoiding counts that would make `#`, `$`, `+` or `-`."""
    out = bytearray()
    i = 0
    while i < len(text):
        run = 1
        while i + run < len(text) and text[i + run] == text[i] and run < 97:
            run += 1
        extra = run - 1
        while extra + 29 in b"#$+-" and extra > 0:
            extra -= 1
        out.append(text[i])
        if extra >= 3:
            out += b"*" + bytes((extra + 29,))
            i += extra + 1
        else:
            i += 1
    return bytes(out)


def test_checksum_and_frame():
    assert checksum(b"g") == 0x67
    assert frame(b"g") == b"$g#67"
    assert frame(b"") == b"$#00"
    assert frame(b"qSupported") == b"$qSupported#37"


def test_escape_round_trip():
    assert escape(b"}#$*a") == b"}]}\x03}\x04}\x0aa"
    every = bytes(range(256)) * 2
    escaped = escape(every)
    assert not set(escaped) & set(b"#$*") and unescape(escaped) == every
    with pytest.raises(GDBStubError):
        unescape(b"ab}")


def test_rle_decode():
    assert rle_decode(b"0* ") == b"0000"
    assert rle_decode(b"a*\"b") == b"a" * 6 + b"b"
    for sample in (b"0" * 200, b"00ff" + b"0" * 50 + b"12" * 9 + b"f" * 7, b"abc"):
        assert rle_decode(rle_encode(sample)) == sample
    with pytest.raises(GDBStubError):
        rle_decode(b"*5")


def test_parse_stop():
    stop = parse_stop("T05thread:p01.02;watch:ffff8880001000;")
    assert (stop.signal, stop.thread, stop.watch_address) == (5, "p01.02", 0xFFFF8880001000)
    assert parse_stop("S02").signal == 2 and parse_stop("S02").thread is None
    assert parse_stop("OK") is None and parse_stop("E14") is None and parse_stop("") is None


TARGET = ('<?xml version="1.0"?><target><architecture>i386:x86-64</architecture>'
          '<xi:include href="core.xml"/></target>')
CORE = ('<feature name="core"><reg name="rax" bitsize="64" regnum="0"/>'
        '<!--reg name="hidden" bitsize="64"/--><reg name="rip" bitsize="64"/>'
        '<reg name="eflags" bitsize="32" type="i386_eflags"/>\n<reg name="cr3" bitsize="64"/>'
        '<reg name="x$#}*" bitsize="16"/></feature>')


def test_parse_target_xml_follows_includes_and_skips_comments():
    regs = parse_target_xml({"target.xml": TARGET, "core.xml": CORE}.__getitem__)
    assert [(r.name, r.bitsize, r.regnum, r.offset) for r in regs] == [
        ("rax", 64, 0, 0), ("rip", 64, 1, 8), ("eflags", 32, 2, 16), ("cr3", 64, 3, 20),
        ("x$#}*", 16, 4, 28)]
    fallback = {r.name: r for r in fallback_registers()}
    assert (fallback["rip"].offset, fallback["eflags"].offset, fallback["fs_base"].offset,
            fallback["cr3"].offset, fallback["efer"].offset, fallback["st0"].offset,
            fallback["xmm0"].offset, fallback["mxcsr"].offset) == (
        128, 136, 164, 204, 228, 236, 348, 604)


class FakeStub(threading.Thread):
    """A gdbstub in a thread that behaves like QEMU 7.2's where it matters: acks, multiprocess
    ids, no no-ack mode, and any byte received while running stops the VM and is lost."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.packets: list[bytes] = []
        self.running = False
        self.memory = bytearray(bytes(range(256)) * 40)
        self.regs = [0x1111, 0xFFFFFFFF81000000, 0x246, 0, 0x1234]
        self.nack_next = 0
        self.corrupt_next = 0
        self.threads_seen: list[str] = []
        self.breakpoints: set[bytes] = set()
        self.conn: socket.socket | None = None
        self.send_lock = threading.Lock()
        self.last = b""
        self.start()

    def run(self) -> None:
        conn, _ = self.srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = conn
        self.send(b"T02thread:p01.01;")
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            buf = self.consume(buf)

    def send(self, body: bytes) -> None:
        good = frame(body)
        with self.send_lock:
            self.last = good
            if self.corrupt_next:
                self.corrupt_next -= 1
                self.conn.sendall(good[:-2] + b"%02x" % ((checksum(body) + 1) & 0xFF))
            else:
                self.conn.sendall(good)

    def stop(self, reply: bytes = b"T05thread:p01.01;") -> None:
        self.running = False
        self.send(reply)

    def consume(self, buf: bytes) -> bytes:
        while buf:
            if self.last:  # QEMU waits for the ack of its last packet before all else
                if buf[:1] == b"-":
                    with self.send_lock:
                        self.conn.sendall(self.last)
                elif buf[:1] in b"+$":
                    self.last = b""
                if buf[:1] != b"$":
                    buf = buf[1:]
                    continue
            if self.running:  # QEMU: any other byte stops the VM and is thrown away
                buf = buf[1:]
                self.stop(b"T02thread:p01.01;")
                continue
            if buf[:1] != b"$":
                buf = buf[1:]
                continue
            end = buf.find(b"#")
            if end < 0 or len(buf) < end + 3:
                return buf
            body, sent, buf = buf[1:end], buf[end + 1:end + 3], buf[end + 3:]
            if int(sent, 16) != checksum(body) or self.nack_next:
                self.nack_next = max(0, self.nack_next - 1)
                self.conn.sendall(b"-")
                continue
            self.conn.sendall(b"+")
            self.packets.append(body)
            reply = self.handle(body)
            if reply is not None:
                self.send(reply)
        return buf

    def g_bytes(self) -> bytes:
        sizes = (8, 8, 4, 8, 2)
        return b"".join(v.to_bytes(n, "little") for v, n in zip(self.regs, sizes, strict=True))

    def handle(self, p: bytes) -> bytes | None:
        text = p.decode("latin-1")
        if text.startswith("qSupported"):
            return b"PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+"
        if text.startswith("qXfer:features:read:"):
            annex, span = text[len("qXfer:features:read:"):].rsplit(":", 1)
            off, length = (int(x, 16) for x in span.split(","))
            doc = {"target.xml": TARGET, "core.xml": CORE}[annex].encode()
            part = doc[off:off + min(length, 37)]
            return (b"l" if off + len(part) >= len(doc) else b"m") + escape(part)
        if text == "?":
            return b"T05thread:p01.01;"
        if text == "g":
            return rle_encode(self.g_bytes().hex().encode())
        if text.startswith("G"):
            data = bytes.fromhex(text[1:])
            offs = ((0, 8), (8, 8), (16, 4), (20, 8), (28, 2))
            self.regs = [int.from_bytes(data[o:o + n], "little") for o, n in offs]
            return b"OK"
        if text.startswith("p"):
            n = int(text[1:], 16)
            return self.g_bytes()[[0, 8, 16, 20, 28][n]:][:[8, 8, 4, 8, 2][n]].hex().encode()
        if text.startswith("P"):
            n, value = text[1:].split("=")
            self.regs[int(n, 16)] = int.from_bytes(bytes.fromhex(value), "little")
            return b"OK"
        if text.startswith("m"):
            addr, size = (int(x, 16) for x in text[1:].split(","))
            if size > 2048 or addr + size > len(self.memory):
                return b"E14"
            return rle_encode(self.memory[addr:addr + size].hex().encode())
        if text.startswith("M"):
            head, data = text[1:].split(":")
            addr, size = (int(x, 16) for x in head.split(","))
            if len(p) > 4096 or addr + size > len(self.memory):
                return b"E22"
            self.memory[addr:addr + size] = bytes.fromhex(data)
            return b"OK"
        if text == "qfThreadInfo":
            return b"mp01.01,p01.02"
        if text == "qsThreadInfo":
            return b"l"
        if text.startswith("H"):
            self.threads_seen.append(text)
            return b"OK"
        if text.startswith(("Z1", "z1", "Z2", "z2")):
            (self.breakpoints.add if text[0] == "Z" else self.breakpoints.discard)(p[1:])
            return b"OK"
        if text == "c":
            self.running = True
            return None
        if text == "s":
            self.regs[1] += 3
            self.send(b"T05thread:p01.01;")
            return None
        if text.startswith("Qqemu.PhyMemMode:") or text.startswith("Qqemu.sstep="):
            return b"OK"
        if text == "qqemu.sstep":
            return b"0x7"
        if text == "D":
            return b"E22"  # multiprocess needs D;pid
        if text == "D;1":
            self.running = True
            return b"OK"
        return b""

    def close(self) -> None:
        with self.send_lock:
            if self.conn:
                self.conn.close()
        self.srv.close()


@pytest.fixture
def fake():
    stub = FakeStub()
    yield stub
    stub.close()


def test_fake_connect_registers_memory(fake):
    gdb = GDBStub.connect("127.0.0.1", fake.port, timeout=2)
    try:
        assert gdb.registers_from_xml and gdb.multiprocess
        assert [r.name for r in gdb.register_list] == ["rax", "rip", "eflags", "cr3", "x$#}*"]
        assert gdb.read_registers() == {"rax": 0x1111, "rip": 0xFFFFFFFF81000000,
                                        "eflags": 0x246, "cr3": 0, "x$#}*": 0x1234}
        assert gdb.read_register("RIP") == 0xFFFFFFFF81000000
        gdb.write_register("cr3", 0x2C00000)
        gdb.write_registers({"rax": -1, "eflags": 0x202})
        assert gdb.read_registers()["rax"] == 0xFFFFFFFFFFFFFFFF
        assert fake.regs[:4] == [0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF81000000, 0x202, 0x2C00000]
        with pytest.raises(GDBStubError):
            gdb.write_register("eflags", 1 << 40)
        with pytest.raises(GDBStubError):
            gdb.read_register("nosuch")
        assert gdb.read_memory(5, 5000) == bytes(fake.memory[5:5005])
        sizes = [int(p.split(b",")[1], 16) for p in fake.packets if p.startswith(b"m")]
        assert sizes == [2047, 2047, 906]
        gdb.write_memory(100, b"\xaa" * 3000)
        assert fake.memory[100:3100] == b"\xaa" * 3000 and fake.memory[3100] == 3100 % 256
        with pytest.raises(GDBMemoryError):
            gdb.read_memory(len(fake.memory) - 4, 8)
        assert gdb.threads() == ["p01.01", "p01.02"]
        gdb.select("p01.02")
        assert fake.threads_seen[-2:] == ["Hgp01.02", "Hcp01.02"]
        assert gdb.singlestep_flags == 7
    finally:
        gdb.close()
    assert fake.packets[-1] == b"D;1"


def test_fake_retransmit_and_bad_checksum(fake):
    with GDBStub.connect("127.0.0.1", fake.port, timeout=2) as gdb:
        fake.nack_next = 2  # the stub says '-' twice: we send again
        assert gdb.read_register("rax") == 0x1111
        assert fake.packets.count(b"p0") == 1
        fake.corrupt_next = 1  # its reply is damaged: we answer '-' and it resends
        assert gdb.read_register("rip") == 0xFFFFFFFF81000000


def test_fake_execution_and_breakpoints(fake):
    with GDBStub.connect("127.0.0.1", fake.port, timeout=2) as gdb:
        gdb.add_breakpoint(0xFFFFFFFF81000010)
        assert b"1,ffffffff81000010,1" in fake.breakpoints
        gdb.add_watchpoint(0x1000, 8, "write")
        assert b"2,1000,8" in fake.breakpoints
        with pytest.raises(GDBStubError, match="not supported"):
            gdb.add_breakpoint(0x10, hardware=False)
        with pytest.raises(GDBStubError):
            gdb.add_watchpoint(0x10, 4, "sideways")
        stop = gdb.step()
        assert stop.signal == 5 and gdb.read_register("rip") == 0xFFFFFFFF81000003
        gdb.cont()
        assert gdb.running
        with pytest.raises(GDBStubError, match="running"):
            gdb.read_registers()
        t0 = time.monotonic()
        with pytest.raises(GDBStubTimeout):
            gdb.wait_stop(0.2)
        assert time.monotonic() - t0 >= 0.15  # it waited (how much longer depends on load)
        threading.Timer(0.05, fake.stop, args=(b"T05thread:p01.02;watch:1000;",)).start()
        stop = gdb.wait_stop(2)
        assert (stop.thread, stop.watch_address, gdb.thread) == ("p01.02", 0x1000, "p01.02")
        gdb.remove_watchpoint(0x1000, 8)
        gdb.cont()
        stop = gdb.interrupt(2)
        assert stop.signal == 2 and not gdb.running
    assert fake.packets[-1] == b"D;1" and fake.running
    assert b"1,ffffffff81000010,1" not in fake.breakpoints  # removed on close


def test_fake_packet_eaten_while_running(fake):
    """Someone else resumed the VM (QMP cont): our `$` is eaten; we resend and see the stop."""
    with GDBStub.connect("127.0.0.1", fake.port, timeout=2) as gdb:
        fake.running = True
        assert gdb.read_register("rax") == 0x1111
        assert gdb.last_stop.signal == 2


def test_fake_close_after_broken_socket(fake):
    """A broken connection still ends with the VM running: close() reconnects to detach."""
    gdb = GDBStub.connect("127.0.0.1", fake.port, timeout=2)
    gdb._sock.shutdown(socket.SHUT_RDWR)
    with pytest.raises(GDBStubError):
        gdb.read_registers()
    second = FakeStub()  # a fake serves one connection: the "reconnect" goes to another
    gdb.port = second.port
    try:
        gdb.close()
        deadline = time.monotonic() + 2
        while b"D;1" not in second.packets and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"D;1" in second.packets and second.running
    finally:
        second.close()
    with pytest.raises(GDBStubError):
        gdb.read_registers()


def test_connect_refused_is_clear():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GDBStubError, match="cannot reach"):
        GDBStub.connect("127.0.0.1", port, timeout=1)


# -- a real guest ---------------------------------------------------------------------------

TIMES: dict[str, str] = {}


@pytest.fixture(scope="module")
def guest():
    g = lab.up(f"gd{uuid.uuid4().hex[:6]}", kernel="6.1")
    try:
        vm = attach(g.name)  # holds the only QMP connection until closed
        try:
            kernel = vm.linux.kernel
            syms = {name: kernel.symbols.lookup(name)
                    for name in ("linux_banner", "do_syscall_64", "jiffies")}
            syms["linux_banner_phys"] = kernel.image_phys(syms["linux_banner"])
        finally:
            vm.close()
        yield g, syms
    finally:
        lab.down(g.name)
        if TIMES:
            print("\ngdbstub timings: " + "; ".join(f"{k} {v}" for k, v in TIMES.items()))


def _us(samples: list[float]) -> str:
    return (f"median {statistics.median(samples) * 1e6:.0f} us "
            f"(min {min(samples) * 1e6:.0f}, max {max(samples) * 1e6:.0f}, n={len(samples)})")


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _qmp_cr3(g) -> int:
    with QMP(str(g.qmp_path)) as qmp:
        assert not qmp.execute("query-status")["running"]  # the stub holds it
        text = qmp.hmp("info registers")
    return int(re.search(r"CR3=([0-9a-fA-F]+)", text).group(1), 16)


def _status(g) -> str:
    with QMP(str(g.qmp_path)) as qmp:
        return qmp.execute("query-status")["status"]


def test_guest_registers_match_qmp(guest):
    g, _ = guest
    t0 = time.perf_counter()
    with GDBStub.connect(g.gdb_socket) as gdb:
        TIMES["connect"] = f"{(time.perf_counter() - t0) * 1e3:.1f} ms"
        assert gdb.registers_from_xml
        regs = gdb.read_registers()
        for name in ("rip", "rsp", "rax", "r15", "eflags", "cs", "ss", "fs_base", "gs_base",
                     "k_gs_base", "cr0", "cr2", "cr3", "cr4", "efer"):
            assert name in regs, name
        assert regs["cr0"] & 0x80000001 == 0x80000001  # paging, protected mode
        assert regs["efer"] & 0x500 == 0x500  # long mode enabled and active
        assert regs["cs"] & 3 in (0, 3)
        assert regs["cr3"] == gdb.read_register("cr3") == _qmp_cr3(g)
        assert regs["rip"] == gdb.read_register("rip")
        assert gdb.threads() == [gdb.thread]
        TIMES["g"] = _us(_timed(gdb.read_registers, 50))
        TIMES["p rip"] = _us(_timed(lambda: gdb.read_register("rip"), 50))


def test_guest_register_write_round_trip(guest):
    g, _ = guest
    with GDBStub.connect(g.gdb_socket) as gdb:
        before = gdb.read_registers()
        try:
            gdb.write_register("r11", 0x1122334455667788)
            assert gdb.read_register("r11") == 0x1122334455667788
            gdb.write_registers({"rax": 0xDEADBEEF, "r10": 0xCAFE})
            after = gdb.read_registers()
            assert (after["rax"], after["r10"], after["r11"]) == (0xDEADBEEF, 0xCAFE,
                                                                  0x1122334455667788)
        finally:
            gdb.write_registers({k: before[k] for k in ("rax", "r10", "r11")})
        assert gdb.read_registers() == before


def test_guest_kernel_memory(guest):
    g, syms = guest
    with GDBStub.connect(g.gdb_socket) as gdb:
        assert gdb.read_memory(syms["linux_banner"], 13) == b"Linux version"
        banner = gdb.read_memory(syms["linux_banner"], 4096)
        assert banner.startswith(b"Linux version 6.1")
        gdb.physical_mode(True)
        try:
            assert gdb.read_memory(syms["linux_banner_phys"], 13) == b"Linux version"
        finally:
            gdb.physical_mode(False)
        assert gdb.read_memory(syms["linux_banner"], 13) == b"Linux version"
        TIMES["m 8 bytes"] = _us(_timed(lambda: gdb.read_memory(syms["linux_banner"], 8), 50))
        t0 = time.perf_counter()
        gdb.read_memory(syms["linux_banner"], 64 << 10)
        TIMES["m bulk"] = f"{64 / 1024 / (time.perf_counter() - t0):.1f} MB/s"
        with pytest.raises(GDBMemoryError):
            gdb.read_memory(0x10, 8)  # nothing is mapped at virtual page 0


def _syscalls_in_background(g) -> threading.Thread:
    """Console commands make syscalls; they block while the VM is stopped, so run them aside."""
    thread = threading.Thread(target=lambda: g.console.run("echo hi; cat /proc/version",
                                                           timeout=30), daemon=True)
    thread.start()
    return thread


def test_guest_hardware_breakpoint_and_step(guest):
    g, syms = guest
    target = syms["do_syscall_64"]
    with GDBStub.connect(g.gdb_socket) as gdb:
        gdb.add_breakpoint(target, hardware=True)
        worker = _syscalls_in_background(g)
        hits = []
        for _ in range(5):
            t0 = time.perf_counter()
            gdb.cont()
            stop = gdb.wait_stop(timeout=15)
            hits.append(time.perf_counter() - t0)
            assert stop.signal == 5
            assert gdb.read_register("rip") == target
        TIMES["continue->breakpoint"] = _us(hits)
        gdb.remove_breakpoint(target)
        rips = [gdb.read_register("rip")]
        for _ in range(3):
            stop = gdb.step(timeout=5)
            assert stop.signal == 5
            rips.append(gdb.read_register("rip"))
        assert len(set(rips)) == 4, [hex(r) for r in rips]
        assert rips[1] != target and all(r >> 63 for r in rips)  # still in kernel text
        gdb.cont()
        worker.join(30)
        assert not worker.is_alive()


def test_guest_watchpoint(guest):
    g, syms = guest
    with GDBStub.connect(g.gdb_socket) as gdb:
        gdb.add_watchpoint(syms["jiffies"], 8, "write")  # the timer tick writes it
        gdb.cont()
        stop = gdb.wait_stop(timeout=10)
        assert stop.watch_address == syms["jiffies"]
        assert gdb.read_register("rip") >> 63  # kernel code did the write
        gdb.remove_watchpoint(syms["jiffies"], 8, "write")


def test_guest_interrupt_and_continue(guest):
    g, _ = guest
    with GDBStub.connect(g.gdb_socket) as gdb:
        waits = []
        for _ in range(10):
            gdb.cont()
            time.sleep(0.02)
            assert _status(g) == "running"
            t0 = time.perf_counter()
            stop = gdb.interrupt(timeout=5)
            waits.append(time.perf_counter() - t0)
            assert stop.signal == 2 and not gdb.running
        TIMES["interrupt->stop"] = _us(waits)
        gdb.cont()
        with pytest.raises(GDBStubTimeout):
            gdb.wait_stop(0.3)
        assert _status(g) == "running"
    assert _status(g) == "running"
    assert g.console.check("echo ok").strip() == "ok"


def test_guest_close_after_error_leaves_it_running(guest):
    g, syms = guest
    gdb = GDBStub.connect(g.gdb_socket)
    gdb.add_breakpoint(syms["do_syscall_64"])
    gdb._sock.shutdown(socket.SHUT_RDWR)  # the connection breaks under us
    with pytest.raises(GDBStubError):
        gdb.read_registers()
    gdb.close()  # reconnects once to detach: resumes and drops the breakpoint
    assert _status(g) == "running"
    assert g.console.check("echo ok", timeout=20).strip() == "ok"


def test_guest_ensure_gdbstub(guest):
    """A stub is found, refused while busy, started on a private unix socket when the VM has
    none (no other user can connect to it), and removed again by whoever started it."""
    g, _ = guest
    qmp = QMP(str(g.qmp_path))
    try:
        assert find_gdbstub(qmp) == g.gdb_socket
        assert ensure_gdbstub(qmp, qmp.key) == (g.gdb_socket, False)
        with GDBStub.connect(g.gdb_socket):
            with pytest.raises(GDBStubBusy):
                ensure_gdbstub(qmp, qmp.key)
            t0 = time.perf_counter()
            with pytest.raises(GDBStubBusy):  # refused before connecting: see _unix_busy
                GDBStub.connect(g.gdb_socket)
            assert time.perf_counter() - t0 < 1.5  # after a second for a leaving client
        qmp.hmp("gdbserver none")  # as if QEMU had been started without -gdb
        assert find_gdbstub(qmp) is None
        path, started = ensure_gdbstub(qmp, qmp.key)
        assert started and path != g.gdb_socket
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        with GDBStub.connect(path) as gdb:
            assert gdb.read_register("rip")
            assert not qmp.execute("query-status")["running"]
        assert qmp.execute("query-status")["running"]
        other_user = subprocess.run(  # nobody else may reach it
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})"],
            capture_output=True, text=True)
        assert other_user.returncode != 0 and "PermissionError" in other_user.stderr
        with pytest.raises(GDBStubError, match="already has"):
            start_gdbstub(qmp)
        stop_gdbstub(qmp, path)
        assert gdbstub_chardev(qmp) is None and not os.path.exists(path)
    finally:
        start_gdbstub(qmp, path=g.gdb_socket, replace=True)  # back where the lab says it is
        qmp.close()
    assert g.console.check("echo ok").strip() == "ok"

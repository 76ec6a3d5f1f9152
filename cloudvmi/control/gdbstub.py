"""A small client of GDB's remote serial protocol, for QEMU's gdbstub.

Hand-written because no library speaks the protocol synchronously and knows QEMU's quirks
(measured on QEMU 7.2, see FIELD-NOTES "gdbstub"):

- QEMU stops the VM when a client connects and, if it was running, sends a stop reply nobody
  asked for; it has no no-ack mode; `P` answers empty until `target.xml` has been read.
- While the VM runs, *any* byte QEMU receives stops it and is then thrown away: a packet sent
  then is lost (its `$` was eaten) and a stop reply comes back instead. So commands are only
  sent while the VM is stopped, and a packet answered by a stop reply is sent again.
- Closing the socket without `D` leaves the VM paused with breakpoints inserted, and
  `Qqemu.PhyMemMode` outlives the connection: close() detaches, resets, and if the socket
  broke, reconnects once just to detach.
- Multiprocess thread ids (`p1.1`) stay on for the rest of QEMU's life once any client asked
  for them, so we always ask for them: thread ids are then the same whoever came before.
"""

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from cloudvmi.errors import CloudVMIError, GuestMemoryError

MAX_MEMORY_CHUNK = 2047  # bytes per `m` packet: QEMU's buffer holds 4096 hex digits
ACK_TIMEOUT = 1.0  # a stopped QEMU acks at once; no ack means our packet was lost
STOP_ACK_GRACE = 0.2  # after a stop reply instead of an ack: was our `$` eaten?
MAX_RETRIES = 4
MAX_ANNEX = 1 << 20  # a target description is a few KiB; the stub is not trusted
SIGTRAP = 5
SIGINT = 2

# x86-64 layout of QEMU's `g` packet (FIELD-NOTES), used when target.xml cannot be parsed.
_FALLBACK_X86_64 = (
    [(n, 64) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                       "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")]
    + [("eflags", 32)] + [(n, 32) for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    + [(n, 64) for n in ("fs_base", "gs_base", "k_gs_base",
                         "cr0", "cr2", "cr3", "cr4", "cr8", "efer")]
    + [(f"st{i}", 80) for i in range(8)]
    + [(n, 32) for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
    + [(f"xmm{i}", 128) for i in range(16)] + [("mxcsr", 32)]
)


class GDBStubError(CloudVMIError):
    """The gdbstub refused a request, answered nonsense, or the connection is gone."""


class GDBStubTimeout(GDBStubError):
    """The gdbstub did not answer (or the VM did not stop) within the time allowed."""


class GDBMemoryError(GDBStubError, GuestMemoryError):
    """The gdbstub could not read or write guest memory at an address."""

    def __init__(self, message: str, address: int) -> None:
        super().__init__(message)
        self.address = address


class GDBStubBusy(GDBStubError):
    """Another debugger holds the gdbstub (QEMU serves one client at a time)."""


@dataclass(frozen=True)
class Register:
    """One register as the stub describes it; offset is its place in the `g` packet."""

    name: str
    bitsize: int
    regnum: int
    offset: int

    @property
    def size(self) -> int:
        return (self.bitsize + 7) // 8


@dataclass(frozen=True)
class StopEvent:
    """Why and where the VM stopped: a stop reply (`T05thread:p01.01;` and the like)."""

    signal: int
    thread: str | None
    raw: str
    fields: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def watch_address(self) -> int | None:
        """The data address of a watchpoint hit, if this stop was one."""
        for key in ("watch", "rwatch", "awatch"):
            if key in self.fields:
                return int(self.fields[key], 16)
        return None


# -- framing ------------------------------------------------------------------------------

_ESCAPED = frozenset(b"#$}*")


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary-escape DATA for a packet: `}` then the byte XOR 0x20."""
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise GDBStubError("packet ends inside an escape")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def rle_decode(data: bytes) -> bytes:
    """Expand `X*n`: X repeated n-29 more times (GDB expands before unescaping; so do we)."""
    if 0x2A not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0x2A:
            if not out or i + 1 >= len(data):
                raise GDBStubError("bad run-length encoding in packet")
            count = data[i + 1] - 29
            if count < 0:
                raise GDBStubError("bad run-length count in packet")
            out += bytes((out[-1],)) * count
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """`$payload#cs`; PAYLOAD must already be escaped where the packet type needs it."""
    return b"$" + payload + b"#%02x" % checksum(payload)


def parse_stop(text: str) -> StopEvent | None:
    """A stop reply, or None if TEXT is not one (`S05`, `T05k:v;...`, `W00`, `X09`)."""
    if len(text) < 3 or text[0] not in "STWX":
        return None
    try:
        sig = int(text[1:3], 16)
    except ValueError:
        return None
    fields: dict[str, str] = {}
    if text[0] == "T" or ";" in text:  # W/X may carry `;process:pid`
        for item in text[3:].split(";"):
            key, sep, value = item.partition(":")
            if sep:
                fields[key] = value
    return StopEvent(sig, fields.get("thread"), text, fields)


_STOP_START = re.compile(r"[ST][0-9a-fA-F]{2}|[WX][0-9a-fA-F]{2}")


def _looks_like_stop(text: str) -> bool:
    return bool(_STOP_START.match(text))


# -- target description ------------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"<(xi:include|reg)\b([^>]*)>", re.S)
_ATTR = re.compile(r"([\w:-]+)\s*=\s*\"([^\"]*)\"")


def parse_target_xml(read_annex, annex: str = "target.xml") -> list[Register]:
    """Registers in `g` order from a target description, following xi:include.

    READ_ANNEX(name) -> str. Regex, not an XML parser: the `xi:` prefix is never declared and
    the text comes from the VM's side, so no entity expansion.
    """
    specs: list[tuple[str, int, int]] = []
    next_num = 0
    seen: set[str] = set()

    def walk(name: str, depth: int) -> None:
        nonlocal next_num
        if depth > 8 or name in seen:
            return
        seen.add(name)
        for tag, attr_text in _TAG.findall(_COMMENT.sub("", read_annex(name))):
            attrs = dict(_ATTR.findall(attr_text))
            if tag == "xi:include":
                if "href" in attrs:
                    walk(attrs["href"], depth + 1)
                continue
            num = int(attrs["regnum"]) if "regnum" in attrs else next_num
            specs.append((attrs["name"], int(attrs["bitsize"]), num))
            next_num = num + 1

    walk(annex, 0)
    return _layout(specs)


def _layout(specs: list[tuple[str, int, int]]) -> list[Register]:
    regs = []
    offset = 0
    for name, bits, num in sorted(specs, key=lambda s: s[2]):
        regs.append(Register(name, bits, num, offset))
        offset += (bits + 7) // 8
    return regs


def fallback_registers() -> list[Register]:
    return _layout([(name, bits, i) for i, (name, bits) in enumerate(_FALLBACK_X86_64)])


def _le_hex(value: int, size: int) -> str:
    return value.to_bytes(size, "little").hex()


def _fit(name: str, value: int, bits: int) -> int:
    if 0 <= value < 1 << bits:
        return value
    if -(1 << (bits - 1)) <= value < 0:
        return value & ((1 << bits) - 1)
    raise GDBStubError(f"value {value:#x} does not fit register {name} ({bits} bits)")


def _unix_busy(path: str, settle: float = 1.0) -> bool:
    """Whether the stub on the unix socket PATH already has a client: a connected socket
    (state 03) bound to that path in /proc/net/unix (the same reason as _local_port_busy).
    QEMU closes its end of a client that just left a moment later: wait up to SETTLE."""
    deadline = time.monotonic() + settle
    while True:
        try:
            with open("/proc/net/unix") as f:
                next(f, None)
                busy = any(cols[5] == "03" and cols[-1] == path
                           for cols in (line.split() for line in f) if len(cols) >= 8)
        except OSError:
            return False
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(0.02)


def _local_port_busy(host: str, port: int) -> bool:
    """Whether a local stub already has a client: an established socket on its port.

    Connecting to a busy QEMU stub is not harmless: the connection waits in the listen queue
    and, accepted after the other client leaves, pauses the VM. So look before connecting
    (possible when the stub is on this host, in this network namespace).
    """
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 3 and cols[3] == "01" and \
                            int(cols[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except (OSError, ValueError, IndexError):
            continue
    return False


# -- the client ---------------------------------------------------------------------------

class GDBStub:
    """One connection to a gdbstub. The VM is stopped while connected, unless cont()."""

    def __init__(self, sock: socket.socket, host: str, port: int | None,
                 timeout: float) -> None:
        self.host = host
        self.port = port
        self.where = host if port is None else f"{host}:{port}"
        self.timeout = timeout
        self._sock: socket.socket | None = sock
        self._buf = bytearray()
        self._lock = threading.RLock()
        self._ack = True
        self._broken = False
        self._running = False
        self._pending: list[StopEvent] = []
        self._resent = False
        self._breakpoints: set[tuple[int, int, int]] = set()
        self._phys = False
        self._sstep_default: int | None = None
        self.multiprocess = False
        self.packet_size = 4096
        self.last_stop: StopEvent | None = None
        self.thread: str | None = None
        self.registers_from_xml = False
        self._regs: list[Register] = []
        self._by_name: dict[str, Register] = {}

    # -- connection ------------------------------------------------------------------------
    @classmethod
    def connect(cls, host: str, port: int | None = None, timeout: float = 5.0,
                describe: bool = True) -> "GDBStub":
        """Connect, negotiate, read the register list, and learn where the VM stopped.
        HOST:PORT for a stub on TCP; HOST alone is the path of a stub's unix socket."""
        if port is None:
            if _unix_busy(host):
                raise GDBStubBusy(f"gdbstub {host} already has a client; QEMU serves one at "
                                  "a time")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(host)
            except OSError as exc:
                sock.close()
                raise GDBStubError(f"cannot reach gdbstub at {host}: {exc}") from exc
        else:
            if _local_port_busy(host, port):
                raise GDBStubBusy(f"gdbstub {host}:{port} already has a client; QEMU serves "
                                  "one at a time")
            try:
                sock = socket.create_connection((host, port), timeout=timeout)
            except OSError as exc:
                raise GDBStubError(f"cannot reach gdbstub at {host}:{port}: {exc}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stub = cls(sock, host, port, timeout)
        try:
            stub._handshake(describe)
        except GDBStubError as exc:
            stub._drop()
            raise GDBStubError(
                f"{exc} (QEMU serves one gdb client at a time: if another debugger holds it, "
                "QEMU will accept this abandoned connection when that one leaves, and that "
                "pauses the VM)") from exc
        except BaseException:
            stub._drop()
            raise
        return stub

    def _handshake(self, describe: bool) -> None:
        reply = self._command("qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
        features = {}
        for item in reply.split(";"):
            if "=" in item:
                key, value = item.split("=", 1)
                features[key] = value
            elif item:
                features[item.rstrip("+-?")] = item[-1]
        self.multiprocess = features.get("multiprocess") == "+"
        if "PacketSize" in features:
            self.packet_size = int(features["PacketSize"], 16)
        if self._command("QStartNoAckMode") == "OK":  # QEMU 7.2 answers empty: acks stay
            self._ack = False
        if describe:
            self._load_registers(features.get("qXfer:features:read") == "+")
        stop = parse_stop(self._command("?"))
        if stop is not None:
            self._note_stop(stop)
        self._pending.clear()  # the stop reply QEMU sent on connect is the same stop

    def _load_registers(self, xfer: bool) -> None:
        regs: list[Register] = []
        if xfer:
            try:
                regs = parse_target_xml(self.read_feature)
            except (GDBStubError, KeyError, ValueError):
                regs = []
        self.registers_from_xml = bool(regs)
        self._regs = regs or fallback_registers()
        self._by_name = {r.name.lower(): r for r in self._regs}

    def read_feature(self, annex: str) -> str:
        """One qXfer:features:read annex (target.xml and what it includes), in full."""
        data = bytearray()
        while True:
            reply = self._command(f"qXfer:features:read:{annex}:{len(data):x},ffb", binary=True)
            if not reply or reply[:1] not in (b"m", b"l"):
                raise GDBStubError(f"qXfer of {annex} refused: {reply[:40]!r}")
            data += reply[1:]
            if len(data) > MAX_ANNEX:
                raise GDBStubError(f"qXfer of {annex} goes on past {MAX_ANNEX} bytes")
            if reply[:1] == b"l":
                return data.decode("utf-8", "replace")
            if len(reply) == 1:
                raise GDBStubError(f"qXfer of {annex} made no progress")

    def close(self) -> None:
        """Detach and leave the VM running, whatever state the connection is in."""
        with self._lock:
            if self._sock is None:
                return
            ok = False
            if not self._broken:
                try:
                    self._tidy_and_detach()
                    ok = True
                except (CloudVMIError, OSError):
                    ok = False
            self._drop()
            if not ok:
                self._rescue()

    def _tidy_and_detach(self) -> None:
        if self._running:
            self.interrupt(timeout=min(self.timeout, 3.0))
        for kind, addr, length in list(self._breakpoints):
            with contextlib.suppress(GDBStubError):  # detach removes them all anyway
                self._z(False, kind, addr, length)
        if self._phys:
            self.physical_mode(False)
        if self._sstep_default is not None:
            self.singlestep_flags = self._sstep_default
        self._detach()

    def _detach(self) -> None:
        """`D;pid` (multiprocess) else `D`; QEMU then removes breakpoints and resumes."""
        pid = self._pid() if self.multiprocess else None
        reply = self._command(f"D;{pid:x}" if pid is not None else "D")
        if reply != "OK":
            reply = self._command("D" if pid is not None else "D;1")
        if reply != "OK":
            raise GDBStubError(f"detach refused: {reply!r}")
        self._running = True

    def _pid(self) -> int:
        thread = self.thread or (self.last_stop.thread if self.last_stop else None) or "p1.1"
        match = re.match(r"p([0-9a-fA-F]+)", thread)
        return int(match.group(1), 16) if match else 1

    def _rescue(self) -> None:
        """The connection broke: a fresh one stops the VM, then detaching resumes it."""
        try:
            fresh = GDBStub.connect(self.host, self.port, timeout=2.0, describe=False)
        except CloudVMIError:
            return
        try:
            fresh._command("Qqemu.PhyMemMode:0")
            fresh._detach()
        except (CloudVMIError, OSError):
            pass
        finally:
            fresh._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._broken = True

    def __enter__(self) -> "GDBStub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- wire ------------------------------------------------------------------------------
    def _fail(self, message: str, exc: Exception | None = None) -> GDBStubError:
        self._broken = True
        err = GDBStubError(f"gdbstub {self.where}: {message}")
        if exc is not None:
            err.__cause__ = exc
        return err

    def _check_usable(self) -> None:
        if self._sock is None or self._broken:
            raise GDBStubError(f"gdbstub {self.where}: connection closed or broken")

    def _write(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise self._fail(f"send failed: {exc}", exc) from exc

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False if DEADLINE passed first."""
        assert self._sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            return False
        except OSError as exc:
            raise self._fail(f"receive failed: {exc}", exc) from exc
        if not chunk:
            raise self._fail("the stub closed the connection (another debugger, or QEMU quit?)")
        self._buf += chunk
        return True

    def _next_item(self, deadline: float) -> bytes | None:
        """The next ack (b'+'/b'-') or packet payload (b'$...', RLE-expanded); None on timeout.

        Packets are acknowledged here; bad checksums are answered with `-` and skipped.
        """
        while True:
            buf = self._buf
            while buf and buf[0] not in b"+-$%":
                del buf[0]  # noise between packets
            if buf and buf[0] in b"+-":
                item = bytes(buf[:1])
                del buf[0]
                return item
            if buf:
                end = buf.find(b"#")
                if end >= 0 and len(buf) >= end + 3:
                    start = buf[0]
                    body = bytes(buf[1:end])
                    sent = bytes(buf[end + 1:end + 3])
                    del buf[:end + 3]
                    try:
                        ok = int(sent, 16) == checksum(body)
                    except ValueError:
                        ok = False
                    if start == 0x25:  # '%' notification: not used by QEMU, not acked
                        continue
                    if not ok:
                        if self._ack:
                            self._write(b"-")
                        continue
                    if self._ack:
                        self._write(b"+")
                    return b"$" + rle_decode(body)
                if len(buf) > 1 << 20:
                    raise self._fail("runaway packet (no end marker in 1 MiB)")
            if not self._fill(deadline):
                return None

    def _note_stop(self, stop: StopEvent) -> None:
        self._running = False
        self.last_stop = stop
        if stop.thread:
            self.thread = stop.thread

    def _async_stop(self, text: str) -> bool:
        stop = parse_stop(text)
        if stop is None:
            return False
        self._note_stop(stop)
        self._pending.append(stop)
        return True

    def _send_packet(self, payload: bytes) -> None:
        """Send PAYLOAD and, in ack mode, wait for `+`, sending again on `-` or if lost."""
        packet = frame(payload)
        for attempt in range(MAX_RETRIES):
            self._resent = attempt > 0
            self._write(packet)
            if not self._ack:
                return
            deadline = time.monotonic() + ACK_TIMEOUT
            while True:
                item = self._next_item(deadline)
                if item is None or item == b"-":
                    break  # lost or damaged: send again
                if item == b"+":
                    return
                # A packet instead of our ack: a stop reply means the VM was running and
                # our `$` may have been eaten stopping it. Give the ack a moment, then resend.
                # Anything else is a stale answer (to a resent packet): drop it.
                if self._async_stop(item[1:].decode("latin-1")):
                    deadline = min(deadline, time.monotonic() + STOP_ACK_GRACE)
        raise self._fail(f"no acknowledgement for {payload[:40]!r} after {MAX_RETRIES} tries")

    def _command(self, payload: str | bytes, binary: bool = False,
                 timeout: float | None = None):
        """Send one packet and return its reply (str; unescaped bytes if BINARY)."""
        with self._lock:
            self._check_usable()
            data = payload.encode("latin-1") if isinstance(payload, str) else payload
            try:
                return self._exchange(data, binary, timeout)
            except GDBStubError:
                raise
            except BaseException:
                self._broken = True  # interrupted half way: the wire state is unknown
                raise

    def _exchange(self, data: bytes, binary: bool, timeout: float | None):
        wait = self.timeout if timeout is None else timeout
        self._send_packet(data)
        deadline = time.monotonic() + wait
        while True:
            item = self._next_item(deadline)
            if item is None:
                raise self._fail(f"no reply to {data[:40]!r} within {wait:.1f} s")
            if item in (b"+", b"-"):
                continue  # a late duplicate ack
            body = item[1:]
            text = body.decode("latin-1")
            if not data.startswith((b"?", b"s", b"c", b"vCont")) and _looks_like_stop(text):
                self._async_stop(text)
                continue
            if self._resent:
                self._drop_duplicates(item)
            return unescape(body) if binary else text

    def _drop_duplicates(self, reply: bytes) -> None:
        """After a resend both copies may have been answered: swallow the second answer."""
        self._resent = False
        deadline = time.monotonic() + STOP_ACK_GRACE
        while (item := self._next_item(deadline)) is not None:
            if item not in (b"+", b"-", reply):
                self._async_stop(item[1:].decode("latin-1"))

    # -- registers -------------------------------------------------------------------------
    @property
    def register_list(self) -> list[Register]:
        return list(self._regs)

    def _reg(self, name: str) -> Register:
        reg = self._by_name.get(name.lower())
        if reg is None:
            raise GDBStubError(f"no register {name!r}; the stub has: "
                               + ", ".join(r.name for r in self._regs))
        return reg

    def _stopped(self, what: str) -> None:
        if self._running:
            raise GDBStubError(f"{what}: the VM is running; interrupt() or wait_stop() first")

    def _read_g(self) -> bytes:
        self._stopped("read registers")
        reply = self._command("g")
        if reply.startswith("E") or not reply:
            raise GDBStubError(f"g refused: {reply!r}")
        try:
            return bytes.fromhex(reply)
        except ValueError as exc:
            raise GDBStubError(f"bad g reply: {reply[:60]!r}") from exc

    def read_registers(self) -> dict[str, int]:
        """Every register the `g` packet carries, of the selected thread (vCPU)."""
        data = self._read_g()
        out = {}
        for reg in self._regs:
            if reg.offset + reg.size <= len(data):
                out[reg.name] = int.from_bytes(data[reg.offset:reg.offset + reg.size], "little")
        return out

    def write_registers(self, values: dict[str, int]) -> None:
        """Set some registers at once (read-modify-write of `g`/`G`)."""
        data = bytearray(self._read_g())
        for name, value in values.items():
            reg = self._reg(name)
            if reg.offset + reg.size > len(data):
                raise GDBStubError(f"register {reg.name} is not in the g packet")
            value = _fit(reg.name, value, reg.bitsize)
            data[reg.offset:reg.offset + reg.size] = value.to_bytes(reg.size, "little")
        reply = self._command("G" + data.hex())
        if reply != "OK":
            raise GDBStubError(f"G refused: {reply!r}")

    def read_register(self, name: str) -> int:
        """One register via `p` (falls back to `g` if the stub has no `p`)."""
        reg = self._reg(name)
        self._stopped(f"read {reg.name}")
        reply = self._command(f"p{reg.regnum:x}")
        if not reply:
            value = self.read_registers().get(reg.name)
            if value is None:
                raise GDBStubError(f"register {reg.name} is neither in g nor readable with p")
            return value
        if reply.startswith("E"):
            raise GDBStubError(f"p {reg.name} refused: {reply}")
        return int.from_bytes(bytes.fromhex(reply), "little")

    def write_register(self, name: str, value: int) -> None:
        """One register via `P` (falls back to `G` if the stub has no `P`)."""
        reg = self._reg(name)
        self._stopped(f"write {reg.name}")
        value = _fit(reg.name, value, reg.bitsize)
        reply = self._command(f"P{reg.regnum:x}={_le_hex(value, reg.size)}")
        if not reply:
            self.write_registers({reg.name: value})
        elif reply != "OK":
            raise GDBStubError(f"P {reg.name} refused: {reply}")

    # -- vCPUs -----------------------------------------------------------------------------
    def threads(self) -> list[str]:
        """Thread ids, one per vCPU (QEMU: `p1.1`, `p1.2`, ... in multiprocess form)."""
        self._stopped("list threads")
        out: list[str] = []
        reply = self._command("qfThreadInfo")
        for _ in range(4096):
            if reply.startswith("l") or not reply:
                return out
            if not reply.startswith("m"):
                raise GDBStubError(f"bad thread list reply {reply!r}")
            out += [t for t in reply[1:].split(",") if t]
            reply = self._command("qsThreadInfo")
        raise GDBStubError("thread list does not end")

    def select(self, thread: str) -> None:
        """Make THREAD (a vCPU) the one registers, memory and step act on."""
        self._stopped("select a thread")
        for op in ("g", "c"):
            reply = self._command(f"H{op}{thread}")
            if reply != "OK":
                raise GDBStubError(f"H{op}{thread} refused: {reply!r}")
        self.thread = thread

    # -- memory ----------------------------------------------------------------------------
    def read_memory(self, addr: int, size: int) -> bytes:
        """Guest memory, virtual through the selected vCPU's page tables unless physical."""
        self._stopped("read memory")
        out = bytearray()
        while len(out) < size:
            at = addr + len(out)
            n = min(MAX_MEMORY_CHUNK, size - len(out))
            reply = self._command(f"m{at:x},{n:x}")
            if not reply or reply.startswith("E"):
                raise GDBMemoryError(f"cannot read {n} bytes at {at:#x} ({reply or 'no reply'})",
                                     at)
            chunk = bytes.fromhex(reply)
            if not chunk:
                raise GDBMemoryError(f"empty read at {at:#x}", at)
            out += chunk
        return bytes(out[:size])

    def write_memory(self, addr: int, data: bytes) -> None:
        self._stopped("write memory")
        chunk_max = min(MAX_MEMORY_CHUNK, (self.packet_size - 48) // 2)
        done = 0
        while done < len(data):
            piece = data[done:done + chunk_max]
            at = addr + done
            reply = self._command(f"M{at:x},{len(piece):x}:{piece.hex()}")
            if reply != "OK":
                raise GDBMemoryError(f"cannot write {len(piece)} bytes at {at:#x} ({reply!r})",
                                     at)
            done += len(piece)

    def physical_mode(self, enabled: bool = True) -> None:
        """Make `m`/`M` use guest-physical addresses (QEMU keeps this after we leave)."""
        self._stopped("switch memory mode")
        reply = self._command(f"Qqemu.PhyMemMode:{int(enabled)}")
        if reply != "OK":
            raise GDBStubError(f"Qqemu.PhyMemMode refused: {reply!r}")
        self._phys = enabled

    # -- execution -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    def interrupt(self, timeout: float | None = None) -> StopEvent:
        """Stop the VM and return the stop; if already stopped, where it stands."""
        with self._lock:
            self._check_usable()
            if not self._running:
                if self._pending:  # it stopped on its own (or QMP stopped it): the latest
                    stop = self._pending[-1]
                    self._pending.clear()
                    return stop
                stop = parse_stop(self._command("?"))
                if stop is None:
                    raise GDBStubError("no stop reply to '?'")
                self._note_stop(stop)
                self._pending.clear()
                return stop
            self._write(b"\x03")
            return self.wait_stop(self.timeout if timeout is None else timeout)

    def cont(self) -> None:
        """Resume every vCPU and return at once; wait_stop() or interrupt() later."""
        self._stopped("continue")
        with self._lock:
            self._send_packet(b"c")
            self._pending.clear()  # a stop from before `c` was accepted is history
            self._running = True

    def wait_stop(self, timeout: float | None = None) -> StopEvent:
        """Wait for the next stop reply; GDBStubTimeout (VM still running) if none comes."""
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            self._check_usable()
            if self._pending:
                return self._pending.pop(0)
            if not self._running:
                raise GDBStubError("wait_stop: the VM is not running (cont() first)")
            deadline = time.monotonic() + timeout
            while True:
                item = self._next_item(deadline)
                if item is None:
                    raise GDBStubTimeout(f"gdbstub {self.where}: the VM did not stop "
                                         f"within {timeout:.1f} s (it is still running)")
                if item in (b"+", b"-"):
                    continue
                text = item[1:].decode("latin-1")
                stop = parse_stop(text)
                if stop is None:
                    continue  # console output (`O...`) or a stray reply
                self._note_stop(stop)
                if text[0] in "WX":
                    self._broken = True
                    raise GDBStubError(f"the target ended: {text!r}")
                return stop

    def step(self, timeout: float | None = None) -> StopEvent:
        """Execute one instruction on the current vCPU and return the stop."""
        self._stopped("step")
        with self._lock:
            self._send_packet(b"s")
            self._pending.clear()
            self._running = True
            return self.wait_stop(timeout)

    @property
    def singlestep_flags(self) -> int:
        """QEMU's step flags: 1 enable, 2 no IRQs, 4 no timers (default 7)."""
        reply = self._command("qqemu.sstep")
        try:
            return int(reply, 16)
        except ValueError as exc:
            raise GDBStubError(f"qqemu.sstep refused: {reply!r}") from exc

    @singlestep_flags.setter
    def singlestep_flags(self, flags: int) -> None:
        if self._sstep_default is None:
            self._sstep_default = self.singlestep_flags
        reply = self._command(f"Qqemu.sstep={flags:#x}")
        if reply != "OK":
            raise GDBStubError(f"Qqemu.sstep refused: {reply!r}")

    # -- breakpoints -----------------------------------------------------------------------
    def _z(self, insert: bool, kind: int, addr: int, length: int) -> None:
        self._stopped("change breakpoints")
        letter = "Z" if insert else "z"
        reply = self._command(f"{letter}{kind},{addr:x},{length:x}")
        if reply == "OK":
            if insert:
                self._breakpoints.add((kind, addr, length))
            else:
                self._breakpoints.discard((kind, addr, length))
            return
        what = {0: "software breakpoint", 1: "hardware breakpoint", 2: "write watchpoint",
                3: "read watchpoint", 4: "access watchpoint"}[kind]
        reason = reply or "not supported by this stub"
        raise GDBStubError(f"{'insert' if insert else 'remove'} {what} at {addr:#x}: {reason}")

    def add_breakpoint(self, addr: int, hardware: bool = True) -> None:
        """Break at ADDR. Hardware (Z1) writes no guest memory and works under KVM; software
        (Z0) writes int3 into the guest under KVM."""
        self._z(True, 1 if hardware else 0, addr, 1)

    def remove_breakpoint(self, addr: int, hardware: bool = True) -> None:
        self._z(False, 1 if hardware else 0, addr, 1)

    _WATCH = {"write": 2, "read": 3, "access": 4}

    def add_watchpoint(self, addr: int, length: int, kind: str = "write") -> None:
        """Stop on a write, read or any access to LENGTH bytes at ADDR (Z2/Z3/Z4)."""
        self._z(True, self._watch_kind(kind), addr, length)

    def remove_watchpoint(self, addr: int, length: int, kind: str = "write") -> None:
        self._z(False, self._watch_kind(kind), addr, length)

    def _watch_kind(self, kind: str) -> int:
        try:
            return self._WATCH[kind]
        except KeyError:
            raise GDBStubError(f"watchpoint kind must be write, read or access, not {kind!r}") \
                from None

"""A syscall channel: lists of guest system calls, described by name with their buffers, run
in one held hijack, one resume of the guest thread per list. Redirected programs
(`cloudvmi.redirect`) speak to a guest through it, locally or through an agent.

A call's arguments are plain values, bytes copied into the scratch area (the call gets their
address), output buffers (read back after the run) or the result of an earlier call in the
same list. Flags and structures are x86-64's, translated for a guest of another ABI
(write/hostabi.py)."""

from dataclasses import dataclass, field

from cloudvmi.write import batch as batch_mod
from cloudvmi.write import hostabi
from cloudvmi.write.errors import InjectionError
from cloudvmi.write.session import DATA_FIRST, DATA_LARGE, TABLE_PAGES, GuestSession

VALUE, INPUT, OUTPUT, RESULT, INOUT = "value", "input", "output", "result", "inout"
MAX_CALLS = TABLE_PAGES * 4096 // batch_mod.ENTRY.size


@dataclass
class Arg:
    kind: str = VALUE  # value | input | output | result | inout (an input read back)
    value: int = 0  # the value; an output's size; the index of an earlier call
    data: bytes = b""  # an input's bytes


@dataclass
class GuestCall:
    name: str
    args: list[Arg] = field(default_factory=list)
    stop_on_error: bool = False  # the calls after it do not run if it fails
    trim: bool = False  # the first output is cut to the result (read, getdents64, ...)


@dataclass
class CallResult:
    value: int | None  # the raw result (-errno on failure); None: not run
    outputs: list[bytes] = field(default_factory=list)


def value(v: int) -> Arg:
    return Arg(VALUE, v)


def data_in(raw: bytes) -> Arg:
    return Arg(INPUT, 0, raw)


def buffer_out(size: int) -> Arg:
    return Arg(OUTPUT, size)


def result_of(index: int) -> Arg:
    return Arg(RESULT, index)


def data_inout(raw: bytes) -> Arg:
    """Bytes the call reads and changes (a socklen_t, a struct ifreq); read back as an
    output."""
    return Arg(INOUT, 0, raw)


def cost(calls: list[GuestCall]) -> int:
    """Scratch bytes a list needs (each buffer rounded as the session allocates it)."""
    return sum((len(a.data) if a.kind in (INPUT, INOUT) else a.value if a.kind == OUTPUT
                else 0) + 16 for c in calls for a in c.args)


class CallChannel:
    """What both channels share: lay a list of calls out as a table and a data area, run it
    (the subclass's transport), read the results and the used output bytes back."""

    max_calls = MAX_CALLS
    max_bytes = DATA_LARGE

    def __init__(self, abi) -> None:
        self.abi = abi
        self.resumes = 0  # lists run (each one resume of the guest thread, or one mailbox turn)

    def helper_pid(self) -> int:
        """The guest process that runs the calls (programs must not signal it)."""
        raise NotImplementedError

    def _area(self) -> tuple[int, int]:
        """Guest addresses of the call table and of the data area."""
        raise NotImplementedError

    def _reserve(self, size: int) -> None:
        """Make room for SIZE bytes of buffers before a list is laid out (if the area
        grows)."""

    def _execute(self, batch: batch_mod.Batch, blob: bytes) -> list[int | None]:
        """Put BLOB at the data area and the table in place, run it; each call's raw result."""
        raise NotImplementedError

    def _read(self, address: int, size: int) -> bytes:
        raise NotImplementedError

    def run(self, calls: list[GuestCall]) -> list[CallResult]:
        if len(calls) > self.max_calls or cost(calls) > self.max_bytes:
            raise InjectionError(f"{len(calls)} calls with {cost(calls)} bytes of buffers "
                                 "do not fit one run")
        if not calls:
            return []
        self._reserve(cost(calls))
        table, data = self._area()
        b = batch_mod.Batch(table)
        cursor = 0

        def alloc(size: int) -> int:
            nonlocal cursor
            address = data + cursor
            cursor += (size + 15) // 16 * 16
            return address

        # Inputs first, in one write; output buffers after them (never written).
        blob = bytearray()
        placed: dict[tuple[int, int], int] = {}
        for i, call in enumerate(calls):
            for j, a in enumerate(call.args):
                if a.kind in (INPUT, INOUT):
                    placed[i, j] = address = alloc(len(a.data))
                    blob += bytes(address - data - len(blob)) + a.data
        outputs: list[list[tuple[int, int]]] = []
        for i, call in enumerate(calls):
            args, outs = [], []
            for j, a in enumerate(call.args):
                if a.kind == VALUE:
                    args.append(a.value)
                elif a.kind == INPUT:
                    args.append(placed[i, j])
                elif a.kind == INOUT:
                    outs.append((placed[i, j], len(a.data)))
                    args.append(placed[i, j])
                elif a.kind == OUTPUT:
                    address = alloc(a.value)
                    outs.append((address, a.value))
                    args.append(address)
                elif a.kind == RESULT and 0 <= a.value < len(b.calls):
                    args.append(b.result(a.value))
                else:
                    raise ValueError(f"bad argument {a.kind}:{a.value} for {call.name}")
            if call.name in hostabi.OPEN_FLAGS_ARGUMENT:
                at = hostabi.OPEN_FLAGS_ARGUMENT[call.name]
                if at < len(args) and call.args[at].kind == VALUE:
                    args[at] = hostabi.open_flags(self.abi, args[at])
            b.add(hostabi.number(self.abi, call.name), *args, stop_on_error=call.stop_on_error)
            outputs.append(outs)
        raw = self._execute(b, bytes(blob))
        self.resumes += 1
        results = self._collect(calls, raw, outputs)
        if not hostabi.same(self.abi):
            for call, result in zip(calls, results, strict=True):
                if call.name in hostabi.STAT_OUTPUTS and result.outputs:
                    result.outputs[0] = hostabi.host_stat(self.abi, result.outputs[0])
        return results

    def _collect(self, calls, raw, outputs) -> list[CallResult]:
        """Read the used output bytes back in as few reads as possible."""
        wanted: list[tuple[int, int]] = []
        for call, value, outs in zip(calls, raw, outputs, strict=True):
            for n, (address, size) in enumerate(outs):
                if value is None or signed(value) < 0:
                    size = 0
                elif call.trim and n == 0:  # the data buffer, not a length beside it
                    size = min(size, signed(value))
                wanted.append((address, size))
        data = self._read_ranges([w for w in wanted if w[1]])
        results, k = [], 0
        for value, outs in zip(raw, outputs, strict=True):
            got = []
            for _ in outs:
                address, size = wanted[k]
                k += 1
                got.append(data.get(address, b"")[:size] if size else b"")
            results.append(CallResult(None if value is None else signed(value), got))
        return results

    def _read_ranges(self, ranges: list[tuple[int, int]]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        ranges.sort()
        i = 0
        while i < len(ranges):
            start, end, j = ranges[i][0], ranges[i][0] + ranges[i][1], i
            while j + 1 < len(ranges) and ranges[j + 1][0] - end < 8192:
                j += 1
                end = max(end, ranges[j][0] + ranges[j][1])
            blob = self._read(start, end - start)
            for address, size in ranges[i:j + 1]:
                out[address] = blob[address - start:address - start + size]
            i = j + 1
        return out


class SyscallChannel(CallChannel):
    """The stop-the-world channel: one hijack held while the channel is open; the guest is
    stopped between lists and runs while one executes. `with ops.channel() as ch:`."""

    def __init__(self, ops, data_size: int = DATA_LARGE) -> None:
        super().__init__(ops.injector.abi)
        self.session: GuestSession = ops.session(data_size, first=DATA_FIRST)
        self.max_bytes = data_size

    def __enter__(self) -> "SyscallChannel":
        self.session.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.__exit__(*exc)

    def helper_pid(self) -> int:
        return self.session.injector.target.tgid

    def _area(self) -> tuple[int, int]:
        return self.session.table, self.session.data

    def _reserve(self, size: int) -> None:
        self.session.grow(size)

    def _execute(self, batch: batch_mod.Batch, blob: bytes) -> list[int | None]:
        s = self.session
        if blob:
            s.injector.write_user(s.data, blob)
        return s.run(batch)

    def _read(self, address: int, size: int) -> bytes:
        return self.session.read(address, size)


def signed(v: int) -> int:
    """A raw 64-bit result as the signed value the kernel returned (-errno on failure)."""
    return v - (1 << 64) if v >= 1 << 63 else v

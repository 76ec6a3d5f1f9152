"""The batched channel: a small interpreter placed in a private guest mapping walks a table
of system calls in one hijack, so each call costs a syscall, not a debugger round trip.

The interpreter's code is the architecture's (`Arch.batch_code`); this is the table it walks.
"""

import struct
from dataclasses import dataclass, field

ENTRY = struct.Struct("<9Q")  # nr, arg0..arg5, flags, result
STOP_ON_ERROR = 1 << 8
NOT_RUN = 1 << 63  # no syscall returns this: errors are -4095..-1, addresses are canonical


@dataclass
class Ref:
    """An argument whose value is another call's result, or a u64 stored at an address."""

    address: int


@dataclass
class Call:
    nr: int
    args: tuple = ()
    stop_on_error: bool = True
    parent_skips: int = 0  # after fork(): the parent skips the next N calls; the child runs them


@dataclass
class Batch:
    """Calls laid out at `table` (a guest virtual address inside the scratch mapping)."""

    table: int
    calls: list[Call] = field(default_factory=list)

    def add(self, nr: int, *args, stop_on_error: bool = True, parent_skips: int = 0) -> int:
        """Append a call; returns its index (use `result(i)` as a later call's argument)."""
        if len(args) > 6:
            raise ValueError("system calls take at most 6 arguments")
        self.calls.append(Call(nr, tuple(args), stop_on_error, parent_skips))
        return len(self.calls) - 1

    def result(self, index: int) -> Ref:
        return Ref(self.table + index * ENTRY.size + 64)

    @property
    def end(self) -> int:
        return self.table + len(self.calls) * ENTRY.size

    def encode(self) -> bytes:
        out = bytearray()
        for call in self.calls:
            flags = (STOP_ON_ERROR if call.stop_on_error else 0) | (call.parent_skips << 16)
            values = []
            for i in range(6):
                arg = call.args[i] if i < len(call.args) else 0
                if isinstance(arg, Ref):
                    flags |= 1 << i
                    arg = arg.address
                values.append(arg & 0xFFFF_FFFF_FFFF_FFFF)
            out += ENTRY.pack(call.nr, *values, flags, NOT_RUN)
        return bytes(out)

    def decode_results(self, raw: bytes) -> list[int | None]:
        """Each call's raw result; None for calls that did not run (an earlier one failed)."""
        results = []
        for i in range(len(self.calls)):
            value = ENTRY.unpack_from(raw, i * ENTRY.size)[8]
            results.append(None if value == NOT_RUN else value)
        return results

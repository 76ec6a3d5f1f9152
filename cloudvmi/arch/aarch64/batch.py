"""The batch interpreter for arm64 (batch.S assembled; a test re-assembles it and compares,
another runs it on real system calls under qemu-user).

x19 points at the first table entry, x20 at the end; the write layer's `Batch` lays the
table out, the same 72-byte entries as on x86-64. The thread ends at `done: b done`, where a
hardware breakpoint catches it.
"""

CODE = bytes.fromhex(
    "7f0214eb02040054751e40f9600640f955000036000040f9610a40f955000836210040f9620e40f955001036"
    "420040f9631240f955001836630040f9641640f955002036840040f9651a40f955002836a50040f9680240f9"
    "010000d4602200f973220191a95e50d3890000b4600000b40a0980d2334d0a9b55fc47361ffc3fb103fcff54"
    "00000014"
)
DONE = 0x84  # offset of `done: b done`
TABLE_REGISTERS = ("x19", "x20")  # (first entry, end of table)

STUB_REACH = 1 << 27  # a `b` reaches +-128 MiB
_NOP, _LDR_X0_LITERAL_12 = 0xD503201F, 0x58000060  # ldr x0, [pc + 12]


def resume_stub(saved: dict[str, int], address: int) -> tuple[bytes, int] | None:
    """Code that gives a thread back its X0 and PC: where a thread still inside an injected
    call is sent when that call returns (the kernel writes the call's result into X0; every
    other register comes from the frame). AArch64 has no branch to an address in memory that
    leaves every register alone, so the jump is a direct `b`: the code must sit, at ADDRESS,
    within STUB_REACH of the saved PC (None otherwise). Returns (bytes, entry offset); a NOP
    before the entry catches a restarted call, which the kernel rewinds by 4 bytes."""
    branch = address + 8
    delta = saved["pc"] - branch
    if delta % 4 or not -STUB_REACH <= delta < STUB_REACH:
        return None
    words = (_NOP, _LDR_X0_LITERAL_12, 0x14000000 | (delta >> 2) & 0x3FF_FFFF, _NOP)
    code = b"".join(w.to_bytes(4, "little") for w in words)
    return code + saved["x0"].to_bytes(8, "little"), 4

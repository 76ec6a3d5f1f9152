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

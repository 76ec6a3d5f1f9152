"""Where AArch64 code can go: the control transfers of a run of instructions, decoded from
their fixed 32-bit encodings (the A64 branch classes need no disassembler)."""

import struct
from dataclasses import dataclass

INSTRUCTION = 4


@dataclass(frozen=True)
class Branch:
    at: int  # the instruction's address
    kind: str  # b, bl, b.cond, cbz, tbz, br, blr, ret, eret
    target: int | None  # None for a branch to a register's address


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def decode(word: int, at: int) -> Branch | None:
    """The control transfer WORD makes at address AT, or None for another instruction."""
    op = word >> 26
    if op in (0b000101, 0b100101):  # B, BL imm26
        return Branch(at, "bl" if op >> 5 else "b", at + _signed(word & 0x3FF_FFFF, 26) * 4)
    if word >> 24 == 0b0101_0100:  # B.cond imm19
        return Branch(at, "b.cond", at + _signed((word >> 5) & 0x7_FFFF, 19) * 4)
    if (word >> 25) & 0x3F == 0b011010:  # CBZ, CBNZ imm19
        return Branch(at, "cbz", at + _signed((word >> 5) & 0x7_FFFF, 19) * 4)
    if (word >> 25) & 0x3F == 0b011011:  # TBZ, TBNZ imm14
        return Branch(at, "tbz", at + _signed((word >> 5) & 0x3FFF, 14) * 4)
    if word >> 25 == 0b110_1011:  # branch to a register: BR, BLR, RET, ERET, their PAC forms
        opc = (word >> 21) & 0xF
        return Branch(at, {0: "br", 1: "blr", 2: "ret", 4: "eret"}.get(opc & 0x7, "br"), None)
    return None


def branches(code: bytes, address: int) -> list[Branch]:
    """Every control transfer in CODE, loaded at ADDRESS."""
    words = struct.unpack(f"<{len(code) // INSTRUCTION}I", code[:len(code) // 4 * 4])
    out = []
    for i, word in enumerate(words):
        b = decode(word, address + i * INSTRUCTION)
        if b is not None:
            out.append(b)
    return out

"""Reading x86-64 kernel entry code from memory, for integrity checks: the `switch` that
dispatches system calls on kernels with the branch-history fix (x64_sys_call and friends),
and the per-vector interrupt entry stubs (`push $vector; jmp common`).

Only what the compiler and the kernel's assembler macros produce is understood; anything
else raises Undecodable (the caller says the check could not be made, never guesses).
"""

from collections.abc import Callable

import capstone
from capstone import x86

MASK64 = (1 << 64) - 1
NR_REGISTERS = {"esi": 32, "rsi": 64}  # the dispatchers' `nr`: second argument (SysV ABI)

_JCC = {
    "je": lambda a, b, sa, sb: a == b, "jne": lambda a, b, sa, sb: a != b,
    "ja": lambda a, b, sa, sb: a > b, "jae": lambda a, b, sa, sb: a >= b,
    "jb": lambda a, b, sa, sb: a < b, "jbe": lambda a, b, sa, sb: a <= b,
    "jg": lambda a, b, sa, sb: sa > sb, "jge": lambda a, b, sa, sb: sa >= sb,
    "jl": lambda a, b, sa, sb: sa < sb, "jle": lambda a, b, sa, sb: sa <= sb,
}


class Undecodable(Exception):
    """The code is not the shape this module understands."""


def _disassembler() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


class SwitchDispatcher:
    """`switch (nr) { case N: return __x64_sys_...(regs); ... }` compiled without jump tables
    (the kernel builds with -fno-jump-tables): compares of the number register with constants,
    conditional jumps, and leaves that jump to an entry, or call one that never returns (exit).
    Decoded once from CODE at START, then followed for each number."""

    def __init__(self, code: bytes, start: int) -> None:
        self.start, self.end = start, start + len(code)
        self.max_case = -1  # the largest constant the number is compared with
        self.code = {i.address: self._simplify(i) for i in _disassembler().disasm(code, start)}

    def _simplify(self, ins) -> tuple:
        nxt, ops, m = ins.address + ins.size, ins.operands, ins.mnemonic
        if m in ("nop", "endbr64"):
            return ("nop", nxt)
        regs = [ins.reg_name(o.reg) for o in ops if o.type == x86.X86_OP_REG]
        if (m == "cmp" and len(ops) == 2 and len(regs) == 1 and regs[0] in NR_REGISTERS
                and ops[0].type == x86.X86_OP_REG and ops[1].type == x86.X86_OP_IMM):
            bits = NR_REGISTERS[regs[0]]
            imm = ops[1].imm & ((1 << bits) - 1)
            self.max_case = max(self.max_case, imm)
            return ("cmp", nxt, bits, imm)
        if m == "test" and len(regs) == 2 and regs[0] == regs[1] and regs[0] in NR_REGISTERS:
            return ("cmp", nxt, NR_REGISTERS[regs[0]], 0)  # the same flags as cmp nr, 0
        if (m in _JCC or m in ("jmp", "call")) and len(ops) == 1 \
                and ops[0].type == x86.X86_OP_IMM:
            return (m, nxt, ops[0].imm & MASK64)  # capstone's immediates are signed
        return ("other", nxt, f"{m} {ins.op_str}".strip())

    def follow(self, nr: int, is_entry: Callable[[int], bool],
               max_steps: int) -> tuple[int, list[int]]:
        """(where number NR is dispatched, the calls made on the way that return: a traced
        dispatcher calls its ftrace trampoline first). IS_ENTRY tells a syscall entry, so a
        call to it (exit) ends the path. At most MAX_STEPS instructions are followed."""
        pc, flags, calls = self.start, None, []
        for _ in range(max_steps):
            ins = self.code.get(pc)
            if ins is None:
                raise Undecodable(f"no instruction decoded at {pc:#x}")
            kind = ins[0]
            if kind == "nop":
                pc = ins[1]
            elif kind == "cmp":
                bits, imm = ins[2], ins[3]
                a = nr & ((1 << bits) - 1)
                flags = (a, imm, _signed(a, bits), _signed(imm, bits))
                pc = ins[1]
            elif kind in _JCC:
                if flags is None:
                    raise Undecodable(f"{kind} at {pc:#x} before any compare")
                pc = ins[2] if _JCC[kind](*flags) else ins[1]
            elif kind == "jmp" and self.start <= ins[2] < self.end:
                pc = ins[2]
            elif kind == "jmp" or kind == "call" and is_entry(ins[2]):
                return ins[2], calls  # a leaf; exit and exit_group are called, never return
            elif kind == "call":
                calls.append(ins[2])
                pc = ins[1]
            else:
                raise Undecodable(f"'{ins[2]}' at {pc:#x}")
        raise Undecodable(f"number {nr}: no way out after {max_steps} instructions")


def entry_stub(code: bytes, address: int) -> tuple[int, int]:
    """(the vector byte it pushes, where it jumps) for an interrupt entry stub at ADDRESS:
    `[endbr64] push $vector; jmp common` (irq_entries_start, spurious_entries_start in
    arch/x86/include/asm/idtentry.h)."""
    ins = [i for i in _disassembler().disasm(code, address) if i.mnemonic != "endbr64"][:2]
    if (len(ins) < 2 or ins[0].mnemonic != "push" or ins[1].mnemonic != "jmp"
            or len(ins[0].operands) != 1 or len(ins[1].operands) != 1
            or ins[0].operands[0].type != x86.X86_OP_IMM
            or ins[1].operands[0].type != x86.X86_OP_IMM):
        raise Undecodable("not an entry stub (push $vector; jmp)")
    return ins[0].operands[0].imm & 0xFF, ins[1].operands[0].imm & MASK64

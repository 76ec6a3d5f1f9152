"""The batch interpreter for x86-64 (batch.S assembled; a test re-assembles it and compares).

r12 points at the first table entry, r13 at the end; the write layer's `Batch` lays the
table out. The thread ends at `done: jmp done`, where a hardware breakpoint catches it.
"""

CODE = bytes.fromhex(
    "4d39ec0f8390000000498b5c2438498b7c2408f6c3017403488b3f498b742410f6c3027403488b36498b5424"
    "18f6c3047403488b124d8b542420f6c30874034d8b124d8b442428f6c31074034d8b004d8b4c2430f6c32074"
    "034d8b09498b04240f0549894424404983c44889d9c1e91081e1ff000000740c4885c07407486bc9484901cc"
    "f6c7010f8473ffffff483d01f0ffff0f8267ffffffebfe"
)
DONE = 0x99  # offset of `done: jmp done`


def resume_stub(saved: dict[str, int], address: int = 0) -> tuple[bytes, int]:
    """Code that gives a thread back its RAX and RIP: where a thread still inside an injected
    call is sent when that call returns (the kernel writes the call's result into RAX, so
    RAX cannot be restored through the frame). All other registers come from the frame.
    Returns (bytes, entry offset); a 2-byte NOP before the entry catches a restarted call,
    which the kernel rewinds by the 2 bytes of `syscall`. The code is position-independent:
    ADDRESS does not matter."""
    code = bytes.fromhex(
        "6690"              # nop (2 bytes): a restarted system call lands here
        "488b0509000000"    # mov rax, [rip+9]   -> the saved RAX
        "ff250b000000"      # jmp [rip+11]       -> the saved RIP
        "000000"            # padding to the data
    )
    return code + saved["rax"].to_bytes(8, "little") + saved["rip"].to_bytes(8, "little"), 2

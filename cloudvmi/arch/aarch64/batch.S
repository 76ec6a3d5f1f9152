	.text
	.include "entry.S"
	.globl _start
_start:
	/* x19: first entry, x20: end of table. Entries of 72 bytes, as on x86-64:
	   nr, arg0..arg5, flags, result. flags bit i (0-5): arg i is the address of the value;
	   bit 8: stop the batch if this call fails; bits 16-23: parent skips this many entries
	   after a fork-like call returned non-zero (the child runs them). A system call keeps
	   every register but x0, so the loop needs no saving around `svc`. */
next:
	cmp x19, x20
	b.hs done
	CALL_ENTRY
	ubfx x9, x21, #16, #8
	cbz x9, 7f
	cbz x0, 7f
	mov x10, #72
	madd x19, x9, x10, x19
7:	tbz x21, #8, next
	cmn x0, #4095           /* x0 >= -4095 (unsigned): an errno */
	b.lo next
done:
	b done

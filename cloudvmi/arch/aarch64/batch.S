	.text
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
	ldr x21, [x19, #56]
	ldr x0, [x19, #8]
	tbz x21, #0, 1f
	ldr x0, [x0]
1:	ldr x1, [x19, #16]
	tbz x21, #1, 2f
	ldr x1, [x1]
2:	ldr x2, [x19, #24]
	tbz x21, #2, 3f
	ldr x2, [x2]
3:	ldr x3, [x19, #32]
	tbz x21, #3, 4f
	ldr x3, [x3]
4:	ldr x4, [x19, #40]
	tbz x21, #4, 5f
	ldr x4, [x4]
5:	ldr x5, [x19, #48]
	tbz x21, #5, 6f
	ldr x5, [x5]
6:	ldr x8, [x19]
	svc #0
	str x0, [x19, #64]
	add x19, x19, #72
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

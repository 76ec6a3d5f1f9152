/* One entry of a call table, shared by batch.S and helper.S: x19 points at it (72 bytes:
   nr, arg0..arg5, flags, result; flags bit i (0-5): arg i is the address of the value). Its
   system call is made, the result stored, and x19 moved to the next entry; x21 keeps the
   flags. A system call keeps every register but x0, so nothing is saved around `svc`. */
	.macro CALL_ENTRY
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
	.endm

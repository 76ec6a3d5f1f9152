	.intel_syntax noprefix
	.text
	.globl _start
_start:
	/* r12: first entry, r13: end of table. Entries of 72 bytes:
	   nr, arg0..arg5, flags, result. flags bit i (0-5): arg i is the address of the value;
	   bit 8: stop the batch if this call fails; bits 16-23: parent skips this many entries
	   after a fork-like call returned non-zero (the child runs them). */
next:
	cmp r12, r13
	jae done
	mov rbx, [r12+56]
	mov rdi, [r12+8]
	test bl, 1
	jz 1f
	mov rdi, [rdi]
1:	mov rsi, [r12+16]
	test bl, 2
	jz 2f
	mov rsi, [rsi]
2:	mov rdx, [r12+24]
	test bl, 4
	jz 3f
	mov rdx, [rdx]
3:	mov r10, [r12+32]
	test bl, 8
	jz 4f
	mov r10, [r10]
4:	mov r8, [r12+40]
	test bl, 16
	jz 5f
	mov r8, [r8]
5:	mov r9, [r12+48]
	test bl, 32
	jz 6f
	mov r9, [r9]
6:	mov rax, [r12]
	syscall
	mov [r12+64], rax
	add r12, 72
	mov ecx, ebx
	shr ecx, 16
	and ecx, 0xff
	jz 7f
	test rax, rax
	jz 7f
	imul rcx, rcx, 72
	add r12, rcx
7:	test bh, 1
	jz next
	cmp rax, -4095
	jb next
done:
	jmp done

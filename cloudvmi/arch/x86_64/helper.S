	.intel_syntax noprefix
	.text
	.globl _start
	/* The persistent channel's guest helper. Entered in a hijacked thread with r14 pointing
	   at the mailbox: a shared anonymous mapping (mailbox page, call table, data).
	   The hijacked thread forks a child that forks the helper and exits, reaps that child,
	   and parks at `parked` (a breakpoint there gives it back). The helper is thus an orphan
	   that init reaps; it waits for the host to bump SEQ, runs the table, sets DONE = SEQ. */
	.equ MAGIC, 0x00
	.equ SEQ, 0x08
	.equ DONE, 0x10
	.equ FIRST, 0x18
	.equ END, 0x20
	.equ HEARTBEAT, 0x28
	.equ COMMAND, 0x30      /* non-zero: exit */
	.equ PID, 0x38          /* the helper's pid, written when it is ready */
	.equ STATE, 0x40        /* 1 ready, 2 gone */
	.equ LEASE, 0x48        /* idle ticks without a new heartbeat before the helper exits */
	.equ SPIN, 0x50         /* yields after a batch before it sleeps between looks */
	.equ SIZE, 0x58         /* bytes of the mapping (touched and locked) */
	.equ TICK, 0x60         /* struct timespec: the idle sleep */
	.equ MASK, 0x70         /* sigset: every signal blocked */
	.equ NAME, 0x78         /* its comm, 16 bytes */
	.equ CHILD, 0x88        /* the first child's pid (hijacked side) */
	.equ REAPED, 0x90       /* wait4's result (hijacked side) */
	.equ ROOT, 0x98         /* "/" */
_start:
	mov eax, 57             /* fork */
	syscall
	test rax, rax
	jz child
	mov [r14+CHILD], rax
	js parked
	mov rdi, rax
	xor esi, esi
	xor edx, edx
	xor r10d, r10d
	mov eax, 61             /* wait4(child, NULL, 0, NULL) */
	syscall
	mov [r14+REAPED], rax
parked:
	jmp parked
child:
	mov eax, 57             /* fork */
	syscall
	test rax, rax
	jz helper
	xor edi, edi
	mov eax, 60             /* exit */
	syscall
helper:
	mov eax, 112            /* setsid: no terminal's signals */
	syscall
	mov edi, 15             /* prctl(PR_SET_NAME, NAME): say what it is */
	lea rsi, [r14+NAME]
	mov eax, 157
	syscall
	mov edi, 2              /* rt_sigprocmask(SIG_SETMASK, MASK, NULL, 8) */
	lea rsi, [r14+MASK]
	xor edx, edx
	mov r10d, 8
	mov eax, 14
	syscall
	mov edi, 3              /* close_range(3, ~0, 0): hold none of the parent's files */
	mov esi, -1
	xor edx, edx
	mov eax, 436
	syscall
	lea rdi, [r14+ROOT]     /* chdir("/") */
	mov eax, 80
	syscall
	mov rcx, r14            /* write to every page: its own writable entries */
	mov rdx, r14
	add rdx, [r14+SIZE]
touch:
	or byte ptr [rcx], 0
	add rcx, 4096
	cmp rcx, rdx
	jb touch
	mov rdi, r14            /* mlock: never swapped out under the host's writes */
	mov rsi, [r14+SIZE]
	mov eax, 149
	syscall
	mov eax, 39             /* getpid */
	syscall
	mov [r14+PID], rax
	mov qword ptr [r14+STATE], 1
	xor r15d, r15d          /* looks since the last batch */
	xor ebp, ebp            /* sleeps since the heartbeat last moved */
	push qword ptr [r14+HEARTBEAT]
wait:
	mov rax, [r14+SEQ]
	cmp rax, [r14+DONE]
	jne work
	cmp qword ptr [r14+COMMAND], 0
	jne quit
	inc r15
	cmp r15, [r14+SPIN]
	jae idle
	mov eax, 24             /* sched_yield */
	syscall
	jmp wait
idle:
	mov rax, [r14+HEARTBEAT]
	cmp rax, [rsp]
	je stale
	mov [rsp], rax
	xor ebp, ebp
stale:
	inc rbp
	cmp rbp, [r14+LEASE]
	jae quit
	lea rdi, [r14+TICK]     /* nanosleep(TICK, NULL) */
	xor esi, esi
	mov eax, 35
	syscall
	jmp wait
work:
	push rax
	mov r12, [r14+FIRST]
	mov r13, [r14+END]
	call run
	pop rax
	mov [r14+DONE], rax
	xor r15d, r15d
	xor ebp, ebp
	jmp wait
quit:
	mov qword ptr [r14+STATE], 2
	xor edi, edi
	mov eax, 231            /* exit_group */
	syscall
	/* The batch interpreter of batch.S, returning instead of parking. */
run:
	cmp r12, r13
	jae ran
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
	test bh, 1
	jz run
	cmp rax, -4095
	jb run
ran:
	ret

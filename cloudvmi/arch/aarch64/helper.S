	.text
	.include "entry.S"
	.globl _start
	/* The persistent channel's guest helper, as x86_64/helper.S. Entered in a hijacked
	   thread with x28 pointing at the mailbox: a shared anonymous mapping (mailbox page,
	   call table, data). The hijacked thread forks a child that forks the helper and exits,
	   reaps that child, and parks at `parked` (a breakpoint there gives it back). The helper
	   is thus an orphan that init reaps; it waits for the host to bump SEQ, runs the table,
	   sets DONE = SEQ. SEQ is read with acquire and DONE, STATE written with release, so a
	   weakly ordered CPU never runs a stale table or reports results before they are stored.
	   The stack is never used: a system call keeps every register but x0. */
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
	.equ SIGCHLD, 17
_start:
	mov x0, #SIGCHLD        /* clone(SIGCHLD, 0, 0, 0, 0): fork */
	mov x1, #0
	mov x2, #0
	mov x3, #0
	mov x4, #0
	mov x8, #220
	svc #0
	cbz x0, child
	str x0, [x28, #CHILD]
	tbnz x0, #63, parked
	mov x1, #0
	mov x2, #0
	mov x3, #0
	mov x8, #260            /* wait4(child, NULL, 0, NULL) */
	svc #0
	str x0, [x28, #REAPED]
parked:
	b parked
child:
	mov x0, #SIGCHLD        /* fork again */
	mov x1, #0
	mov x8, #220
	svc #0
	cbz x0, helper
	mov x0, #0
	mov x8, #93             /* exit */
	svc #0
helper:
	mov x8, #157            /* setsid: no terminal's signals */
	svc #0
	mov x0, #15             /* prctl(PR_SET_NAME, NAME): say what it is */
	add x1, x28, #NAME
	mov x8, #167
	svc #0
	mov x0, #2              /* rt_sigprocmask(SIG_SETMASK, MASK, NULL, 8) */
	add x1, x28, #MASK
	mov x2, #0
	mov x3, #8
	mov x8, #135
	svc #0
	mov x0, #3              /* close_range(3, ~0, 0): hold none of the parent's files */
	mov w1, #-1
	mov x2, #0
	mov x8, #436
	svc #0
	add x0, x28, #ROOT      /* chdir("/") */
	mov x8, #49
	svc #0
	mov x9, x28             /* write to every page: its own writable entries */
	ldr x10, [x28, #SIZE]
	add x10, x10, x28
touch:
	ldrb w11, [x9]
	strb w11, [x9]
	add x9, x9, #4096
	cmp x9, x10
	b.lo touch
	mov x0, x28             /* mlock: never swapped out under the host's writes */
	ldr x1, [x28, #SIZE]
	mov x8, #228
	svc #0
	mov x8, #172            /* getpid */
	svc #0
	str x0, [x28, #PID]
	mov x0, #1
	add x1, x28, #STATE
	stlr x0, [x1]
	mov x26, #0             /* looks since the last batch */
	mov x27, #0             /* sleeps since the heartbeat last moved */
	ldr x25, [x28, #HEARTBEAT]
wait:
	add x1, x28, #SEQ
	ldar x0, [x1]
	ldr x1, [x28, #DONE]
	cmp x0, x1
	b.ne work
	ldr x1, [x28, #COMMAND]
	cbnz x1, quit
	add x26, x26, #1
	ldr x1, [x28, #SPIN]
	cmp x26, x1
	b.hs idle
	mov x8, #124            /* sched_yield */
	svc #0
	b wait
idle:
	ldr x0, [x28, #HEARTBEAT]
	cmp x0, x25
	b.eq stale
	mov x25, x0
	mov x27, #0
stale:
	add x27, x27, #1
	ldr x1, [x28, #LEASE]
	cmp x27, x1
	b.hs quit
	add x0, x28, #TICK      /* nanosleep(TICK, NULL) */
	mov x1, #0
	mov x8, #101
	svc #0
	b wait
work:
	mov x24, x0             /* the SEQ this list answers */
	ldr x19, [x28, #FIRST]
	ldr x20, [x28, #END]
	bl run
	add x1, x28, #DONE
	stlr x24, [x1]
	mov x26, #0
	mov x27, #0
	b wait
quit:
	mov x0, #2
	add x1, x28, #STATE
	stlr x0, [x1]
	mov x0, #0
	mov x8, #94             /* exit_group */
	svc #0
	/* The batch interpreter of batch.S, returning instead of parking. */
run:
	cmp x19, x20
	b.hs ran
	CALL_ENTRY
	tbz x21, #8, run
	cmn x0, #4095
	b.lo run
ran:
	ret

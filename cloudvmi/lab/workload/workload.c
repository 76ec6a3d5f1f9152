/* CloudVMI lab workload: the guest processes whose state the tests read from outside.
 *   workload threads N    a process with N sleeping threads besides the main one
 *   workload files DIR    a process holding open files in DIR
 *   workload listen PORT  a process with a listening TCP socket on PORT
 *   workload counter      prints a counter every 100 ms and checks time never jumps back
 *   workload user UID     the counter, run as UID (a process without root's rights)
 *   workload sentinel FILE holds known values in general and vector registers, checks them
 *                         in a loop, and writes "rounds N corrupt M" into FILE after each round
 *   workload signals FILE counts SIGUSR1 and SIGRTMIN+1 deliveries into FILE every 200 ms
 *                         (handlers without SA_RESTART: a waiting call would be interrupted)
 *   workload fds N DIR    holds N descriptors of every kind: files (some deleted, at chosen
 *                         offsets, with odd names), directories, pipes, eventfd, epoll,
 *                         timerfd, signalfd, inotify, memfd, /dev/null, duplicates
 *   workload net PORT [N] TCP listeners on PORT..PORT+3 (IPv4 and IPv6, any and loopback),
 *                         N (100) established loopback connections (both ends held), UDP
 *                         sockets, UNIX stream, datagram and seqpacket sockets (named
 *                         /run/wl-PORT.*, abstract @wl-PORT, unnamed pairs)
 *   workload bench KIND N a guest-side benchmark: N rounds of CPU work (KIND cpu: integer
 *                         arithmetic, no system call) or of system calls (KIND sys: a
 *                         getppid and a 1-byte read of /dev/zero); prints "rounds N ns T",
 *                         T the elapsed CLOCK_MONOTONIC time; N 0: count rounds for 1 s
 *   workload spawn N      N children that wait in pause() (the process-count experiments),
 *                         then exits; the children are reparented to init
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stddef.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void *sleeper(void *arg)
{
	char name[16];
	snprintf(name, sizeof name, "wl-thread-%ld", (long)arg);
	prctl(PR_SET_NAME, name);
	for (;;)
		pause();
	return NULL;
}

static int threads(int n)
{
	for (long i = 0; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, sleeper, (void *)i))
			return 1;
	}
	for (;;)
		pause();
}

static int files(const char *dir)
{
	char path[256];
	for (int i = 0; i < 3; i++) {
		snprintf(path, sizeof path, "%s/held-%d.txt", dir, i);
		int fd = open(path, O_CREAT | O_RDWR, 0644);
		if (fd < 0)
			return 1;
		dprintf(fd, "held file %d\n", i);
	}
	for (;;)
		pause();
}

static int listen_on(int port)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8))
		return 1;
	for (;;) {
		int c = accept(s, NULL, NULL);
		if (c >= 0)
			close(c);
	}
}

static int counter(void)
{
	struct timespec last, now;
	clock_gettime(CLOCK_MONOTONIC, &last);
	for (unsigned long n = 0;; n++) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec < last.tv_sec) {
			printf("counter: time went back\n");
			return 2;
		}
		last = now;
		printf("counter %lu %ld.%03ld\n", n, (long)now.tv_sec, now.tv_nsec / 1000000);
		fflush(stdout);
		usleep(100000);
	}
}

/* One round: load sentinels, check them 50 million times, 0 if every check held. Nothing
 * in the loop touches memory or makes a system call: only a change made from outside (an
 * injection that did not restore a register) can break a check. */
static unsigned long sentinel_round(void)
{
	unsigned long bad;
#if defined(__aarch64__)
	/* x1..x15 and x19..x28 hold 0x5e5e00000000NN01 (NN the register number), v0, v1, v7
	 * and v15 copies of four of them; x0 is the scratch. */
#define SET(r, n) "movz " r ", #0x" n "01\n\tmovk " r ", #0x5e5e, lsl #48\n\t"
#define CHECK(r, n) "movz x0, #0x" n "01\n\tmovk x0, #0x5e5e, lsl #48\n\t" \
	"cmp x0, " r "\n\tb.ne 2f\n\t"
#define REGS(M) M("x1", "1") M("x2", "2") M("x3", "3") M("x4", "4") M("x5", "5") \
	M("x6", "6") M("x7", "7") M("x8", "8") M("x9", "9") M("x10", "10") M("x11", "11") \
	M("x12", "12") M("x13", "13") M("x14", "14") M("x15", "15") M("x19", "19") \
	M("x20", "20") M("x21", "21") M("x22", "22") M("x23", "23") M("x24", "24") \
	M("x25", "25") M("x26", "26") M("x27", "27") M("x28", "28")
	__asm__ volatile(
		REGS(SET)
		"fmov d0, x12\n\tfmov d1, x13\n\tfmov d7, x14\n\tfmov d15, x15\n\t"
		"movz x16, #0xf080\n\tmovk x16, #0x2fa, lsl #16\n"
		"1:\n\t"
		REGS(CHECK)
		"fmov x0, d0\n\tcmp x0, x12\n\tb.ne 2f\n\t"
		"fmov x0, d1\n\tcmp x0, x13\n\tb.ne 2f\n\t"
		"fmov x0, d7\n\tcmp x0, x14\n\tb.ne 2f\n\t"
		"fmov x0, d15\n\tcmp x0, x15\n\tb.ne 2f\n\t"
		"subs x16, x16, #1\n\tb.ne 1b\n\t"
		"mov x0, #0\n\tb 3f\n"
		"2:\tmov x0, #1\n"
		"3:\tmov %0, x0\n"
		: "=r"(bad)
		:
		: "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12",
		  "x13", "x14", "x15", "x16", "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26",
		  "x27", "x28", "v0", "v1", "v7", "v15", "cc");
#undef SET
#undef CHECK
#undef REGS
#else
	__asm__ volatile(
		"movabs $0x5e5e0000000000b1, %%rbx\n\t"
		"movabs $0x5e5e0000000000d1, %%rdx\n\t"
		"movabs $0x5e5e0000000000e1, %%rsi\n\t"
		"movabs $0x5e5e0000000000f1, %%rdi\n\t"
		"movabs $0x5e5e000000000081, %%r8\n\t"
		"movabs $0x5e5e000000000091, %%r9\n\t"
		"movabs $0x5e5e000000000101, %%r10\n\t"
		"movabs $0x5e5e000000000111, %%r11\n\t"
		"movabs $0x5e5e000000000121, %%r12\n\t"
		"movabs $0x5e5e000000000131, %%r13\n\t"
		"movabs $0x5e5e000000000141, %%r14\n\t"
		"movabs $0x5e5e000000000151, %%r15\n\t"
		"movq %%r12, %%xmm0\n\t"
		"movq %%r13, %%xmm1\n\t"
		"movq %%r14, %%xmm7\n\t"
		"movq %%r15, %%xmm15\n\t"
		"mov $50000000, %%ecx\n"
		"1:\n\t"
		"movabs $0x5e5e0000000000b1, %%rax\n\tcmp %%rax, %%rbx\n\tjne 2f\n\t"
		"movabs $0x5e5e0000000000d1, %%rax\n\tcmp %%rax, %%rdx\n\tjne 2f\n\t"
		"movabs $0x5e5e0000000000e1, %%rax\n\tcmp %%rax, %%rsi\n\tjne 2f\n\t"
		"movabs $0x5e5e0000000000f1, %%rax\n\tcmp %%rax, %%rdi\n\tjne 2f\n\t"
		"movabs $0x5e5e000000000081, %%rax\n\tcmp %%rax, %%r8\n\tjne 2f\n\t"
		"movabs $0x5e5e000000000091, %%rax\n\tcmp %%rax, %%r9\n\tjne 2f\n\t"
		"movabs $0x5e5e000000000101, %%rax\n\tcmp %%rax, %%r10\n\tjne 2f\n\t"
		"movabs $0x5e5e000000000111, %%rax\n\tcmp %%rax, %%r11\n\tjne 2f\n\t"
		"movabs $0x5e5e000000000121, %%rax\n\tcmp %%rax, %%r12\n\tjne 2f\n\t"
		"movabs $0x5e5e000000000131, %%rax\n\tcmp %%rax, %%r13\n\tjne 2f\n\t"
		"movabs $0x5e5e000000000141, %%rax\n\tcmp %%rax, %%r14\n\tjne 2f\n\t"
		"movabs $0x5e5e000000000151, %%rax\n\tcmp %%rax, %%r15\n\tjne 2f\n\t"
		"movq %%xmm0, %%rax\n\tcmp %%rax, %%r12\n\tjne 2f\n\t"
		"movq %%xmm1, %%rax\n\tcmp %%rax, %%r13\n\tjne 2f\n\t"
		"movq %%xmm7, %%rax\n\tcmp %%rax, %%r14\n\tjne 2f\n\t"
		"movq %%xmm15, %%rax\n\tcmp %%rax, %%r15\n\tjne 2f\n\t"
		"dec %%rcx\n\tjnz 1b\n\t"
		"xor %%eax, %%eax\n\tjmp 3f\n"
		"2:\tmov $1, %%eax\n"
		"3:\tmov %%rax, %0\n"
		: "=r"(bad)
		:
		: "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
		  "r14", "r15", "xmm0", "xmm1", "xmm7", "xmm15", "cc");
#endif
	return bad;
}

static int sentinel(const char *path)
{
	char tmp[256];
	unsigned long rounds = 0, corrupt = 0;
	snprintf(tmp, sizeof tmp, "%s.new", path);
	for (;;) {
		corrupt += sentinel_round();
		rounds++;
		FILE *f = fopen(tmp, "w");
		if (f) {
			fprintf(f, "rounds %lu corrupt %lu\n", rounds, corrupt);
			fclose(f);
			rename(tmp, path);
		}
	}
}

static volatile sig_atomic_t usr1_seen, rt_seen;

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		usr1_seen++;
	else
		rt_seen++;
}

static int signals(const char *path)
{
	struct sigaction sa = { .sa_handler = on_signal };
	char tmp[256];
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGRTMIN + 1, &sa, NULL);
	snprintf(tmp, sizeof tmp, "%s.new", path);
	for (;;) {
		FILE *f = fopen(tmp, "w");
		if (f) {
			fprintf(f, "usr1 %d rt %d\n", (int)usr1_seen, (int)rt_seen);
			fclose(f);
			rename(tmp, path);
		}
		usleep(200000);
	}
}

static int fds(int n, const char *dir)
{
	char path[256];
	int held = 0, fd, p[2];
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR2);
	/* One of each kind first, then files until N are open. */
	if (pipe2(p, O_NONBLOCK) == 0)
		held += 2;
	held += eventfd(3, EFD_CLOEXEC) >= 0;
	held += epoll_create1(0) >= 0;
	held += timerfd_create(CLOCK_MONOTONIC, 0) >= 0;
	held += signalfd(-1, &mask, 0) >= 0;
	held += inotify_init1(IN_NONBLOCK) >= 0;
	held += memfd_create("wl-memfd", 0) >= 0;
	held += open("/dev/null", O_WRONLY | O_APPEND) >= 0;
	held += open(dir, O_RDONLY | O_DIRECTORY) >= 0;
	held += dup(1) >= 0;
	for (int i = 0; held < n; i++, held++) {
		const char *kind = i % 10 == 3 ? "gone" : i % 10 == 7 ? "odd name\t(x)" : "file";
		snprintf(path, sizeof path, "%s/%s-%d", dir, kind, i);
		fd = open(path, O_CREAT | (i % 2 ? O_RDWR : O_WRONLY) | (i % 4 == 1 ? O_APPEND : 0),
			  0640);
		if (fd < 0)
			return 1;
		dprintf(fd, "file %d of the workload, padded to a known length.\n", i);
		lseek(fd, i % 37, SEEK_SET);
		if (i % 10 == 3)
			unlink(path); /* deleted but held open */
	}
	for (;;)
		pause();
}

/* ADDRESS:PORT of FAMILY (AF_INET or AF_INET6) into A; its length. */
static socklen_t inet_address(int family, const char *address, int port,
			      struct sockaddr_storage *a)
{
	memset(a, 0, sizeof *a);
	if (family == AF_INET) {
		struct sockaddr_in *v4 = (struct sockaddr_in *)a;
		v4->sin_family = AF_INET;
		v4->sin_port = htons(port);
		inet_pton(AF_INET, address, &v4->sin_addr);
		return sizeof *v4;
	}
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)a;
	v6->sin6_family = AF_INET6;
	v6->sin6_port = htons(port);
	inet_pton(AF_INET6, address, &v6->sin6_addr);
	return sizeof *v6;
}

static int tcp_listener(int family, const char *address, int port)
{
	int s = socket(family, SOCK_STREAM, 0), one = 1;
	struct sockaddr_storage a;
	if (s < 0)
		return -1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	socklen_t len = inet_address(family, address, port, &a);
	if (bind(s, (struct sockaddr *)&a, len) || listen(s, 128))
		return -1;
	return s;
}

static int tcp_connect(int family, const char *address, int port)
{
	int s = socket(family, SOCK_STREAM, 0);
	struct sockaddr_storage a;
	socklen_t len = inet_address(family, address, port, &a);
	if (s < 0 || connect(s, (struct sockaddr *)&a, len))
		return -1;
	return s;
}

static int unix_socket(int type, const char *path, int abstract)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, type, 0);
	socklen_t len = offsetof(struct sockaddr_un, sun_path) + strlen(path) + abstract;
	strncpy(a.sun_path + abstract, path, sizeof a.sun_path - 2);
	unlink(path);
	if (s < 0 || bind(s, (struct sockaddr *)&a, len))
		return -1;
	if (type != SOCK_DGRAM && listen(s, 16))
		return -1;
	return s;
}

static int unix_connect(int type, const char *path, int abstract)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int s = socket(AF_UNIX, type, 0);
	socklen_t len = offsetof(struct sockaddr_un, sun_path) + strlen(path) + abstract;
	strncpy(a.sun_path + abstract, path, sizeof a.sun_path - 2);
	if (s < 0 || connect(s, (struct sockaddr *)&a, len))
		return -1;
	return s;
}

static int udp(int family, const char *address, int port)
{
	int s = socket(family, SOCK_DGRAM, 0);
	struct sockaddr_storage a;
	socklen_t len = inet_address(family, address, port, &a);
	if (s < 0 || bind(s, (struct sockaddr *)&a, len))
		return -1;
	return s;
}

static int net(int port, int connections)
{
	int any4 = tcp_listener(AF_INET, "0.0.0.0", port);
	int lo4 = tcp_listener(AF_INET, "127.0.0.1", port + 1);
	int any6 = tcp_listener(AF_INET6, "::", port + 2);
	int lo6 = tcp_listener(AF_INET6, "::1", port + 3);
	int pair[2], u;
	if (any4 < 0 || lo4 < 0 || any6 < 0 || lo6 < 0)
		return 1;
	for (int i = 0; i < connections; i++) { /* both ends held: 2N established sockets */
		int family = i % 2 ? AF_INET6 : AF_INET;
		int listener = i % 4 == 3 ? any6 : i % 2 ? lo6 : lo4;
		const char *to = i % 4 == 3 ? "::ffff:127.0.0.1" : i % 2 ? "::1" : "127.0.0.1";
		int c = tcp_connect(i % 4 == 3 ? AF_INET6 : family, to,
				    i % 4 == 3 ? port + 2 : i % 2 ? port + 3 : port + 1);
		if (c < 0 || accept(listener, NULL, NULL) < 0)
			return 1;
	}
	u = udp(AF_INET, "0.0.0.0", port + 10);
	udp(AF_INET, "127.0.0.1", port + 11);
	udp(AF_INET6, "::", port + 12);
	udp(AF_INET6, "::1", port + 13);
	if (u < 0)
		return 1;
	/* UNIX names of this instance's own (another instance may run beside it) */
	char sock[64], abstract[64], dgram[64], seq[64];
	snprintf(sock, sizeof sock, "/run/wl-%d.sock", port);
	snprintf(abstract, sizeof abstract, "wl-%d", port);
	snprintf(dgram, sizeof dgram, "/run/wl-%d.dgram", port);
	snprintf(seq, sizeof seq, "/run/wl-%d.seq", port);
	u = unix_socket(SOCK_STREAM, sock, 0);
	if (u < 0 || unix_connect(SOCK_STREAM, sock, 0) < 0 ||
	    unix_connect(SOCK_STREAM, sock, 0) < 0)
		return 1;
	accept(u, NULL, NULL);
	if (unix_socket(SOCK_STREAM, abstract, 1) < 0 || unix_socket(SOCK_DGRAM, dgram, 0) < 0 ||
	    unix_socket(SOCK_SEQPACKET, seq, 0) < 0)
		return 1;
	socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
	socketpair(AF_UNIX, SOCK_DGRAM, 0, pair);
	for (;;)
		pause();
}

static unsigned long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000ULL + t.tv_nsec;
}

static volatile unsigned long long bench_sink;

static void bench_round(int sys, int zero)
{
	if (sys) {
		char c;

		bench_sink += getppid();
		bench_sink += read(zero, &c, 1);
	} else {
		unsigned long long x = bench_sink | 1;

		for (int i = 0; i < 200; i++)
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		bench_sink = x;
	}
}

static int bench(const char *kind, long long rounds)
{
	int sys = !strcmp(kind, "sys");
	int zero = open("/dev/zero", O_RDONLY);
	unsigned long long start = now_ns(), done = 0;

	if (zero < 0 || (!sys && strcmp(kind, "cpu")))
		return 64;
	if (rounds > 0) {
		for (long long i = 0; i < rounds; i++)
			bench_round(sys, zero);
		done = rounds;
	} else {
		while (now_ns() - start < 1000000000ULL) {
			for (int i = 0; i < 100; i++)
				bench_round(sys, zero);
			done += 100;
		}
	}
	printf("rounds %llu ns %llu\n", done, now_ns() - start);
	return 0;
}

static int spawn(int n)
{
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();

		if (pid < 0)
			return 1;
		if (pid == 0) {
			for (;;)
				pause();
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "bench"))
		return bench(argv[2], atoll(argv[3]));
	if (argc >= 3 && !strcmp(argv[1], "spawn"))
		return spawn(atoi(argv[2]));
	if (argc >= 3 && !strcmp(argv[1], "threads"))
		return threads(atoi(argv[2]));
	if (argc >= 3 && !strcmp(argv[1], "files"))
		return files(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "listen"))
		return listen_on(atoi(argv[2]));
	if (argc >= 4 && !strcmp(argv[1], "fds"))
		return fds(atoi(argv[2]), argv[3]);
	if (argc >= 3 && !strcmp(argv[1], "net"))
		return net(atoi(argv[2]), argc >= 4 ? atoi(argv[3]) : 100);
	if (argc >= 2 && !strcmp(argv[1], "counter"))
		return counter();
	if (argc >= 3 && !strcmp(argv[1], "sentinel"))
		return sentinel(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "signals"))
		return signals(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "user")) {
		if (setgid(atoi(argv[2])) || setuid(atoi(argv[2])))
			return 1;
		return counter();
	}
	fprintf(stderr, "usage: workload threads N | files DIR | listen PORT | counter | user UID | "
		"sentinel FILE | signals FILE | fds N DIR | net PORT [N] | bench cpu|sys N | "
		"spawn N\n");
	return 64;
}

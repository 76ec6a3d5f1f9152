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
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
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

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "threads"))
		return threads(atoi(argv[2]));
	if (argc >= 3 && !strcmp(argv[1], "files"))
		return files(argv[2]);
	if (argc >= 3 && !strcmp(argv[1], "listen"))
		return listen_on(atoi(argv[2]));
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
		"sentinel FILE | signals FILE\n");
	return 64;
}

/* CloudVMI lab workload: the guest processes whose state the tests read from outside.
 *   workload threads N    a process with N sleeping threads besides the main one
 *   workload files DIR    a process holding open files in DIR
 *   workload listen PORT  a process with a listening TCP socket on PORT
 *   workload counter      prints a counter every 100 ms and checks time never jumps back
 *   workload user UID     the counter, run as UID (a process without root's rights)
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
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
	if (argc >= 3 && !strcmp(argv[1], "user")) {
		if (setgid(atoi(argv[2])) || setuid(atoi(argv[2])))
			return 1;
		return counter();
	}
	fprintf(stderr, "usage: workload threads N | files DIR | listen PORT | counter | user UID\n");
	return 64;
}

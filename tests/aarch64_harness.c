/* Runs arm64 guest code under qemu-user on real system calls, for tests/test_aarch64_code.py.

   batch BASE BLOB OUT: map BLOB (code page, call table, data) at BASE, call the code with
   x19 and x20 = the two words at 0x800 of the code page (the table's first entry and end:
   the test puts them there), write the mapping back to OUT.
   helper CODE_BASE CODE MAILBOX_BASE MAILBOX OUT: map the helper's code privately and the
   mailbox shared, fork a thread of control that enters the helper with x28 = the mailbox
   (it forks the helper and parks), then act as the host: wait for READY, bump SEQ, wait for
   DONE, ask it to quit, wait for GONE, kill the parked one; write the mailbox to OUT.
   Prints "pid=<own pid> parked=<pid of the parked one>". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { SEQ = 0x08, DONE = 0x10, COMMAND = 0x30, STATE = 0x40 };

static void *map_file(const char *path, uintptr_t base, int shared, int exec, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    rewind(f);
    size_t len = (*size + 4095) & ~(size_t)4095;
    int prot = PROT_READ | PROT_WRITE | (exec ? PROT_EXEC : 0);
    int flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
    void *p = mmap((void *)base, len, prot, flags, -1, 0);
    if (p != (void *)base) { perror("mmap"); exit(2); }
    if (fread(p, 1, *size, f) != *size) { perror("fread"); exit(2); }
    fclose(f);
    return p;
}

static void save(const char *path, const void *p, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, size, f) != size) { perror(path); exit(2); }
    fclose(f);
}

static uint64_t load(volatile uint64_t *mailbox, int field) {
    return __atomic_load_n(&mailbox[field / 8], __ATOMIC_ACQUIRE);
}

static int await(volatile uint64_t *mailbox, int field, uint64_t value) {
    for (int i = 0; i < 20000; i++) {  /* 20 s */
        if (load(mailbox, field) == value) return 1;
        usleep(1000);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "batch")) {
        size_t size;
        uintptr_t base = strtoull(argv[2], 0, 0);
        uint64_t *p = map_file(argv[3], base, 0, 1, &size);
        __builtin___clear_cache((char *)p, (char *)p + 4096);
        register uint64_t first __asm__("x19") = p[256];
        register uint64_t end __asm__("x20") = p[257];
        __asm__ volatile("blr %2" : "+r"(first), "+r"(end) : "r"(p)
                         : "x0", "x1", "x2", "x3", "x4", "x5", "x8", "x9", "x10", "x21",
                           "x30", "memory", "cc");
        save(argv[4], p, size);
        printf("pid=%d parked=0\n", getpid());
        return 0;
    }
    if (argc == 7 && !strcmp(argv[1], "helper")) {
        size_t code_size, size;
        void *code = map_file(argv[3], strtoull(argv[2], 0, 0), 0, 1, &code_size);
        volatile uint64_t *mailbox = map_file(argv[5], strtoull(argv[4], 0, 0), 1, 0, &size);
        __builtin___clear_cache((char *)code, (char *)code + code_size);
        fflush(stdout);
        pid_t parked = fork();
        if (parked == 0) {
            register volatile uint64_t *x28 __asm__("x28") = mailbox;
            __asm__ volatile("br %1" : : "r"(x28), "r"(code) : "memory");
            _exit(3);
        }
        int ok = await(mailbox, STATE, 1);
        if (ok) {
            __atomic_store_n(&mailbox[SEQ / 8], 1, __ATOMIC_RELEASE);
            ok = await(mailbox, DONE, 1);
        }
        __atomic_store_n(&mailbox[COMMAND / 8], 1, __ATOMIC_RELEASE);
        ok = await(mailbox, STATE, 2) && ok;
        kill(parked, SIGKILL);
        waitpid(parked, 0, 0);
        save(argv[6], (const void *)mailbox, size);
        printf("pid=%d parked=%d\n", getpid(), parked);
        return ok ? 0 : 1;
    }
    fprintf(stderr, "usage: see the comment at the top\n");
    return 2;
}

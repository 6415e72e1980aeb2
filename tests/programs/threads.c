/* A multithreaded program whose threads each hold some state a checkpoint must carry
 * exactly, for tests/checkpoint_restore.rs:
 *
 *   mutex-a, mutex-b  take one mutex in a loop and sleep holding it, so that the other
 *                     waits for it; under it they update a pair of counters that must
 *                     stay equal (a lost or doubled lock shows at once)
 *   condwait          blocked in pthread_cond_wait (a futex wait, no timeout), woken by
 *                     the main thread every 50 ms; the generation it sees never goes back
 *   sleeper           nanosleep loops; CLOCK_MONOTONIC never goes backwards and a completed
 *                     sleep lasted at least what was asked
 *   avx               keeps values live in ymm8..ymm10 across 200 million iterations of
 *                     one asm loop and checks the result of each round
 *   altstack          raises SIGUSR1 to itself; the handler runs on the thread's
 *                     sigaltstack and checks that it does
 *
 * Each thread prints "hb NAME SEQ" about every 300 ms (SEQ counts up from 1), and any
 * inconsistency as "ERROR ...". Build: cc -O2 -pthread -mavx2 threads.c */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct hb {
    const char *name;
    uint64_t seq;
    uint64_t last;
};

/* Prints a heartbeat if 300 ms have passed since the last one. */
static void beat(struct hb *h) {
    uint64_t t = now_ns();
    if (h->seq == 0 || t - h->last >= 300000000ull) {
        h->seq++;
        h->last = t;
        say("hb %s %llu", h->name, (unsigned long long)h->seq);
    }
}

/* ---- mutexes ---- */
static pthread_mutex_t pair_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile uint64_t pair_a, pair_b;

static void *mutex_thread(void *arg) {
    struct hb h = {arg, 0, 0};
    for (;;) {
        pthread_mutex_lock(&pair_lock);
        if (pair_a != pair_b) say("ERROR %s: pair %llu != %llu under the lock", h.name, (unsigned long long)pair_a, (unsigned long long)pair_b);
        pair_a++;
        /* Sleep holding the lock: the other mutex thread waits for it in a futex. */
        struct timespec req = {0, 2 * 1000 * 1000};
        while (nanosleep(&req, &req) != 0 && errno == EINTR) {
        }
        pair_b++;
        pthread_mutex_unlock(&pair_lock);
        req.tv_nsec = 1000 * 1000;
        while (nanosleep(&req, &req) != 0 && errno == EINTR) {
        }
        beat(&h);
    }
    return NULL;
}

/* ---- condition variable (futex wait with no timeout) ---- */
static pthread_mutex_t cond_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static uint64_t generation;

static void *cond_thread(void *arg) {
    struct hb h = {arg, 0, 0};
    uint64_t seen = 0;
    pthread_mutex_lock(&cond_lock);
    for (;;) {
        while (generation == seen) pthread_cond_wait(&cond, &cond_lock);
        if (generation < seen) say("ERROR condwait: generation went back from %llu to %llu", (unsigned long long)seen, (unsigned long long)generation);
        seen = generation;
        beat(&h);
    }
    return NULL;
}

/* ---- nanosleep ---- */
static void *sleep_thread(void *arg) {
    struct hb h = {arg, 0, 0};
    uint64_t prev = now_ns();
    for (;;) {
        struct timespec req = {0, 20 * 1000 * 1000}, rem;
        uint64_t t0 = now_ns();
        while (nanosleep(&req, &rem) != 0) {
            if (errno != EINTR) {
                say("ERROR sleeper: nanosleep: %s", strerror(errno));
                break;
            }
            req = rem;
        }
        uint64_t t1 = now_ns();
        if (t1 < prev) say("ERROR sleeper: CLOCK_MONOTONIC went back from %llu to %llu", (unsigned long long)prev, (unsigned long long)t1);
        if (t1 < t0 + 20 * 1000 * 1000) say("ERROR sleeper: a 20 ms sleep took %lld ns", (long long)(t1 - t0));
        prev = t1;
        beat(&h);
    }
    return NULL;
}

/* ---- AVX: state live in ymm registers across a long loop ---- */
static void *avx_thread(void *arg) {
    struct hb h = {arg, 0, 0};
    /* About 100 ms of loop: most of the time this thread is inside it, its state held in
     * ymm8..ymm10 and rcx only. */
    const uint64_t n = 200 * 1000 * 1000;
    for (uint64_t round = 1;; round++) {
        uint64_t start[4] = {round, round * 0x9e3779b97f4a7c15ull, ~round, round << 40};
        uint64_t inc[4] = {1, 3, 0x100000001ull, 0xdeadbeefcafebabeull};
        uint64_t x[4], acc[4];
        __asm__ volatile(
            "vmovdqu %[s], %%ymm8\n\t"
            "vmovdqu %[i], %%ymm9\n\t"
            "vpxor %%ymm10, %%ymm10, %%ymm10\n\t"
            "mov %[n], %%rcx\n\t"
            "1:\n\t"
            "vpaddq %%ymm9, %%ymm8, %%ymm8\n\t"
            "vpaddq %%ymm8, %%ymm10, %%ymm10\n\t"
            "dec %%rcx\n\t"
            "jnz 1b\n\t"
            "vmovdqu %%ymm8, %[x]\n\t"
            "vmovdqu %%ymm10, %[acc]\n\t"
            "vzeroupper\n\t"
            : [x] "=m"(x), [acc] "=m"(acc)
            : [s] "m"(start), [i] "m"(inc), [n] "r"(n)
            : "rcx", "xmm8", "xmm9", "xmm10", "memory", "cc");
        for (int k = 0; k < 4; k++) {
            /* x_n = s + n*i; acc = sum over j = 1..n of (s + j*i) = n*s + i*n(n+1)/2, mod 2^64. */
            uint64_t ex = start[k] + n * inc[k];
            uint64_t eacc = n * start[k] + inc[k] * ((n / 2) * (n + 1));
            if (x[k] != ex || acc[k] != eacc)
                say("ERROR avx: round %llu lane %d: x %llx acc %llx, expected %llx %llx", (unsigned long long)round, k,
                    (unsigned long long)x[k], (unsigned long long)acc[k], (unsigned long long)ex, (unsigned long long)eacc);
        }
        beat(&h);
        struct timespec req = {0, 30 * 1000 * 1000};
        while (nanosleep(&req, &req) != 0 && errno == EINTR) {
        }
    }
    return NULL;
}

/* ---- a signal handler on an alternate stack ---- */
static __thread char *alt_base;
static __thread size_t alt_size;
static __thread volatile uint64_t handled;
static __thread volatile int handler_error;

static void on_usr1(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)si;
    (void)uc;
    char here;
    stack_t cur;
    if (!(&here >= alt_base && &here < alt_base + alt_size)) handler_error = 1;
    if (sigaltstack(NULL, &cur) != 0 || !(cur.ss_flags & SS_ONSTACK)) handler_error = 2;
    handled++;
}

static void *altstack_thread(void *arg) {
    struct hb h = {arg, 0, 0};
    alt_size = 64 * 1024;
    alt_base = malloc(alt_size);
    stack_t ss = {.ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) say("ERROR altstack: sigaltstack: %s", strerror(errno));
    pid_t tid = (pid_t)syscall(SYS_gettid);
    for (;;) {
        uint64_t before = handled;
        syscall(SYS_tgkill, getpid(), tid, SIGUSR1);
        if (handled != before + 1) say("ERROR altstack: handler ran %llu times for one signal", (unsigned long long)(handled - before));
        if (handler_error) {
            say("ERROR altstack: the handler %s", handler_error == 1 ? "did not run on the alternate stack" : "was not SS_ONSTACK");
            handler_error = 0;
        }
        stack_t cur;
        if (sigaltstack(NULL, &cur) != 0 || cur.ss_sp != alt_base || cur.ss_size != alt_size || (cur.ss_flags & SS_DISABLE))
            say("ERROR altstack: the alternate stack changed: sp %p size %zu flags %d", cur.ss_sp, cur.ss_size, cur.ss_flags);
        struct timespec req = {0, 10 * 1000 * 1000};
        while (nanosleep(&req, &req) != 0 && errno == EINTR) {
        }
        beat(&h);
    }
    return NULL;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) say("ERROR main: sigaction: %s", strerror(errno));

    struct {
        const char *name;
        void *(*fn)(void *);
    } threads[] = {
        {"mutex-a", mutex_thread}, {"mutex-b", mutex_thread}, {"condwait", cond_thread},
        {"sleeper", sleep_thread}, {"avx", avx_thread},       {"altstack", altstack_thread},
    };
    for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++) {
        pthread_t t;
        int e = pthread_create(&t, NULL, threads[i].fn, (void *)threads[i].name);
        if (e != 0) say("ERROR main: pthread_create %s: %s", threads[i].name, strerror(e));
        pthread_setname_np(t, threads[i].name);
    }
    struct hb h = {"main", 0, 0};
    say("started");
    for (;;) {
        struct timespec req = {0, 50 * 1000 * 1000};
        while (nanosleep(&req, &req) != 0 && errno == EINTR) {
        }
        pthread_mutex_lock(&cond_lock);
        generation++;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&cond_lock);
        beat(&h);
    }
}

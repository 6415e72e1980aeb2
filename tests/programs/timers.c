/* POSIX timers and membarrier registrations, for tests/checkpoint_timers.rs.
 *
 * Usage: timers TRIGGER   (TRIGGER: a path the test creates once the process was moved)
 *
 * Makes, with ids that are not simply 0, 1, 2… (two timers are made and deleted first):
 *  - sig:    CLOCK_MONOTONIC, every 300 ms, SIGRTMIN+1 with value 111 to the process;
 *  - thread: CLOCK_MONOTONIC, every 400 ms, SIGRTMIN+2 with value 222 to a second thread
 *            (SIGEV_THREAD_ID), whose handler checks it runs in that thread;
 *  - cb:     glibc's SIGEV_THREAD, every 500 ms, a callback with a pointer value (glibc
 *            aims the kernel timer at its helper thread);
 *  - none:   CLOCK_BOOTTIME, SIGEV_NONE, one-shot in 3000 s;
 *  - abs:    CLOCK_REALTIME, absolute, now + 7200 s, SIGRTMIN+3 with value 333;
 *  - long:   CLOCK_MONOTONIC, first in 500 s then every 1000 s, SIGRTMIN+4 with value 444;
 *  - cpu:    the process's CPU clock, SIGEV_NONE, in 1000 s of CPU time;
 *  - plain:  CLOCK_MONOTONIC with no sigevent (SIGALRM, value = its id), disarmed;
 *  - fired:  CLOCK_MONOTONIC, one-shot in 10 ms, SIGRTMIN+5 with value 555, blocked: it
 *            has expired (disarmed) and its signal waits;
 * and registers membarrier private expedited. Prints "ready" once each periodic timer has
 * signalled; after TRIGGER exists it checks from inside: /proc/self/timers reads as
 * before; timer_gettime works on every id, each period is the same, each time left is at
 * most what it was and not near 0 for the long ones; the absolute one still expires at
 * its wall-clock time (within 1 s: the test keeps the container away for longer), the
 * relative ones went on from where they stood; the fired one still reads expired, and
 * its signal arrives exactly once when taken; each periodic timer signals again,
 * with its value, to its thread; membarrier's registrations are the same and a private
 * expedited barrier succeeds. Then prints "verdict ok" or "verdict BAD …".
 *
 * Usage: timers cpu | timers overrun   (timers a checkpoint must refuse)
 *  - cpu:     a second thread, and a timer on the calling thread's CPU clock (which
 *             thread's, nothing outside the process can tell);
 *  - overrun: a timer every 1 ms whose signal is blocked, taken once by sigwaitinfo after
 *             50 ms: its last expiry overran ~49 times (timer_getoverrun), a count no call
 *             sets again.
 * Each prints "ready ID", then "tick N" every 200 ms, forever.
 * Build: cc -O2 -pthread timers.c */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

#define MS 1000000L
#define GET_REGISTRATIONS 512 /* MEMBARRIER_CMD_GET_REGISTRATIONS, Linux 6.3 */

enum { SIG, THREAD, CB, NONE, ABS, LONG, CPU, PLAIN, FIRED, N };
static const char *names[N] = {"sig", "thread", "cb", "none", "abs", "long", "cpu", "plain", "fired"};
static timer_t timers[N];
static struct itimerspec before[N];

static atomic_int count[N];
static atomic_int bad_value, bad_thread, bad_code;
static atomic_int worker_tid;
static int cb_token;

static void die(const char *what) {
    say("verdict BAD %s: %s", what, strerror(errno));
    exit(1);
}

static void on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    int which = sig == SIGRTMIN + 1 ? SIG : THREAD;
    int want = which == SIG ? 111 : 222;
    if (info->si_code != SI_TIMER) atomic_fetch_add(&bad_code, 1);
    if (info->si_value.sival_int != want) atomic_fetch_add(&bad_value, 1);
    if (which == THREAD && gettid() != atomic_load(&worker_tid)) atomic_fetch_add(&bad_thread, 1);
    atomic_fetch_add(&count[which], 1);
}

static void on_callback(union sigval v) {
    if (v.sival_ptr != &cb_token) atomic_fetch_add(&bad_value, 1);
    atomic_fetch_add(&count[CB], 1);
}

static void *worker(void *arg) {
    (void)arg;
    atomic_store(&worker_tid, gettid());
    for (;;) pause();
    return NULL;
}

static void make(int which, clockid_t clock, struct sigevent *ev) {
    if (timer_create(clock, ev, &timers[which])) die(names[which]);
}

static void arm(int which, int flags, long first_ms, long every_ms) {
    struct itimerspec its = {{every_ms / 1000, (every_ms % 1000) * MS}, {first_ms / 1000, (first_ms % 1000) * MS}};
    if (flags) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        its.it_value.tv_sec += now.tv_sec;
    }
    if (timer_settime(timers[which], flags, &its, NULL)) die(names[which]);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * MS};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

static char *read_timers(void) {
    static char buf[2][8192];
    static int which;
    char *b = buf[which++ % 2];
    FILE *f = fopen("/proc/self/timers", "r");
    if (!f) die("open /proc/self/timers");
    size_t n = fread(b, 1, sizeof buf[0] - 1, f);
    b[n] = 0;
    fclose(f);
    return b;
}

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

/* When the timer expires next, on the wall clock. */
static long long wall_expiry(timer_t t) {
    struct itimerspec its;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (timer_gettime(t, &its)) die("timer_gettime");
    return ns(now) + ns(its.it_value);
}

/* The refused kinds: see the usage above. */
_Noreturn static void refused(const char *mode) {
    timer_t t;
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN + 1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (!strcmp(mode, "cpu")) {
        pthread_t w;
        if (pthread_create(&w, NULL, worker, NULL)) die("pthread_create");
        ev.sigev_notify = SIGEV_NONE;
        if (timer_create(CLOCK_THREAD_CPUTIME_ID, &ev, &t)) die("timer_create");
        struct itimerspec its = {{0, 0}, {1000, 0}};
        if (timer_settime(t, 0, &its, NULL)) die("timer_settime");
    } else {
        if (timer_create(CLOCK_MONOTONIC, &ev, &t)) die("timer_create");
        struct itimerspec its = {{0, MS}, {0, MS}};
        if (timer_settime(t, 0, &its, NULL)) die("timer_settime");
        sleep_ms(50);
        siginfo_t info;
        if (sigwaitinfo(&set, &info) < 0) die("sigwaitinfo");
        say("overrun %d", timer_getoverrun(t));
    }
    say("ready %ld", (long)t);
    for (long n = 0;; n++) {
        say("tick %ld", n);
        sleep_ms(200);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    if (!strcmp(argv[1], "cpu") || !strcmp(argv[1], "overrun")) refused(argv[1]);
    const char *trigger = argv[1];
    struct sigaction sa = {0};
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 1, &sa, NULL);
    sigaction(SIGRTMIN + 2, &sa, NULL);
    /* Blocked in every thread (each inherits it): the fired timer's signal waits. */
    sigset_t fired;
    sigemptyset(&fired);
    sigaddset(&fired, SIGRTMIN + 5);
    pthread_sigmask(SIG_BLOCK, &fired, NULL);
    /* Only the worker takes the thread timer's signal: the kernel aims it there anyway. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 2);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t w;
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    if (pthread_create(&w, NULL, worker, NULL)) die("pthread_create");
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    while (!atomic_load(&worker_tid)) sleep_ms(1);

    timer_t gone[2];
    for (int i = 0; i < 2; i++)
        if (timer_create(CLOCK_MONOTONIC, NULL, &gone[i])) die("gone");
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN + 1;
    ev.sigev_value.sival_int = 111;
    make(SIG, CLOCK_MONOTONIC, &ev);
    timer_delete(gone[0]);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = SIGRTMIN + 2;
    ev.sigev_value.sival_int = 222;
    ev._sigev_un._tid = atomic_load(&worker_tid);
    make(THREAD, CLOCK_MONOTONIC, &ev);
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD;
    ev.sigev_notify_function = on_callback;
    ev.sigev_value.sival_ptr = &cb_token;
    make(CB, CLOCK_MONOTONIC, &ev);
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_NONE;
    make(NONE, CLOCK_BOOTTIME, &ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN + 3;
    ev.sigev_value.sival_int = 333;
    make(ABS, CLOCK_REALTIME, &ev);
    timer_delete(gone[1]);
    ev.sigev_signo = SIGRTMIN + 4;
    ev.sigev_value.sival_int = 444;
    make(LONG, CLOCK_MONOTONIC, &ev);
    clockid_t cpu;
    if (clock_getcpuclockid(0, &cpu)) die("clock_getcpuclockid");
    ev.sigev_notify = SIGEV_NONE;
    make(CPU, cpu, &ev);
    make(PLAIN, CLOCK_MONOTONIC, NULL);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN + 5;
    ev.sigev_value.sival_int = 555;
    make(FIRED, CLOCK_MONOTONIC, &ev);
    arm(FIRED, 0, 10, 0);
    arm(SIG, 0, 300, 300);
    arm(THREAD, 0, 400, 400);
    arm(CB, 0, 500, 500);
    arm(NONE, 0, 3000 * 1000L, 0);
    arm(ABS, TIMER_ABSTIME, 7200 * 1000L, 0);
    arm(LONG, 0, 500 * 1000L, 1000 * 1000L);
    arm(CPU, 0, 1000 * 1000L, 0);
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0)) die("membarrier register");
    long registrations = syscall(SYS_membarrier, GET_REGISTRATIONS, 0, 0);

    sigset_t waiting;
    for (;;) {
        sigpending(&waiting);
        if (sigismember(&waiting, SIGRTMIN + 5) && atomic_load(&count[SIG]) && atomic_load(&count[THREAD]) &&
            atomic_load(&count[CB]))
            break;
        sleep_ms(10);
    }
    for (int i = 0; i < N; i++)
        if (timer_gettime(timers[i], &before[i])) die(names[i]);
    long long abs_at = wall_expiry(timers[ABS]);
    char *listing = read_timers();
    say("ready ids sig=%ld thread=%ld none=%ld abs=%ld long=%ld cpu=%ld plain=%ld fired=%ld membarrier=%ld",
        (long)timers[SIG], (long)timers[THREAD], (long)timers[NONE], (long)timers[ABS], (long)timers[LONG],
        (long)timers[CPU], (long)timers[PLAIN], (long)timers[FIRED], registrations);

    while (access(trigger, F_OK)) sleep_ms(50);

    char bad[1024] = "";
#define BAD(...) snprintf(bad + strlen(bad), sizeof bad - strlen(bad), " " __VA_ARGS__)
    char *now = read_timers();
    if (strcmp(now, listing)) BAD("procfs[%s|%s]", listing, now);
    for (int i = 0; i < N; i++) {
        struct itimerspec its;
        if (timer_gettime(timers[i], &its)) {
            BAD("%s:gettime-%d", names[i], errno);
            continue;
        }
        if (ns(its.it_interval) != ns(before[i].it_interval)) BAD("%s:interval", names[i]);
        if (ns(its.it_value) > ns(before[i].it_value) && !ns(its.it_interval)) BAD("%s:more-left", names[i]);
        if ((i == NONE || i == ABS || i == LONG || i == CPU) && ns(its.it_value) < ns(before[i].it_value) / 2)
            BAD("%s:left-%lld-of-%lld", names[i], ns(its.it_value), ns(before[i].it_value));
        if (i == PLAIN && ns(its.it_value)) BAD("plain:armed");
    }
    long long moved = wall_expiry(timers[ABS]) - abs_at;
    if (moved > 1000000000LL || moved < -1000000000LL) BAD("abs:moved-%lld-ns", moved);
    siginfo_t got;
    struct timespec wait = {5, 0}, none = {0, 0};
    if (sigtimedwait(&fired, &got, &wait) != SIGRTMIN + 5)
        BAD("fired:no-signal");
    else if (got.si_code != SI_TIMER || got.si_value.sival_int != 555 || got.si_timerid != (long)timers[FIRED])
        BAD("fired:siginfo-%d-%d-%d", got.si_code, got.si_value.sival_int, got.si_timerid);
    if (sigtimedwait(&fired, &got, &none) >= 0) BAD("fired:twice");
    struct itimerspec taken;
    if (timer_gettime(timers[FIRED], &taken) || ns(taken.it_value)) BAD("fired:armed-after-its-signal");
    int start[N];
    for (int i = 0; i < N; i++) start[i] = atomic_load(&count[i]);
    /* Generous: each needs three more expiries, of at most 500 ms each. */
    for (int waited = 0; waited < 30000; waited += 10) {
        if (atomic_load(&count[SIG]) >= start[SIG] + 3 && atomic_load(&count[THREAD]) >= start[THREAD] + 3 &&
            atomic_load(&count[CB]) >= start[CB] + 3)
            break;
        sleep_ms(10);
    }
    for (int i = SIG; i <= CB; i++)
        if (atomic_load(&count[i]) < start[i] + 3) BAD("%s:no-signals", names[i]);
    if (atomic_load(&bad_value)) BAD("values:%d", atomic_load(&bad_value));
    if (atomic_load(&bad_thread)) BAD("wrong-thread:%d", atomic_load(&bad_thread));
    if (atomic_load(&bad_code)) BAD("si_code:%d", atomic_load(&bad_code));
    long after = syscall(SYS_membarrier, GET_REGISTRATIONS, 0, 0);
    if (after != registrations) BAD("membarrier-registrations:%ld-not-%ld", after, registrations);
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)) BAD("membarrier:%d", errno);
    if (*bad)
        say("verdict BAD%s", bad);
    else
        say("verdict ok");
    return 0;
}

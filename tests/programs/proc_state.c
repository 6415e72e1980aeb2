/* A process whose /proc view holds, away from their defaults, the properties issue 11
 * lists, for tests/fidelity.rs (which compares /proc before and after a move; the
 * program checks nothing itself):
 *   - POSIX timers: CLOCK_MONOTONIC with SIGRTMIN+1 and a value, armed with an interval;
 *     CLOCK_REALTIME notifying a thread (SIGEV_THREAD_ID), disarmed; CLOCK_BOOTTIME
 *     with SIGEV_NONE, armed for 1000 s;
 *   - scheduling: nice 5, CPU affinity {0}, oom_score_adj 123, timer slack 123456 ns;
 *     a second thread named "second", SCHED_BATCH, nice 9, its own timer slack;
 *   - signals: SIGUSR2 and SIGRTMIN+3 blocked, SIGPIPE ignored, a SIGUSR1 handler;
 *     SIGUSR2 pending for the main thread, SIGRTMIN+3 queued twice for the process;
 *   - limits: RLIMIT_NOFILE 200/300, RLIMIT_CORE 0/1 MiB; cwd /tmp;
 *   - speculation control: store bypass disabled (where the CPU has the knob);
 *   - memory: a region locked (mlock), others madvised DONTFORK, DONTDUMP, WIPEONFORK,
 *     HUGEPAGE, NOHUGEPAGE, one named "cache" (PR_SET_VMA_ANON_NAME, where the kernel
 *     has it), each its own VMA;
 *   - a child in a session of its own, nice 3, oom_score_adj 77;
 *   - no_new_privs, THP disabled (PR_SET_THP_DISABLE) (no seccomp filter: a checkpoint
 *     refuses those for now);
 *   - credentials: supplementary groups 4242 and 4243, CAP_SYS_BOOT dropped from the
 *     bounding set, CAP_NET_BIND_SERVICE inheritable and ambient;
 *   - a third thread "rt", SCHED_FIFO priority 5; the coredump filter 0x7f;
 *   - its namespaces' settings: the UTS domain name "lab.example", the network
 *     namespace's net.core.somaxconn 777 and net.ipv4.ip_local_port_range 20000 29999;
 *   - umask 027, the personality ADDR_COMPAT_LAYOUT (not the audit loginuid: writing it
 *     gives the process a new audit session id, which no restore can choose);
 * then prints "state ready" and sleeps.
 *
 * Usage: proc_state   Build: cc -O2 -pthread proc_state.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <grp.h>
#include <linux/capability.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

#define PAGE 4096

static void die(const char *what) {
    say("ERROR %s: %s", what, strerror(errno));
    exit(1);
}

static void on_usr1(int sig) { (void)sig; }

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) die(path);
    close(fd);
}

static pid_t second_tid;

static void *second(void *arg) {
    (void)arg;
    second_tid = (pid_t)syscall(SYS_gettid);
    struct sched_param p = {0};
    if (pthread_setschedparam(pthread_self(), SCHED_BATCH, &p) != 0) die("SCHED_BATCH");
    if (setpriority(PRIO_PROCESS, 0, 9) != 0) die("nice of the second thread");
    if (prctl(PR_SET_TIMERSLACK, 777000UL, 0, 0, 0) != 0) die("timer slack of the second thread");
    pthread_setname_np(pthread_self(), "second");
    for (;;) pause();
    return NULL;
}

static void *rt(void *arg) {
    (void)arg;
    struct sched_param p = {.sched_priority = 5};
    if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &p) != 0) die("SCHED_FIFO");
    pthread_setname_np(pthread_self(), "rt");
    for (;;) pause();
    return NULL;
}

/* capset(2) has no glibc wrapper: the version 3 header and two 32-bit halves. */
static void add_inheritable(int cap) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0) die("capget");
    d[cap / 32].inheritable |= 1u << (cap % 32);
    if (syscall(SYS_capset, &h, d) != 0) die("capset");
}

int main(void) {
    if (personality(PER_LINUX | ADDR_COMPAT_LAYOUT) < 0) die("personality");
    umask(027);
    if (setpriority(PRIO_PROCESS, 0, 5) != 0) die("nice");
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    if (sched_setaffinity(0, sizeof cpus, &cpus) != 0) die("affinity");
    write_file("/proc/self/oom_score_adj", "123");
    if (prctl(PR_SET_TIMERSLACK, 123456UL, 0, 0, 0) != 0) die("timer slack");

    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGRTMIN + 3);
    if (sigprocmask(SIG_BLOCK, &block, NULL) != 0) die("sigprocmask");
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_usr1};
    if (sigaction(SIGUSR1, &sa, NULL) != 0) die("sigaction");

    gid_t groups[] = {4242, 4243};
    if (setgroups(2, groups) != 0) die("setgroups");
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) != 0) die("PR_CAPBSET_DROP");
    add_inheritable(CAP_NET_BIND_SERVICE);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) != 0) die("ambient");
    write_file("/proc/self/coredump_filter", "0x7f");
    if (setdomainname("lab.example", 11) != 0) die("setdomainname");
    write_file("/proc/sys/net/core/somaxconn", "777");
    write_file("/proc/sys/net/ipv4/ip_local_port_range", "20000 29999");

    /* Before the threads: no_new_privs is per thread, and threads that differ are refused. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("PR_SET_NO_NEW_PRIVS");
    pthread_t t, t2;
    if (pthread_create(&t2, NULL, rt, NULL) != 0) die("pthread_create rt");
    if (pthread_create(&t, NULL, second, NULL) != 0) die("pthread_create");
    while (__atomic_load_n(&second_tid, __ATOMIC_SEQ_CST) == 0) usleep(1000);

    timer_t mono, real, boot;
    struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN + 1};
    ev.sigev_value.sival_int = 77;
    if (timer_create(CLOCK_MONOTONIC, &ev, &mono) != 0) die("timer_create monotonic");
    struct itimerspec every = {.it_value = {500, 0}, .it_interval = {700, 0}};
    if (timer_settime(mono, 0, &every, NULL) != 0) die("timer_settime");
    struct sigevent to_thread = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGUSR1};
    to_thread._sigev_un._tid = second_tid;
    if (timer_create(CLOCK_REALTIME, &to_thread, &real) != 0) die("timer_create realtime");
    struct sigevent none = {.sigev_notify = SIGEV_NONE};
    if (timer_create(CLOCK_BOOTTIME, &none, &boot) != 0) die("timer_create boottime");
    struct itimerspec once = {.it_value = {1000, 0}};
    if (timer_settime(boot, 0, &once, NULL) != 0) die("timer_settime boottime");

    /* Seven regions, one page apart, so that no two merge whatever their flags. */
    char *m = mmap(NULL, 14 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) die("mmap");
    for (int i = 1; i < 14; i += 2)
        if (mprotect(m + i * PAGE, PAGE, PROT_NONE) != 0) die("mprotect");
    memset(m, 1, PAGE);
    if (mlock(m, PAGE) != 0) die("mlock");
    const int advice[] = {MADV_DONTFORK, MADV_DONTDUMP, MADV_WIPEONFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE};
    for (int i = 0; i < 5; i++)
        if (madvise(m + (2 + 2 * i) * PAGE, PAGE, advice[i]) != 0) die("madvise");

    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0) die("PR_SET_THP_DISABLE");

    /* The last region, past the five advised ones, gets a name. */
    prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)(m + 12 * PAGE), PAGE, (unsigned long)"cache");
    prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, PR_SPEC_DISABLE, 0, 0);

    struct rlimit files = {200, 300}, core = {0, 1 << 20};
    if (setrlimit(RLIMIT_NOFILE, &files) != 0 || setrlimit(RLIMIT_CORE, &core) != 0) die("setrlimit");
    if (chdir("/tmp") != 0) die("chdir");

    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        if (setsid() < 0) die("setsid");
        if (setpriority(PRIO_PROCESS, 0, 3) != 0) die("nice of the child");
        write_file("/proc/self/oom_score_adj", "77");
        say("child ready");
        for (;;) pause();
    }
    while (waitpid(child, NULL, WNOHANG) == 0 && kill(child, 0) == 0) {
        char path[64], buf[256] = {0};
        snprintf(path, sizeof path, "/proc/%d/oom_score_adj", child);
        int fd = open(path, O_RDONLY);
        if (fd >= 0 && read(fd, buf, sizeof buf - 1) > 0 && strncmp(buf, "77", 2) == 0) {
            close(fd);
            break;
        }
        if (fd >= 0) close(fd);
        usleep(1000);
    }

    if (raise(SIGUSR2) != 0) die("raise");
    union sigval v = {.sival_int = 5};
    if (sigqueue(getpid(), SIGRTMIN + 3, v) != 0 || sigqueue(getpid(), SIGRTMIN + 3, v) != 0) die("sigqueue");

    say("state ready");
    for (;;) pause();
}

/* Fds behind anonymous inodes, for tests/checkpoint_anon.rs: each mode makes its
 * objects, prints "ready", waits for the file DIR/go (written by the test after the
 * restore), then checks that the objects are what they were and prints one verdict line
 * ("... ok" or "... BAD <why>").
 *
 * Usage: anon MODE DIR
 *   timerfd   A: CLOCK_MONOTONIC, first expiry after 50 ms, then every 1000 s (one tick
 *             unread at the checkpoint); B: CLOCK_BOOTTIME absolute, 600 s on; C:
 *             CLOCK_REALTIME_ALARM absolute with TFD_TIMER_CANCEL_ON_SET, 900 s on; D:
 *             CLOCK_MONOTONIC every 2 s; E: CLOCK_MONOTONIC one-shot, expired, unread.
 *             After: A reads 1 tick, A, B and C expire when they were set to (in their
 *             clock, within 1 s; the monotonic clocks continue from the checkpoint), D
 *             fires within 3 s, then again 2 s later, E reads 1 tick and stays disarmed.
 *   signalfd  SIGUSR1 and SIGRTMIN+2 blocked, read through a signalfd; SIGUSR1 sent to
 *             the process, SIGRTMIN+2 queued twice with value 42, SIGUSR2 (not in the
 *             mask) to the thread. After: the signalfd reads SIGUSR1, 42, 42, then nothing.
 *   inotify   DIR/w/a and DIR/w/b; watches: a (IN_MODIFY, then IN_MASK_ADD IN_CLOSE_WRITE)
 *             wd 1; b wd 2, removed; DIR/w (IN_CREATE | IN_ONESHOT) wd 3; /run/anon-watched
 *             (IN_ATTRIB) wd 4. After: a new watch gets wd 5; chmod of /run/anon-watched
 *             gives wd 4 IN_ATTRIB; creating DIR/w/c gives wd 3 IN_CREATE "c", then
 *             IN_IGNORED (one shot); writing a gives wd 1 IN_MODIFY and IN_CLOSE_WRITE.
 *   pidfd     a pidfd (PIDFD_NONBLOCK) of a child that exits with 7 once DIR/go exists, and
 *             one of a child already exited and reaped, both inherited by a third child,
 *             one of a zombie child (exit 5), and one of a thread (PIDFD_THREAD).
 *             After: the third child shares both (kcmp); poll and waitid(P_PIDFD)
 *             give the live child's exit, the reaped one's fdinfo says Pid -1,
 *             pidfd_send_signal says ESRCH and PIDFD_GET_INFO its exit status 3; the
 *             thread's names it, with PIDFD_THREAD; waitid on the zombie's gives 5.
 *   refused   an inotify with an event queued, one watching a file deleted while open,
 *             and a fanotify group; prints "tick N"
 *             every 100 ms forever. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <linux/kcmp.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

static const char *dir;
static char bad[512];

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond) && !bad[0]) snprintf(bad, sizeof bad, __VA_ARGS__); \
    } while (0)

static void die(const char *what) {
    say("%s: %s", what, strerror(errno));
    exit(1);
}

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

static void wait_go(void) {
    char p[512];
    snprintf(p, sizeof p, "%s/go", dir);
    while (access(p, F_OK)) sleep_ms(50);
}

static void verdict(const char *mode) {
    if (bad[0]) say("%s BAD %s", mode, bad);
    else say("%s ok", mode);
}

static int timer(clockid_t c, int flags, double value, double every) {
    int fd = timerfd_create(c, TFD_CLOEXEC);
    if (fd < 0) die("timerfd_create");
    struct itimerspec its = {{(time_t)every, (long)((every - (time_t)every) * 1e9)},
                             {(time_t)value, (long)((value - (time_t)value) * 1e9)}};
    if (timerfd_settime(fd, flags, &its, NULL)) die("timerfd_settime");
    return fd;
}

static double left(int fd, double *every) {
    struct itimerspec its;
    if (timerfd_gettime(fd, &its)) return -1;
    if (every) *every = its.it_interval.tv_sec + its.it_interval.tv_nsec / 1e9;
    return its.it_value.tv_sec + its.it_value.tv_nsec / 1e9;
}

static void timers(void) {
    double t0 = now(CLOCK_MONOTONIC);
    int a = timer(CLOCK_MONOTONIC, 0, 0.05, 1000);
    double b_at = now(CLOCK_BOOTTIME) + 600;
    int b = timer(CLOCK_BOOTTIME, TFD_TIMER_ABSTIME, b_at, 0);
    double c_at = now(CLOCK_REALTIME) + 900;
    int c = timer(CLOCK_REALTIME_ALARM, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, c_at, 0);
    int d = timer(CLOCK_MONOTONIC, 0, 2, 2);
    int e = timer(CLOCK_MONOTONIC, 0, 0.01, 0);
    sleep_ms(300);
    say("ready");
    wait_go();
    uint64_t ticks = 0;
    /* A: one tick was unread at the checkpoint, and only that one. */
    fcntl(a, F_SETFL, O_NONBLOCK);
    CHECK(read(a, &ticks, 8) == 8 && ticks == 1, "A read %llu ticks, not 1", (unsigned long long)ticks);
    double every, l = left(a, &every);
    double due = t0 + 0.05 + 1000, at = now(CLOCK_MONOTONIC) + l;
    CHECK(every == 1000, "A runs every %f s", every);
    CHECK(at > due - 1 && at < due + 1, "A expires at %.3f, not %.3f", at, due);
    at = now(CLOCK_BOOTTIME) + left(b, NULL);
    CHECK(at > b_at - 1 && at < b_at + 1, "B expires at %.3f, not %.3f", at, b_at);
    at = now(CLOCK_REALTIME) + left(c, NULL);
    CHECK(at > c_at - 1 && at < c_at + 1, "C expires at %.3f, not %.3f", at, c_at);
    /* E: expired once, unread, disarmed since. */
    ticks = 0;
    fcntl(e, F_SETFL, O_NONBLOCK);
    CHECK(read(e, &ticks, 8) == 8 && ticks == 1, "E read %llu ticks, not 1", (unsigned long long)ticks);
    CHECK(left(e, NULL) == 0, "E is armed again");
    /* D: ticks it had are read away; then it fires within its period. */
    fcntl(d, F_SETFL, O_NONBLOCK);
    if (read(d, &ticks, 8) < 0 && errno != EAGAIN) CHECK(0, "D read: %s", strerror(errno));
    fcntl(d, F_SETFL, 0);
    double w0 = now(CLOCK_MONOTONIC);
    CHECK(read(d, &ticks, 8) == 8, "D read: %s", strerror(errno));
    double w1 = now(CLOCK_MONOTONIC);
    CHECK(w1 - w0 < 3, "D fired after %.3f s", w1 - w0);
    CHECK(read(d, &ticks, 8) == 8 && ticks == 1, "D second read");
    double w2 = now(CLOCK_MONOTONIC);
    CHECK(w2 - w1 > 1 && w2 - w1 < 3, "D fired again after %.3f s, not 2", w2 - w1);
    verdict("timerfd");
}

static void signals(void) {
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigaddset(&m, SIGRTMIN + 2);
    sigaddset(&m, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &m, NULL)) die("sigprocmask");
    sigdelset(&m, SIGUSR2);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) die("signalfd");
    kill(getpid(), SIGUSR1);
    union sigval v = {.sival_int = 42};
    sigqueue(getpid(), SIGRTMIN + 2, v);
    sigqueue(getpid(), SIGRTMIN + 2, v);
    syscall(SYS_tgkill, getpid(), gettid(), SIGUSR2);
    say("ready");
    wait_go();
    struct signalfd_siginfo si;
    int want[3] = {SIGUSR1, SIGRTMIN + 2, SIGRTMIN + 2};
    for (int i = 0; i < 3; i++) {
        ssize_t n = read(sfd, &si, sizeof si);
        CHECK(n == sizeof si, "read %d: %s", i, strerror(errno));
        CHECK(n != sizeof si || (int)si.ssi_signo == want[i], "read %d gave signal %u, not %d", i, si.ssi_signo, want[i]);
        CHECK(n != sizeof si || i == 0 || si.ssi_int == 42, "read %d gave value %d", i, si.ssi_int);
    }
    CHECK(read(sfd, &si, sizeof si) < 0 && errno == EAGAIN, "a fourth signal came through the signalfd");
    sigset_t p;
    sigpending(&p);
    CHECK(sigismember(&p, SIGUSR2), "SIGUSR2 is no longer pending");
    verdict("signalfd");
}

/* Reads the next event, waiting up to 5 s; 0 if there was none. */
static int next_event(int fd, struct inotify_event *ev, char *name) {
    static char buf[4096];
    static ssize_t len, off;
    if (off >= len) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 5000) != 1) return 0;
        len = read(fd, buf, sizeof buf);
        off = 0;
        if (len <= 0) return 0;
    }
    struct inotify_event *e = (struct inotify_event *)(buf + off);
    *ev = *e;
    strcpy(name, e->len ? e->name : "");
    off += sizeof *e + e->len;
    return 1;
}

static void touch(const char *name, const char *text) {
    char p[512];
    snprintf(p, sizeof p, "%s/w/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) die(p);
    if (text && write(fd, text, strlen(text)) < 0) die("write");
    close(fd);
}

static void watches(void) {
    char w[512], a[512], b[512], name[256];
    snprintf(w, sizeof w, "%s/w", dir);
    snprintf(a, sizeof a, "%s/w/a", dir);
    snprintf(b, sizeof b, "%s/w/b", dir);
    mkdir(w, 0755);
    touch("a", NULL);
    touch("b", NULL);
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0) die("inotify_init1");
    int wa = inotify_add_watch(fd, a, IN_MODIFY);
    inotify_add_watch(fd, a, IN_CLOSE_WRITE | IN_MASK_ADD);
    int wb = inotify_add_watch(fd, b, IN_ATTRIB);
    inotify_rm_watch(fd, wb);
    struct inotify_event ev;
    CHECK(next_event(fd, &ev, name) && ev.wd == wb && (ev.mask & IN_IGNORED), "no IN_IGNORED for b");
    int ww = inotify_add_watch(fd, w, IN_CREATE | IN_ONESHOT);
    /* On the container's own /run, a tmpfs no other mount namespace sees. */
    int r = open("/run/anon-watched", O_WRONLY | O_CREAT, 0600);
    if (r < 0) die("/run/anon-watched");
    close(r);
    int wr = inotify_add_watch(fd, "/run/anon-watched", IN_ATTRIB);
    say("ready wd a=%d b=%d w=%d run=%d", wa, wb, ww, wr);
    wait_go();
    int wx = inotify_add_watch(fd, b, IN_DELETE_SELF);
    CHECK(wx == 5, "a new watch got wd %d, not 5", wx);
    chmod("/run/anon-watched", 0640);
    CHECK(next_event(fd, &ev, name) && ev.wd == wr && (ev.mask & IN_ATTRIB), "chmod gave wd %d mask %#x", ev.wd, ev.mask);
    touch("c", NULL);
    CHECK(next_event(fd, &ev, name) && ev.wd == ww && (ev.mask & IN_CREATE) && !strcmp(name, "c"),
          "creating c gave wd %d mask %#x name %s", ev.wd, ev.mask, name);
    CHECK(next_event(fd, &ev, name) && ev.wd == ww && (ev.mask & IN_IGNORED), "the one-shot watch did not end");
    touch("a", "more");
    CHECK(next_event(fd, &ev, name) && ev.wd == wa && (ev.mask & IN_MODIFY), "writing a gave wd %d mask %#x", ev.wd, ev.mask);
    CHECK(next_event(fd, &ev, name) && ev.wd == wa && (ev.mask & IN_CLOSE_WRITE), "closing a gave wd %d mask %#x", ev.wd, ev.mask);
    touch("d", NULL);
    CHECK(!next_event(fd, &ev, name), "an event after the one-shot: wd %d mask %#x", ev.wd, ev.mask);
    verdict("inotify");
}

static volatile pid_t thread_tid;

static void *idle(void *arg) {
    (void)arg;
    thread_tid = gettid();
    for (;;) pause();
    return NULL;
}

/* The value of "key:" in this process's fdinfo of fd, or -2. */
static long fdinfo_field(int fd, const char *key, int base) {
    char path[64], info[1024] = {0};
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    int f = open(path, O_RDONLY);
    if (f < 0 || read(f, info, sizeof info - 1) < 0) die(path);
    close(f);
    char *at = strstr(info, key);
    return at ? strtol(at + strlen(key), NULL, base) : -2;
}

static void pidfds(void) {
    pid_t live = fork();
    if (live == 0) {
        wait_go();
        _exit(7);
    }
    pid_t gone = fork();
    if (gone == 0) _exit(3);
    int pl = syscall(SYS_pidfd_open, live, O_NONBLOCK);
    int pg = syscall(SYS_pidfd_open, gone, 0);
    if (pl < 0 || pg < 0) die("pidfd_open");
    siginfo_t si;
    if (waitid(P_PIDFD, pg, &si, WEXITED)) die("waitid gone");
    /* A zombie: exited, not waited for. */
    pid_t zombie = fork();
    if (zombie == 0) _exit(5);
    int pz = syscall(SYS_pidfd_open, zombie, 0);
    if (pz < 0 || waitid(P_PIDFD, pz, &si, WEXITED | WNOWAIT)) die("zombie");
    /* Inherits both: the same descriptions as its parent's, after the move too. */
    pid_t sharer = fork();
    if (sharer == 0) {
        wait_go();
        int same = syscall(SYS_kcmp, getppid(), getpid(), KCMP_FILE, pl, pl) == 0 &&
                   syscall(SYS_kcmp, getppid(), getpid(), KCMP_FILE, pg, pg) == 0;
        _exit(same ? 0 : 1);
    }
    /* A pidfd of one thread (PIDFD_THREAD, which is O_EXCL). */
    pthread_t th;
    if (pthread_create(&th, NULL, idle, NULL)) die("pthread_create");
    while (!thread_tid) sleep_ms(10);
    int pt = syscall(SYS_pidfd_open, thread_tid, O_EXCL);
    if (pt < 0) die("pidfd_open(PIDFD_THREAD)");
    say("ready");
    wait_go();
    CHECK(fdinfo_field(pt, "Pid:", 10) == thread_tid, "the thread's pidfd names pid %ld, not %d",
          fdinfo_field(pt, "Pid:", 10), thread_tid);
    CHECK(fdinfo_field(pt, "flags:", 8) & O_EXCL, "the thread's pidfd lost PIDFD_THREAD");
    CHECK(syscall(SYS_pidfd_send_signal, pt, 0, NULL, 0) == 0, "pidfd_send_signal to the thread: %s", strerror(errno));
    int status = -1;
    CHECK(waitpid(sharer, &status, 0) == sharer && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child that inherited the pidfds does not share them (status %#x)", status);
    struct pollfd p = {pl, POLLIN, 0};
    CHECK(poll(&p, 1, 10000) == 1, "the live child's pidfd never became readable");
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PIDFD, pl, &si, WEXITED) == 0, "waitid: %s", strerror(errno));
    CHECK(si.si_pid == live && si.si_code == CLD_EXITED && si.si_status == 7, "waitid gave pid %d code %d status %d",
          si.si_pid, si.si_code, si.si_status);
    CHECK(fcntl(pl, F_GETFL) & O_NONBLOCK, "the live pidfd lost PIDFD_NONBLOCK");
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PIDFD, pz, &si, WEXITED) == 0 && si.si_pid == zombie && si.si_status == 5,
          "the zombie's pidfd: waitid gave pid %d status %d (%s)", si.si_pid, si.si_status, strerror(errno));
    CHECK(fdinfo_field(pg, "Pid:", 10) == -1, "the reaped child's pidfd names pid %ld", fdinfo_field(pg, "Pid:", 10));
    CHECK(syscall(SYS_pidfd_send_signal, pg, 0, NULL, 0) < 0 && errno == ESRCH, "pidfd_send_signal to the reaped child");
    /* struct pidfd_info (linux/pidfd.h, 6.15; newer than this libc's headers): the exit
     * status the kernel keeps for a reaped process's pidfds. */
    struct {
        uint64_t mask, cgroupid;
        uint32_t ids[11];
        int32_t exit_code;
    } pi = {.mask = 1 << 3};
    if (ioctl(pg, _IOWR(0xFF, 11, pi), &pi) == 0)
        CHECK((pi.mask & (1 << 3)) && pi.exit_code == 0x300, "the reaped child's exit status is %#x, not 0x300",
              pi.exit_code);
    else
        CHECK(errno == ENOTTY, "PIDFD_GET_INFO: %s", strerror(errno));
    verdict("pidfd");
}

static void refused(void) {
    char w[512];
    snprintf(w, sizeof w, "%s/w", dir);
    mkdir(w, 0755);
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0 || inotify_add_watch(fd, w, IN_CREATE) < 0) die("inotify");
    touch("queued", NULL);
    /* A watch on a file deleted while open: its inode lives on, no path leads to it. */
    char gone[512];
    snprintf(gone, sizeof gone, "%s/gone", dir);
    int held = open(gone, O_RDWR | O_CREAT, 0600);
    int fd2 = inotify_init1(IN_CLOEXEC);
    if (held < 0 || fd2 < 0 || inotify_add_watch(fd2, gone, IN_MODIFY) < 0 || unlink(gone)) die("deleted watch");
    int fan = fanotify_init(FAN_CLASS_NOTIF, O_RDONLY);
    if (fan < 0) die("fanotify_init");
    say("inotify fd %d fanotify fd %d deleted fd %d", fd, fan, fd2);
    for (int i = 0;; i++) {
        say("tick %d", i);
        sleep_ms(100);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        say("usage: anon MODE DIR");
        return 2;
    }
    dir = argv[2];
    const char *m = argv[1];
    if (!strcmp(m, "timerfd")) timers();
    else if (!strcmp(m, "signalfd")) signals();
    else if (!strcmp(m, "inotify")) watches();
    else if (!strcmp(m, "pidfd")) pidfds();
    else if (!strcmp(m, "refused")) refused();
    else {
        say("unknown mode %s", m);
        return 2;
    }
    return 0;
}

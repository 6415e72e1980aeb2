/* An epoll in every state a restore must bring back, for tests/checkpoint_epoll.rs.
 *
 * Usage: epoll TRIGGER   (TRIGGER: a path; the checks start once it exists)
 *
 * The parent's epoll `ep` watches (data values in hex):
 *   a1  pipe A, level-triggered;
 *   b1  pipe B, EPOLLET, with one byte written and its edge not collected;
 *   e1  eventfd E1, EPOLLONESHOT, armed;
 *   e2  eventfd E2, EPOLLONESHOT, fired and collected (disarmed), counter 1;
 *   f1  pipe F, EPOLLONESHOT, fired, collected and read empty (disarmed, nothing ready);
 *   d1  pipe D, registered as fd DNUM, then dup'ed to fd 40 and DNUM made /dev/null;
 *   3e  pipe X, EPOLLEXCLUSIVE;
 *   1e  an inner epoll (nested), which watches pipe N (11);
 *   91  pipe Q, registered as fd QNUM, then dup'ed to fd 41, and `ep` itself moved to
 *       QNUM (its only fd).
 * A second epoll `ep2` is shared with a forked child: the parent registered pipe S (51)
 * before the fork; the child a pipe C of its own (c1) after it, and S again (52) as the
 * number that is A's write end in the parent.
 *
 * After TRIGGER exists, each side checks that exactly the expected events arrive:
 *   phase 1 (nothing written): b1 (the pending edge);
 *   phase 2 (one write into every target): a1 b1 e1 d1 3e 1e 91 — not e2, f1 (disarmed);
 *   phase 3 (nothing more): the level-triggered ones a1 d1 3e 1e 91;
 *   phase 4: EPOLL_CTL_MOD re-arms e2 and f1, which fire; the inner epoll reports 11; the
 *   registration of D is still keyed by DNUM (EPOLL_CTL_DEL through DNUM finds it);
 * and prints "verdict ok" or "verdict BAD …"; the child prints "child verdict …" for
 * ep2 (51, 52 and c1, after it writes into S and C); then "done", and it waits to be
 * killed. Build: cc -O2 epoll.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void add(int ep, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev = {.events = events, .data.u64 = data};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) die("epoll_ctl");
}

static void wait_for(const char *path) {
    struct timespec ts = {0, 50 * 1000000L};
    while (access(path, F_OK)) nanosleep(&ts, NULL);
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The data values of the events ready now, sorted, as "a1,b1". */
static const char *collect(int ep, char *out, size_t len) {
    struct epoll_event evs[16];
    uint64_t data[16];
    int n = epoll_wait(ep, evs, 16, 0);
    if (n < 0) die("epoll_wait");
    for (int i = 0; i < n; i++) data[i] = evs[i].data.u64;
    qsort(data, n, sizeof data[0], cmp);
    out[0] = 0;
    for (int i = 0; i < n; i++)
        snprintf(out + strlen(out), len - strlen(out), "%s%llx", i ? "," : "", (unsigned long long)data[i]);
    return out;
}

static void put(int fd) {
    if (write(fd, "x", 1) != 1) die("write");
}

static void bump(int efd) {
    uint64_t one = 1;
    if (write(efd, &one, 8) != 8) die("write eventfd");
}

static int check(const char *phase, const char *got, const char *want, char *why, size_t len) {
    say("%s: %s", phase, got);
    if (strcmp(got, want) == 0) return 1;
    if (!why[0]) snprintf(why, len, "%s got [%s], wanted [%s]", phase, got, want);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: epoll TRIGGER\n");
        return 2;
    }
    const char *trigger = argv[1];
    int a[2], b[2], d[2], x[2], n[2], s[2], sync[2];
    if (pipe(a) || pipe(b) || pipe(d) || pipe(x) || pipe(n) || pipe(s) || pipe(sync)) die("pipe");
    int e1 = eventfd(0, EFD_NONBLOCK), e2 = eventfd(0, EFD_NONBLOCK);
    int ep = epoll_create1(EPOLL_CLOEXEC), inner = epoll_create1(0), ep2 = epoll_create1(0);
    if (e1 < 0 || e2 < 0 || ep < 0 || inner < 0 || ep2 < 0) die("create");
    add(ep, a[0], EPOLLIN, 0xa1);
    add(ep, b[0], EPOLLIN | EPOLLET, 0xb1);
    add(ep, e1, EPOLLIN | EPOLLONESHOT, 0xe1);
    add(ep, e2, EPOLLIN | EPOLLONESHOT, 0xe2);
    add(ep, x[0], EPOLLIN | EPOLLEXCLUSIVE, 0x3e);
    add(inner, n[0], EPOLLIN, 0x11);
    add(ep, inner, EPOLLIN, 0x1e);
    add(ep, d[0], EPOLLIN, 0xd1);
    /* D's registration keeps its number; the file moves to 40, the number to /dev/null. */
    int dnum = d[0];
    if (dup2(dnum, 40) != 40) die("dup2");
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, dnum) != dnum) die("/dev/null");
    close(null);
    /* Q's registration number ends up naming the epoll itself, its only fd. */
    int q[2];
    if (pipe(q)) die("pipe");
    add(ep, q[0], EPOLLIN, 0x91);
    if (dup2(q[0], 41) != 41 || dup2(ep, q[0]) != q[0]) die("dup2");
    close(ep);
    ep = q[0];
    /* E2 fires once and is collected: disarmed, its counter left at 1. F too, and is
     * then read empty: disarmed, with nothing ready. */
    int f[2];
    if (pipe(f)) die("pipe");
    add(ep, f[0], EPOLLIN | EPOLLONESHOT, 0xf1);
    bump(e2);
    put(f[1]);
    char buf[128];
    if (strcmp(collect(ep, buf, sizeof buf), "e2,f1") || read(f[0], buf, 1) != 1) {
        say("setup: collected [%s], not e2,f1", buf);
        return 1;
    }
    put(b[1]); /* an edge nobody collects before the checkpoint */
    add(ep2, s[0], EPOLLIN, 0x51);

    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        int c[2];
        if (pipe(c)) die("pipe");
        add(ep2, c[0], EPOLLIN, 0xc1);
        /* S again, keyed by a number that names A's write end in the parent. */
        if (dup2(s[0], a[1]) != a[1]) die("dup2");
        add(ep2, a[1], EPOLLIN, 0x52);
        close(sync[0]);
        close(sync[1]); /* the parent's read sees EOF: set up */
        wait_for(trigger);
        put(c[1]);
        put(s[1]);
        char got[128];
        collect(ep2, got, sizeof got);
        say("child verdict %s (%s)", strcmp(got, "51,52,c1") ? "BAD" : "ok", got);
        return 0;
    }
    close(sync[1]);
    if (read(sync[0], buf, 1) != 0) die("sync");
    close(sync[0]);
    say("ready");
    wait_for(trigger);

    char why[256] = "", got[128];
    int ok = check("phase 1", collect(ep, got, sizeof got), "b1", why, sizeof why);
    put(a[1]);
    put(b[1]);
    bump(e1);
    bump(e2);
    put(d[1]);
    put(x[1]);
    put(n[1]);
    put(q[1]);
    put(f[1]);
    ok &= check("phase 2", collect(ep, got, sizeof got), "1e,3e,91,a1,b1,d1,e1", why, sizeof why);
    ok &= check("phase 3", collect(ep, got, sizeof got), "1e,3e,91,a1,d1", why, sizeof why);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u64 = 0xe2};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, e2, &ev)) die("epoll_ctl MOD");
    ev.data.u64 = 0xf1;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, f[0], &ev)) die("epoll_ctl MOD");
    ok &= check("phase 4", collect(ep, got, sizeof got), "1e,3e,91,a1,d1,e2,f1", why, sizeof why);
    ok &= check("inner", collect(inner, got, sizeof got), "11", why, sizeof why);
    /* The key is (file, DNUM): put the file back at DNUM and delete through it. */
    int keep = dup(dnum);
    if (keep < 0 || dup2(40, dnum) != dnum) die("dup2 back");
    int del = epoll_ctl(ep, EPOLL_CTL_DEL, dnum, NULL);
    say("delete through fd %d: %s", dnum, del ? strerror(errno) : "found");
    if (del && !why[0]) snprintf(why, sizeof why, "the registration of D is not keyed by fd %d", dnum);
    ok &= del == 0;
    dup2(keep, dnum);
    close(keep);
    say("verdict %s%s", ok ? "ok" : "BAD ", why);
    int status;
    waitpid(child, &status, 0);
    say("done");
    /* Runs on, so that the test finds it running (its shim alive) when it ends the lab. */
    for (;;) pause();
}

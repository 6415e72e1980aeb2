/* attrs: a process that sets what prctl(2) and a few inode calls can set, and checks
 * after a restore that each is still what it set.
 *
 * Usage: attrs TRIGGER DIR — sets everything, says "ready", waits for the file TRIGGER,
 * then checks and prints "parent verdict ok" and "child verdict ok" (or "… verdict bad:"
 * with what differs). DIR holds the FIFO and the deleted file.
 *   PID 1: dumpable 0, THP disabled except where advised, timer slack, MCE kill early,
 *          the UTS domain name; a memfd with mode 0640, owner 1000:1000 and old times;
 *          a FIFO with 3 bytes in it and old times; a deleted file with old times; a
 *          file opened as DIR/linked-a, linked as DIR/linked-b, then unlinked as linked-a;
 *          a second thread with its own name, timer slack and PR_TSC_SIGSEGV.
 *   child: securebits (KEEP_CAPS, NOROOT, NOROOT_LOCKED), then uid 1000 (keeping its
 *          permitted capabilities), dumpable 1 again, no_new_privs, pdeathsig SIGUSR1,
 *          child subreaper, MDWE.
 *
 * Usage: attrs refuse-link DIR — holds a file opened by a name that was then removed
 * while another name remains in another directory; says "ready" and sleeps.
 * Usage: attrs refuse-audit DIR — a child sets its login uid (a new audit session);
 * says "ready" and sleeps. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "say.h"

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#ifndef PR_THP_DISABLE_EXCEPT_ADVISED
#define PR_THP_DISABLE_EXCEPT_ADVISED (1 << 1)
#endif
#define SECBITS 0x13 /* SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS */

static const struct timespec OLD_A = {1100000000, 111111111};
static const struct timespec OLD_M = {1000000000, 222222222};
static const struct timespec FIFO_A = {1200000000, 333333333};
static const struct timespec FIFO_M = {1300000000, 444444444};

static char bad[400];

static void check(int ok, const char *what) {
    if (!ok && strlen(bad) + strlen(what) + 2 < sizeof bad) {
        strcat(bad, " ");
        strcat(bad, what);
    }
}

static void wait_for(const char *path) {
    while (access(path, F_OK) != 0) usleep(50000);
}

static int same_time(struct timespec a, struct timespec b) {
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

static void verdict(const char *who) {
    if (bad[0]) say("%s verdict bad:%s", who, bad);
    else say("%s verdict ok", who);
}

static volatile int worker_ready;
static long worker_slack, worker_tsc;
static char worker_name[32];
static const char *trigger;

static void *worker(void *arg) {
    (void)arg;
    prctl(PR_SET_NAME, "attrs-worker");
    prctl(PR_SET_TIMERSLACK, 654321);
    /* From here this thread must not read the TSC: only syscalls. */
    prctl(PR_SET_TSC, PR_TSC_SIGSEGV);
    worker_ready = 1;
    wait_for(trigger);
    int tsc = 0;
    prctl(PR_GET_TSC, &tsc);
    worker_tsc = tsc;
    worker_slack = prctl(PR_GET_TIMERSLACK);
    prctl(PR_GET_NAME, worker_name);
    return NULL;
}

static void child(int ready) {
    check(prctl(PR_SET_SECUREBITS, SECBITS) == 0, "set-securebits");
    check(setresuid(1000, 1000, 1000) == 0, "setresuid");
    /* The uid change made it undumpable and cleared any pdeathsig. */
    prctl(PR_SET_DUMPABLE, 1);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGUSR1);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    check(prctl(PR_SET_MDWE, 1, 0, 0, 0) == 0, "set-mdwe");
    check(write(ready, "x", 1) == 1, "child-ready");
    close(ready);
    wait_for(trigger);
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    check(r == 1000 && e == 1000 && s == 1000, "uids");
    check(prctl(PR_GET_SECUREBITS) == SECBITS, "securebits");
    check(prctl(PR_GET_KEEPCAPS) == 1, "keepcaps");
    check(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs");
    check(prctl(PR_GET_DUMPABLE) == 1, "dumpable");
    int sig = 0, reaper = 0;
    prctl(PR_GET_PDEATHSIG, &sig);
    check(sig == SIGUSR1, "pdeathsig");
    prctl(PR_GET_CHILD_SUBREAPER, &reaper);
    check(reaper == 1, "subreaper");
    check(prctl(PR_GET_MDWE, 0, 0, 0, 0) == 1, "mdwe");
    verdict("child");
    _exit(0);
}

static int refuse(const char *mode, const char *dir) {
    char a[512], b[512];
    if (strcmp(mode, "refuse-link") == 0) {
        snprintf(a, sizeof a, "%s/first", dir);
        snprintf(b, sizeof b, "%s/sub", dir);
        mkdir(b, 0700);
        snprintf(b, sizeof b, "%s/sub/second", dir);
        int fd = open(a, O_CREAT | O_RDWR, 0600);
        if (fd < 0 || link(a, b) != 0 || unlink(a) != 0) return say("setup failed: %s", strerror(errno)), 1;
    } else if (fork() == 0) {
        int fd = open("/proc/self/loginuid", O_WRONLY);
        if (fd < 0 || write(fd, "1000", 4) != 4) say("loginuid: %s", strerror(errno));
        for (;;) pause();
    }
    say("ready");
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    if (strncmp(argv[1], "refuse-", 7) == 0) return refuse(argv[1], argv[2]);
    trigger = argv[1];
    char fifo[512], del[512], la[512], lb[512];
    snprintf(fifo, sizeof fifo, "%s/fifo", argv[2]);
    snprintf(del, sizeof del, "%s/deleted", argv[2]);
    snprintf(la, sizeof la, "%s/linked-a", argv[2]);
    snprintf(lb, sizeof lb, "%s/linked-b", argv[2]);

    int sync[2];
    if (pipe(sync) != 0) return 1;
    pid_t kid = fork();
    if (kid == 0) {
        close(sync[0]);
        child(sync[1]);
    }
    close(sync[1]);
    char one;
    check(read(sync[0], &one, 1) == 1, "child-setup");
    close(sync[0]);

    int thp = 1 | PR_THP_DISABLE_EXCEPT_ADVISED;
    if (prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED, 0, 0) != 0) {
        thp = 1;
        prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    prctl(PR_SET_DUMPABLE, 0);
    prctl(PR_SET_TIMERSLACK, 123456);
    prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0);
    check(setdomainname("attrs.example", 13) == 0, "setdomainname");

    int mfd = memfd_create("attrs-memfd", MFD_CLOEXEC);
    check(write(mfd, "memfd-data", 10) == 10, "memfd-write");
    check(fchown(mfd, 1000, 1000) == 0 && fchmod(mfd, 0640) == 0, "memfd-owner");
    struct timespec old[2] = {OLD_A, OLD_M};
    check(futimens(mfd, old) == 0, "memfd-times");

    check(mkfifo(fifo, 0620) == 0 && chmod(fifo, 0620) == 0, "mkfifo");
    int ffd = open(fifo, O_RDWR | O_NONBLOCK);
    check(write(ffd, "abc", 3) == 3, "fifo-write");
    struct timespec ft[2] = {FIFO_A, FIFO_M};
    check(futimens(ffd, ft) == 0, "fifo-times");

    int dfd = open(del, O_CREAT | O_RDWR, 0604);
    check(write(dfd, "deleted-data", 12) == 12, "deleted-write");
    check(futimens(dfd, old) == 0 && unlink(del) == 0, "deleted-times");

    int lfd = open(la, O_CREAT | O_RDWR, 0600);
    check(write(lfd, "linked", 6) == 6 && link(la, lb) == 0 && unlink(la) == 0, "linked-setup");

    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    while (!worker_ready) usleep(10000);
    say("ready thp=%d", thp);
    wait_for(trigger);

    check(prctl(PR_GET_DUMPABLE) == 0, "dumpable");
    check(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == thp, "thp_disable");
    check(prctl(PR_GET_TIMERSLACK) == 123456, "timerslack");
    check(prctl(PR_MCE_KILL_GET, 0, 0, 0, 0) == PR_MCE_KILL_EARLY, "mce_kill");
    char dom[65] = "";
    getdomainname(dom, sizeof dom);
    check(strcmp(dom, "attrs.example") == 0, "domainname");
    struct stat st;
    check(fstat(mfd, &st) == 0 && (st.st_mode & 07777) == 0640 && st.st_uid == 1000 && st.st_gid == 1000,
          "memfd-mode-owner");
    check(same_time(st.st_mtim, OLD_M) && same_time(st.st_atim, OLD_A), "memfd-times");
    check(fstat(ffd, &st) == 0 && same_time(st.st_mtim, FIFO_M) && same_time(st.st_atim, FIFO_A), "fifo-times");
    check((st.st_mode & 07777) == 0620, "fifo-mode");
    check(fstat(dfd, &st) == 0 && same_time(st.st_mtim, OLD_M) && same_time(st.st_atim, OLD_A), "deleted-times");
    check((st.st_mode & 07777) == 0604 && st.st_nlink == 0, "deleted-mode");
    char buf[16] = "";
    check(pread(mfd, buf, 10, 0) == 10 && memcmp(buf, "memfd-data", 10) == 0, "memfd-data");
    check(read(ffd, buf, 3) == 3 && memcmp(buf, "abc", 3) == 0, "fifo-data");
    check(pread(dfd, buf, 12, 0) == 12 && memcmp(buf, "deleted-data", 12) == 0, "deleted-data");
    struct stat sb;
    check(fstat(lfd, &st) == 0 && stat(lb, &sb) == 0 && st.st_ino == sb.st_ino && st.st_dev == sb.st_dev,
          "linked-same-file");
    char shown[600] = "", want[600], self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", lfd);
    ssize_t n = readlink(self, shown, sizeof shown - 1);
    if (n > 0) shown[n] = 0;
    snprintf(want, sizeof want, "%s (deleted)", la);
    check(strcmp(shown, want) == 0, "linked-name");
    check(pwrite(lfd, "L", 1, 0) == 1, "linked-write");
    int bfd = open(lb, O_RDONLY);
    check(pread(bfd, buf, 6, 0) == 6 && memcmp(buf, "Linked", 6) == 0, "linked-shared");
    unlink(lb);
    pthread_join(t, NULL);
    check(worker_slack == 654321, "worker-timerslack");
    check(worker_tsc == PR_TSC_SIGSEGV, "worker-tsc");
    check(strcmp(worker_name, "attrs-worker") == 0, "worker-name");
    int status = 0;
    waitpid(kid, &status, 0);
    check(WIFEXITED(status), "child-exit");
    unlink(fifo);
    verdict("parent");
    return 0;
}

/* Holds one thing a checkpoint refuses, named by argv[1], then prints "ready" and waits:
 *   notify   a POSIX message queue with a notification registered (mq_notify)
 *   full     a POSIX message queue that is full (a sender could be waiting)
 *   unlinked a POSIX message queue unlinked while open
 *   cwd      a deleted directory as its cwd (argv[2]: where to make it)
 *   lease    a file lease (argv[2]: a directory for the file)
 *   proc     an open file of /proc (its own status) read in part
 *   procchild an open file of /proc of its child, which a restore makes after it
 *   forced   System V segments (one unattached) in a namespace with kernel.shm_rmid_forced set
 *   otherq   a POSIX message queue of the IPC namespace it left (unshare), one of that
 *            name in its new one
 *   ownns    a child in an IPC namespace of its own
 *   bigsem   a System V semaphore set larger than an image may hold (kernel.sem raised)
 *   hugefd   an fd of a memfd of huge pages, not mapped (prints "ready no-hugetlb" where
 *            the kernel has none)
 *   hugetlb  a hugetlb mapping (prints "ready no-hugetlb" where the host has no huge pages) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <mqueue.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include "say.h"

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *kind = argv[1];
    char path[4096];
    if (!strcmp(kind, "unlinked")) {
        struct mq_attr at = {.mq_maxmsg = 2, .mq_msgsize = 16};
        if (mq_open("/gone", O_CREAT | O_RDWR, 0600, &at) == (mqd_t)-1 || mq_unlink("/gone") < 0) { perror("mq"); return 1; }
    } else if (!strcmp(kind, "notify") || !strcmp(kind, "full")) {
        struct mq_attr at = {.mq_maxmsg = 2, .mq_msgsize = 16};
        mqd_t q = mq_open("/refused", O_CREAT | O_RDWR | O_NONBLOCK, 0600, &at);
        if (q == (mqd_t)-1) { perror("mq_open"); return 1; }
        if (!strcmp(kind, "notify")) {
            struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1};
            signal(SIGUSR1, SIG_IGN);
            if (mq_notify(q, &ev) < 0) { perror("mq_notify"); return 1; }
        } else {
            mq_send(q, "a", 1, 0);
            mq_send(q, "b", 1, 0);
        }
    } else if (!strcmp(kind, "cwd") && argc > 2) {
        snprintf(path, sizeof path, "%s/gone", argv[2]);
        if (mkdir(path, 0700) < 0 || chdir(path) < 0 || rmdir(path) < 0) { perror("cwd"); return 1; }
    } else if (!strcmp(kind, "lease") && argc > 2) {
        snprintf(path, sizeof path, "%s/leased", argv[2]);
        int fd = open(path, O_CREAT | O_RDONLY, 0600);
        if (fd < 0 || fcntl(fd, F_SETLEASE, F_RDLCK) < 0) { perror("lease"); return 1; }
    } else if (!strcmp(kind, "forced")) {
        FILE *f = fopen("/proc/sys/kernel/shm_rmid_forced", "w");
        if (!f || fprintf(f, "1\n") < 0 || fclose(f) != 0) { perror("shm_rmid_forced"); return 1; }
        /* Segment 0 is attached by no one: a dump that attached and detached it would
         * destroy it, and a second checkpoint would name the other. */
        int idle = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
        int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
        if (idle < 0 || id < 0 || shmat(id, NULL, 0) == (void *)-1) { perror("shm"); return 1; }
    } else if (!strcmp(kind, "otherq")) {
        /* A queue kept open across unshare(CLONE_NEWIPC); the new namespace has one of
         * the same name. */
        struct mq_attr at = {.mq_maxmsg = 2, .mq_msgsize = 16};
        if (mq_open("/elsewhere", O_CREAT | O_RDWR, 0600, &at) == (mqd_t)-1 || unshare(CLONE_NEWIPC) < 0 ||
            mq_open("/elsewhere", O_CREAT | O_RDWR, 0600, &at) == (mqd_t)-1) { perror("otherq"); return 1; }
    } else if (!strcmp(kind, "ownns")) {
        int sync[2];
        if (pipe(sync) < 0) { perror("pipe"); return 1; }
        if (fork() == 0) {
            if (unshare(CLONE_NEWIPC) < 0 || write(sync[1], "x", 1) != 1) _exit(1);
            for (;;) pause();
        }
        char x;
        if (read(sync[0], &x, 1) != 1) { fprintf(stderr, "the child did not unshare\n"); return 1; }
    } else if (!strcmp(kind, "bigsem")) {
        FILE *f = fopen("/proc/sys/kernel/sem", "w");
        if (!f || fprintf(f, "32001 1024000000 500 32000\n") < 0 || fclose(f) != 0) { perror("kernel.sem"); return 1; }
        if (semget(IPC_PRIVATE, 32001, IPC_CREAT | 0600) < 0) { perror("semget"); return 1; }
    } else if (!strcmp(kind, "procchild")) {
        pid_t kid = fork();
        if (kid == 0) for (;;) pause();
        snprintf(path, sizeof path, "/proc/%d/status", (int)kid);
        if (kid < 0 || open(path, O_RDONLY) < 0) { perror("procchild"); return 1; }
    } else if (!strcmp(kind, "proc")) {
        char part[10];
        int fd = open("/proc/self/status", O_RDONLY);
        if (fd < 0 || read(fd, part, sizeof part) != sizeof part) { perror("proc"); return 1; }
    } else if (!strcmp(kind, "hugefd")) {
        /* Only an fd: no mapping shows it. */
        int fd = memfd_create("huge", MFD_HUGETLB);
        if (fd < 0) {
            say("ready no-hugetlb");
            for (;;) pause();
        }
    } else if (!strcmp(kind, "hugetlb")) {
        void *p = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (p == MAP_FAILED) {
            say("ready no-hugetlb");
            for (;;) pause();
        }
        memset(p, 1, 4096);
    } else {
        return 2;
    }
    say("ready");
    for (;;) pause();
}

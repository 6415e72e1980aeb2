/* The objects of an IPC namespace, checked after a move by the program itself: a System
 * V segment attached by a parent and its forked child (a write of the child after the
 * restore is seen by the parent), one only the child attaches (locked, SHM_LOCK), one no
 * one attaches, one attached read-only and removed (IPC_RMID) while attached, one whose
 * first page was unmapped, one whose middle page was unmapped (one attachment, two
 * VMAs); a semaphore set; a message queue with four messages of different types made by
 * another uid (one longer than the msgmax set after it was sent; qbytes lowered below
 * what it holds); a POSIX message queue with messages of two priorities and no open fd,
 * one with an open non-blocking fd, two large ones made by two users; changed limits (kernel.msgmax, and kernel.shmmax below
 * the segments' sizes, lowered after they were made); two files
 * of /proc open and not yet read (its own status, meminfo). Ids are not those a fresh
 * namespace would give.
 * Usage: ipc TRIGGER — after "ready", waits for the file TRIGGER, then checks and prints
 * "verdict ok" or "verdict FAIL: ...". */
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "say.h"

#define SEG (64 * 1024)
static char fail[400];

static void bad(const char *what) {
    size_t n = strlen(fail);
    snprintf(fail + n, sizeof fail - n, "%s; ", what);
}

static void wait_for(const char *path) {
    while (access(path, F_OK) != 0) usleep(50000);
}

struct msg {
    long mtype;
    char text[96];
};

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    FILE *f;

    /* Objects made and removed first: the ids that follow are not those a fresh namespace
     * would hand out. */
    shmctl(shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600), IPC_RMID, NULL);
    semctl(semget(IPC_PRIVATE, 1, IPC_CREAT | 0600), 0, IPC_RMID);
    msgctl(msgget(IPC_PRIVATE, IPC_CREAT | 0600), IPC_RMID, NULL);
    int a = shmget(IPC_PRIVATE, SEG, IPC_CREAT | 0600);
    int b = shmget(0x1234, 8192, IPC_CREAT | IPC_EXCL | 0640);
    if (a < 0 || b < 0) { perror("shmget"); return 1; }
    char *pa = shmat(a, NULL, 0);
    char *pb = shmat(b, NULL, 0);
    if (pa == (void *)-1 || pb == (void *)-1) { perror("shmat"); return 1; }
    strcpy(pa, "parent-data");
    strcpy(pa + 32768, "far-marker");
    strcpy(pb, "unattached");
    shmdt(pb);

    /* c: attached read-only, then removed while attached; d: attached, its first page
     * unmapped (the VMA left starts 4096 bytes into it); b is locked in memory. */
    int c = shmget(IPC_PRIVATE, 3 * 4096, IPC_CREAT | 0600);
    int d = shmget(IPC_PRIVATE, 4 * 4096, IPC_CREAT | 0600);
    char *pd = shmat(d, NULL, 0);
    char *tmp = shmat(c, NULL, 0);
    if (c < 0 || d < 0 || pd == (void *)-1 || tmp == (void *)-1) { perror("shm c/d"); return 1; }
    strcpy(tmp + 4096, "read-only");
    shmdt(tmp);
    char *pc = shmat(c, NULL, SHM_RDONLY);
    if (pc == (void *)-1 || shmctl(c, IPC_RMID, NULL) < 0 || shmctl(b, SHM_LOCK, NULL) < 0) { perror("shm c"); return 1; }
    strcpy(pd + 8192, "second-piece");
    munmap(pd, 4096);
    /* e: a page in the middle unmapped, one
 * whose middle page was unmapped (one attachment, two VMAs), so one attachment is two VMAs; shmdt of its base
     * must still take both. */
    int e = shmget(IPC_PRIVATE, 4 * 4096, IPC_CREAT | 0600);
    char *pe = shmat(e, NULL, 0);
    if (e < 0 || pe == (void *)-1) { perror("shm e"); return 1; }
    strcpy(pe, "e-head");
    strcpy(pe + 3 * 4096, "e-tail");
    munmap(pe + 4096, 4096);

    /* g: attached by no one. */
    int g = shmget(0x4567, 4096, IPC_CREAT | IPC_EXCL | 0600);
    char *pg = shmat(g, NULL, 0);
    if (g < 0 || pg == (void *)-1) { perror("shm g"); return 1; }
    strcpy(pg + 2000, "nobody");
    shmdt(pg);

    int s = semget(0x2345, 3, IPC_CREAT | IPC_EXCL | 0600);
    unsigned short vals[3] = {5, 0, 9};
    if (s < 0 || semctl(s, 0, SETALL, vals) < 0) { perror("sem"); return 1; }

    /* The queue is made by uid 1000, gid 2000: its creator ids come back too. */
    if (setegid(2000) < 0 || seteuid(1000) < 0) { perror("seteuid"); return 1; }
    int q = msgget(0x3456, IPC_CREAT | IPC_EXCL | 0600);
    if (seteuid(0) < 0 || setegid(0) < 0) { perror("seteuid back"); return 1; }
    struct msg m;
    /* The last message is longer than the msgmax set afterwards. */
    const char *texts[4] = {"three", "one", "two", "a message of more than forty bytes, sent before msgmax fell"};
    long types[4] = {3, 1, 2, 9};
    for (int i = 0; i < 4; i++) {
        m.mtype = types[i];
        strcpy(m.text, texts[i]);
        if (msgsnd(q, &m, strlen(texts[i]) + 1, 0) < 0) { perror("msgsnd"); return 1; }
    }
    f = fopen("/proc/sys/kernel/msgmax", "w");
    if (!f || fprintf(f, "40\n") < 0 || fclose(f) != 0) { perror("msgmax"); return 1; }
    /* And shmmax lowered below the segments made before: a restore must still make them. */
    f = fopen("/proc/sys/kernel/shmmax", "w");
    if (!f || fprintf(f, "4096\n") < 0 || fclose(f) != 0) { perror("shmmax"); return 1; }
    /* And the queue's qbytes lowered below what it holds. */
    struct msqid_ds qs;
    if (msgctl(q, IPC_STAT, &qs) < 0) { perror("msgctl"); return 1; }
    qs.msg_qbytes = 16;
    if (msgctl(q, IPC_SET, &qs) < 0) { perror("msgctl(IPC_SET)"); return 1; }

    struct mq_attr at = {.mq_maxmsg = 8, .mq_msgsize = 64};
    mqd_t mq = mq_open("/ipctest", O_CREAT | O_EXCL | O_RDWR, 0640, &at);
    if (mq == (mqd_t)-1) { perror("mq_open"); return 1; }
    mq_send(mq, "low", 4, 1);
    mq_send(mq, "high", 5, 5);
    mq_send(mq, "low2", 5, 1);
    mq_close(mq);
    /* One queue stays open: its fd comes back, non-blocking as it was. */
    mqd_t kept = mq_open("/withfd", O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0600, &at);
    if (kept == (mqd_t)-1 || mq_send(kept, "kept", 5, 2) < 0) { perror("mq withfd"); return 1; }
    /* Two large queues, made by root and by uid 1000, each within its own user's
     * RLIMIT_MSGQUEUE (800 KiB): together more than one user may hold. */
    f = fopen("/proc/sys/fs/mqueue/msg_max", "w");
    if (!f || fprintf(f, "60\n") < 0 || fclose(f) != 0) { perror("msg_max"); return 1; }
    struct mq_attr big = {.mq_maxmsg = 60, .mq_msgsize = 8192};
    pid_t maker = fork();
    if (maker == 0) {
        if (setgid(2000) < 0 || setuid(1000) < 0) _exit(1);
        _exit(mq_open("/big1000", O_CREAT | O_EXCL | O_RDWR, 0600, &big) == (mqd_t)-1 ? 1 : 0);
    }
    int made;
    if (maker < 0 || waitpid(maker, &made, 0) != maker || made != 0) { fprintf(stderr, "mq_open by uid 1000\n"); return 1; }
    mqd_t big0 = mq_open("/big0", O_CREAT | O_EXCL | O_RDWR, 0600, &big);
    if (big0 == (mqd_t)-1) { perror("mq_open big0"); return 1; }
    mq_close(big0);

    /* Files of /proc opened and not read yet: reopened after the move, they are the
     * process's own again. */
    int status_fd = open("/proc/self/status", O_RDONLY);
    int meminfo_fd = open("/proc/meminfo", O_RDONLY);
    if (status_fd < 0 || meminfo_fd < 0) { perror("/proc"); return 1; }
    /* The child also attaches segment b itself (an attachment of its own, not one
     * inherited) before the parent says ready. */
    int sync[2];
    if (pipe(sync) < 0) { perror("pipe"); return 1; }
    pid_t child = fork();
    if (child == 0) {
        char *cb = shmat(b, NULL, 0);
        if (cb == (void *)-1 || write(sync[1], "x", 1) != 1) _exit(4);
        close(sync[0]);
        close(sync[1]);
        wait_for(argv[1]);
        strcpy(pa + 100, "child-was-here");
        strcpy(cb + 100, "child-b");
        _exit(strcmp(pa, "parent-data") == 0 && strcmp(cb, "unattached") == 0 ? 0 : 3);
    }
    char x;
    if (read(sync[0], &x, 1) != 1) { perror("sync"); return 1; }
    close(sync[0]);
    close(sync[1]);
    say("ready shm=%d,%d,%d,%d,%d,%d sem=%d msg=%d", a, b, c, d, e, g, s, q);
    wait_for(argv[1]);

    int status = 0;
    waitpid(child, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) bad("the child did not see the parent's data");
    if (strcmp(pa, "parent-data") != 0) bad("shm contents at 0");
    if (strcmp(pa + 32768, "far-marker") != 0) bad("shm contents at 32768");
    if (strcmp(pa + 100, "child-was-here") != 0) bad("the child's write is not seen by the parent");
    struct shmid_ds ds;
    if (shmctl(a, IPC_STAT, &ds) < 0) bad("segment a is gone or has another id");
    else if (ds.shm_nattch != 1 || ds.shm_segsz != SEG || (ds.shm_perm.mode & 0777) != 0600) bad("segment a's stat");
    if (shmget(0x1234, 0, 0) != b) bad("segment b has another id");
    else {
        char *p = shmat(b, NULL, SHM_RDONLY);
        if (p == (void *)-1 || strcmp(p, "unattached") != 0) bad("segment b's contents");
        else if (strcmp(p + 100, "child-b") != 0) bad("the child's own attachment of segment b");
        if (shmctl(b, IPC_STAT, &ds) < 0 || (ds.shm_perm.mode & 0777) != 0640) bad("segment b's mode");
    }
    if (shmctl(c, IPC_STAT, &ds) < 0 || !(ds.shm_perm.mode & SHM_DEST) || ds.shm_nattch != 1) bad("segment c is not removed-but-attached");
    if (strcmp(pc + 4096, "read-only") != 0) bad("segment c's contents");
    if (mprotect(pc, 4096, PROT_READ | PROT_WRITE) == 0) bad("segment c became writable");
    if (shmctl(b, IPC_STAT, &ds) < 0 || !(ds.shm_perm.mode & SHM_LOCKED)) bad("segment b is not locked");
    if (strcmp(pd + 8192, "second-piece") != 0) bad("the piece of segment d");
    if (shmctl(d, IPC_STAT, &ds) < 0 || ds.shm_nattch != 1) bad("segment d's attachments");
    if (strcmp(pe, "e-head") != 0 || strcmp(pe + 3 * 4096, "e-tail") != 0) bad("the pieces of segment e");
    if (shmctl(e, IPC_STAT, &ds) < 0 || ds.shm_nattch != 2) bad("segment e's two VMAs");
    if (shmdt(pe) < 0 || shmctl(e, IPC_STAT, &ds) < 0 || ds.shm_nattch != 0) bad("shmdt left a piece of segment e");
    if (shmget(0x4567, 0, 0) != g || shmctl(g, IPC_STAT, &ds) < 0 || ds.shm_nattch != 0) bad("segment g's id or attachments");
    else if ((pg = shmat(g, NULL, SHM_RDONLY)) == (void *)-1 || strcmp(pg + 2000, "nobody") != 0) bad("segment g's contents");
    unsigned short got[3] = {0, 0, 0};
    if (semget(0x2345, 0, 0) != s || semctl(s, 0, GETALL, got) < 0) bad("semaphore set");
    else if (got[0] != 5 || got[1] != 0 || got[2] != 9) bad("semaphore values");
    if (msgget(0x3456, 0) != q) bad("message queue id");
    else if (msgctl(q, IPC_STAT, &qs) < 0 || qs.msg_perm.cuid != 1000 || qs.msg_perm.cgid != 2000 || qs.msg_perm.uid != 1000)
        bad("message queue creator or owner");
    else if (qs.msg_qbytes != 16 || qs.msg_qnum != 4) bad("message queue qbytes or count");
    for (int i = 0; i < 4; i++) {
        memset(&m, 0, sizeof m);
        if (msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT) < 0 || m.mtype != types[i] || strcmp(m.text, texts[i]) != 0) {
            bad("message order or contents");
            break;
        }
    }
    const char *bigs[2] = {"/big0", "/big1000"};
    for (int i = 0; i < 2; i++) {
        mqd_t bq = mq_open(bigs[i], O_RDONLY);
        struct mq_attr ba;
        if (bq == (mqd_t)-1 || mq_getattr(bq, &ba) < 0 || ba.mq_maxmsg != 60 || ba.mq_msgsize != 8192) bad("a large queue");
        if (bq != (mqd_t)-1) mq_close(bq);
    }
    mq = mq_open("/ipctest", O_RDWR | O_NONBLOCK);
    const char *want[3] = {"high", "low", "low2"};
    unsigned want_prio[3] = {5, 1, 1};
    if (mq == (mqd_t)-1 || mq_getattr(mq, &at) < 0 || at.mq_maxmsg != 8 || at.mq_msgsize != 64) bad("POSIX queue attributes");
    else
        for (int i = 0; i < 3; i++) {
            char buf[64];
            unsigned prio = 0;
            if (mq_receive(mq, buf, sizeof buf, &prio) < 0 || prio != want_prio[i] || strcmp(buf, want[i]) != 0) {
                bad("POSIX queue messages");
                break;
            }
        }
    char kbuf[64];
    unsigned kprio = 0;
    if (mq_getattr(kept, &at) < 0 || !(at.mq_flags & O_NONBLOCK)) bad("the open queue's fd or its flags");
    else if (mq_receive(kept, kbuf, sizeof kbuf, &kprio) < 0 || kprio != 2 || strcmp(kbuf, "kept") != 0) bad("the open queue's message");
    else if (mq_receive(kept, kbuf, sizeof kbuf, &kprio) >= 0 || errno != EAGAIN) bad("the open queue blocks or holds more");
    char text[4096];
    ssize_t n = read(status_fd, text, sizeof text - 1);
    char want_pid[32];
    snprintf(want_pid, sizeof want_pid, "\nPid:\t%d\n", (int)getpid());
    if (n <= 0 || (text[n] = 0, strstr(text, want_pid) == NULL) || strncmp(text, "Name:\tipc\n", 10) != 0)
        bad("/proc/self/status is not the process's own");
    n = read(meminfo_fd, text, sizeof text - 1);
    if (n <= 0 || strncmp(text, "MemTotal:", 9) != 0) bad("/proc/meminfo");
    f = fopen("/proc/sys/kernel/msgmax", "r");
    int msgmax = 0;
    if (!f || fscanf(f, "%d", &msgmax) != 1 || msgmax != 40) bad("kernel.msgmax");
    if (f) fclose(f);
    f = fopen("/proc/sys/kernel/shmmax", "r");
    long shmmax = 0;
    if (!f || fscanf(f, "%ld", &shmmax) != 1 || shmmax != 4096) bad("kernel.shmmax");
    say("after shm=%d,%d,%d,%d,%d,%d sem=%d msg=%d", a, b, c, d, e, g, s, q);
    say("verdict %s%s", fail[0] ? "FAIL: " : "ok", fail);
    return 0;
}

/* The memory map as smaps shows it, for tests/checkpoint_vmas.rs.
 *
 * Usage: vmas DIR TRIGGER   (DIR: a directory of the host's filesystem the test owns;
 *                            TRIGGER: a path the test creates once the restore is done)
 *        vmas uffd          (a mapping registered with a userfaultfd, which a checkpoint
 *                            refuses: prints "ready", then waits)
 *
 * Makes one VMA of each shape:
 *  - two adjacent private anonymous mappings with the same protection, each touched,
 *    the second moved next to the first (so the kernel keeps them apart), and two such
 *    inaccessible ones, each writable once;
 *  - two threads (each a stack next to its guard page);
 *  - a region split by mprotect (rw, r after being writable, rw);
 *  - one mapping per madvise flag (DONTFORK, DONTDUMP, WIPEONFORK, HUGEPAGE,
 *    NOHUGEPAGE, MERGEABLE if the kernel has KSM, SEQUENTIAL, RANDOM);
 *  - mlock, mlock2(MLOCK_ONFAULT) with one page touched, MAP_NORESERVE, MAP_GROWSDOWN,
 *    MAP_DROPPABLE, mseal and an anonymous name where the kernel has them;
 *  - DIR/rw mapped shared read-only from an O_RDWR fd (may be made writable later) and
 *    DIR/ro from an O_RDONLY fd (may not), both fds closed;
 *  - then mlockall(MCL_FUTURE) if RLIMIT_MEMLOCK allows, and forks a child that keeps
 *    them (but the DONTFORK one, and without locks), which judges its own map too
 *    ("child ready …", "child verdict …": future=none, as fork does not carry it).
 * Prints "parent ready N VMAs" with its smaps digest (each VMA's range, perms, name and
 * VmFlags; VmLck). Once TRIGGER exists, takes the digest again and prints
 * "differs: …" for each line that changed, then
 *     parent verdict vmas=same|DIFFERENT future=lo|none|BAD writable=ok|BAD… readonly=ok|BAD
 * (future: a new mapping is locked, as mlockall(MCL_FUTURE) says; writable: DIR/rw's
 * mapping can be mprotect'ed writable and a write reaches the file; readonly: DIR/ro's
 * cannot). The digest is read with read(2) into static buffers: no allocation may move
 * the heap between the two. Build: cc -O2 -pthread vmas.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#include "say.h"

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif
#ifndef SYS_mseal
#define SYS_mseal 462
#endif

#define PAGE 4096L
#define DIGEST_MAX (256 * 1024)

static char smaps[1 << 20];
static char before[DIGEST_MAX], after[DIGEST_MAX];
static const char *trigger;

static void die(const char *what) {
    say("error %s: %s", what, strerror(errno));
    exit(1);
}

static long slurp(const char *path, char *buf, long cap) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(path);
    long n = 0, r;
    while (n < cap - 1 && (r = read(fd, buf + n, cap - 1 - n)) > 0) n += r;
    close(fd);
    buf[n] = 0;
    return n;
}

/* One line per VMA: "start-end perms name | flags" (VmFlags without sd, which the
 * kernel sets on every new VMA), then "VmLck: N kB". Returns the number of VMAs. */
static int digest(char *out) {
    slurp("/proc/self/smaps", smaps, sizeof smaps);
    int vmas = 0;
    long o = 0;
    out[0] = 0;
    for (char *line = strtok(smaps, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "VmFlags:", 8)) {
            o += snprintf(out + o, DIGEST_MAX - o, " |");
            for (char *f = line + 8; *f;) {
                while (*f == ' ') f++;
                if (!*f) break;
                if (strncmp(f, "sd", 2)) o += snprintf(out + o, DIGEST_MAX - o, " %.2s", f);
                f += 2;
            }
            o += snprintf(out + o, DIGEST_MAX - o, "\n");
            continue;
        }
        char *sp = strchr(line, ' ');
        if (!sp || !strchr(line, '-') || strchr(line, ':') < sp) continue; /* a field line */
        /* start-end perms offset dev inode name */
        char range[64], perms[8], name[512] = "";
        if (sscanf(line, "%63s %7s %*s %*s %*s %511[^\n]", range, perms, name) < 2) continue;
        o += snprintf(out + o, DIGEST_MAX - o, "%s %s %s", range, perms, name);
        vmas++;
    }
    char status[8192];
    slurp("/proc/self/status", status, sizeof status);
    char *lck = strstr(status, "VmLck:");
    if (lck) o += snprintf(out + o, DIGEST_MAX - o, "%.*s\n", (int)strcspn(lck, "\n"), lck);
    return vmas;
}

static void *thread_main(void *arg) {
    (void)arg;
    for (;;) pause(); /* its stack stays as it is until the process exits */
    return NULL;
}

static char *map(long pages, int prot, int flags) {
    char *p = mmap(NULL, pages * PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (p == MAP_FAILED) die("mmap");
    return p;
}

static char *map_file(const char *dir, const char *name, int mode) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, 2 * PAGE)) die(path);
    close(fd);
    fd = open(path, mode);
    if (fd < 0) die(path);
    char *p = mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) die("mmap file");
    close(fd);
    return p;
}

/* A mapping registered for missing-page faults; UFFD_USER_MODE_ONLY: a task without
 * CAP_SYS_PTRACE may make one only so. */
static void uffd_only(void) {
    int fd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    if (fd < 0) die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API};
    if (ioctl(fd, UFFDIO_API, &api)) die("UFFDIO_API");
    char *p = map(4, PROT_READ | PROT_WRITE, 0);
    struct uffdio_register reg = {.range = {(unsigned long)p, 4 * PAGE}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(fd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
    say("ready uffd at %p", (void *)p);
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "uffd")) uffd_only(); /* never returns */
    if (argc != 3) {
        fprintf(stderr, "usage: vmas DIR TRIGGER\n");
        return 2;
    }
    const char *dir = argv[1];
    trigger = argv[2];

    /* Two adjacent anonymous VMAs with the same flags: the second is touched elsewhere,
     * then moved next to the first, and keeps its own page offset. */
    char *pair = map(8, PROT_NONE, 0);
    char *first = mmap(pair, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    char *second = map(4, PROT_READ | PROT_WRITE, 0);
    if (first == MAP_FAILED) die("mmap first");
    first[0] = 1;
    second[0] = 2;
    if (mremap(second, 4 * PAGE, 4 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, pair + 4 * PAGE) == MAP_FAILED)
        die("mremap");

    /* The same with two inaccessible halves, each once writable and touched (so still
     * charged, smaps `ac`). */
    char *closed = map(4, PROT_READ | PROT_WRITE, 0);
    char *other = map(2, PROT_READ | PROT_WRITE, 0);
    closed[0] = other[0] = 1;
    if (mprotect(closed, 4 * PAGE, PROT_NONE) || mprotect(other, 2 * PAGE, PROT_NONE)) die("mprotect none");
    if (munmap(closed + 2 * PAGE, 2 * PAGE)) die("munmap");
    if (mremap(other, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, closed + 2 * PAGE) == MAP_FAILED)
        die("mremap none");

    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&threads[i], NULL, thread_main, NULL)) die("pthread_create");

    char *split = map(6, PROT_READ | PROT_WRITE, 0);
    memset(split, 7, 6 * PAGE);
    if (mprotect(split + 2 * PAGE, 2 * PAGE, PROT_READ)) die("mprotect");

    const int advice[] = {MADV_DONTFORK, MADV_DONTDUMP, MADV_WIPEONFORK, MADV_HUGEPAGE,
                          MADV_NOHUGEPAGE, MADV_MERGEABLE, MADV_SEQUENTIAL, MADV_RANDOM};
    for (unsigned i = 0; i < sizeof advice / sizeof *advice; i++) {
        char *p = map(2, PROT_READ | PROT_WRITE, 0);
        p[0] = (char)i;
        if (madvise(p, 2 * PAGE, advice[i]) && !(advice[i] == MADV_MERGEABLE && errno == EINVAL))
            die("madvise");
    }

    char *locked = map(4, PROT_READ | PROT_WRITE, 0);
    if (mlock(locked, 4 * PAGE)) die("mlock");
    char *onfault = map(4, PROT_READ | PROT_WRITE, 0);
    if (syscall(SYS_mlock2, onfault, 4 * PAGE, MLOCK_ONFAULT)) die("mlock2");
    onfault[PAGE] = 1;

    map(4, PROT_READ | PROT_WRITE, MAP_NORESERVE)[0] = 1;
    map(4, PROT_READ | PROT_WRITE, MAP_GROWSDOWN)[3 * PAGE] = 1;
    char *droppable = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
    if (droppable != MAP_FAILED) droppable[0] = 1;
    char *sealed = map(2, PROT_READ, 0);
    if (syscall(SYS_mseal, sealed, 2 * PAGE, 0) && errno != ENOSYS) die("mseal");

    char *named = map(3, PROT_READ | PROT_WRITE, 0);
    named[0] = 1;
    /* EINVAL: a kernel without CONFIG_ANON_VMA_NAME. */
    if (prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, named, 3 * PAGE, "vmas-test") && errno != EINVAL)
        die("PR_SET_VMA_ANON_NAME");

    char *rw = map_file(dir, "rw", O_RDWR);
    char *ro = map_file(dir, "ro", O_RDONLY);

    struct rlimit lim;
    int future = !getrlimit(RLIMIT_MEMLOCK, &lim) && lim.rlim_cur > 0 && !mlockall(MCL_FUTURE);

    /* A child forked now keeps these VMAs (a restore forks it from its rebuilt parent),
     * but for the DONTFORK one; fork drops its locks, and MCL_FUTURE is not inherited. */
    pid_t child = fork();
    if (child < 0) die("fork");
    const char *who = child ? "parent " : "child ";
    if (!child) future = 0;
    int n = digest(before);
    say("%sready %d VMAs future %s", who, n, future ? "set" : "unavailable");
    if (child) {
        ssize_t w = write(1, before, strlen(before)); /* for whoever reads a failure */
        (void)w;
    }
    while (access(trigger, F_OK)) usleep(20000);

    digest(after);
    int same = !strcmp(before, after);
    if (!same) {
        /* Line by line: both are sorted by address. */
        char *b = before, *a = after;
        while (*b || *a) {
            size_t lb = strcspn(b, "\n"), la = strcspn(a, "\n");
            if (lb != la || strncmp(b, a, lb)) say("%sdiffers: before %.*s / after %.*s", who, (int)lb, b, (int)la, a);
            b += lb + (b[lb] == '\n');
            a += la + (a[la] == '\n');
        }
    }

    /* A new mapping is locked if MCL_FUTURE came back. */
    const char *future_state = "none";
    char *probe = map(1, PROT_READ | PROT_WRITE, 0);
    slurp("/proc/self/smaps", smaps, sizeof smaps);
    char head[32];
    snprintf(head, sizeof head, "%lx-", (unsigned long)probe);
    char *at = strstr(smaps, head);
    char *flags = at ? strstr(at, "VmFlags:") : NULL;
    int probe_locked = flags && strstr(flags, " lo") && strstr(flags, " lo") < strchr(flags, '\n');
    if (future) future_state = probe_locked ? "lo" : "BAD";
    else if (probe_locked) future_state = "BAD";

    const char *writable = "ok";
    if (mprotect(rw, 2 * PAGE, PROT_READ | PROT_WRITE)) {
        writable = errno == EACCES ? "BAD-EACCES" : "BAD-mprotect";
    } else {
        rw[5] = 'X';
        char path[4096], got = 0;
        snprintf(path, sizeof path, "%s/rw", dir);
        int fd = open(path, O_RDONLY);
        if (msync(rw, 2 * PAGE, MS_SYNC) || fd < 0 || pread(fd, &got, 1, 5) != 1 || got != 'X')
            writable = "BAD-write-not-in-file";
        if (fd >= 0) close(fd);
    }
    const char *readonly = mprotect(ro, 2 * PAGE, PROT_READ | PROT_WRITE) ? "ok" : "BAD";
    say("%sverdict vmas=%s future=%s writable=%s readonly=%s", who, same ? "same" : "DIFFERENT", future_state,
        writable, readonly);
    if (child) waitpid(child, NULL, 0);
    return 0;
}

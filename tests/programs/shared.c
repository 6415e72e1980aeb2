/* Memory and files shared between a parent and its child, for tests/checkpoint_shared.rs.
 *
 * Usage: shared DIR   (DIR: a directory of the host's filesystem the test owns)
 *
 * Before it forks, the parent makes:
 *  - a MAP_SHARED | MAP_ANONYMOUS region of 1 MiB;
 *  - a memfd "cache" of 10000 bytes (a pattern), sealed against shrinking and growing,
 *    held by an fd and mapped shared;
 *  - DIR/deleted, 5000 bytes, opened, read up to byte 4242, then unlinked (open, deleted);
 *  - /dev/shm/mapped, 8192 bytes, mapped shared, then unlinked and closed (deleted, only
 *    mapped: as a POSIX semaphore of python's multiprocessing is).
 * The child then loops: it increments a counter in the anonymous region and another in
 * the deleted mapping, and echoes the parent's "ping" word back. The parent loops: it
 * increments ping, and every 500 ms prints
 *     status anon=N shm=M echo=ok|late memfd=ok|BAD… deleted=ok|BAD…
 * checking the memfd (contents through fd and mapping agree with the pattern, size, seals,
 * name, a write through the fd is seen in the mapping) and the deleted file (position,
 * contents, "(deleted)" in its link). Build: cc -O2 shared.c */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MEMFD_LEN 10000
#define DELETED_LEN 5000
#define DELETED_POS 4242

static void die(const char *what) {
    perror(what);
    exit(1);
}

static char pattern(long i, int salt) { return (char)('a' + (i * 7 + salt) % 26); }

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static const char *check_memfd(int fd, const char *map) {
    static char why[128];
    char buf[MEMFD_LEN], link[256] = {0}, path[64];
    struct stat st;
    if (pread(fd, buf, MEMFD_LEN, 0) != MEMFD_LEN) return "BAD-read";
    for (long i = 0; i < MEMFD_LEN; i++)
        if (i != 100 && (buf[i] != pattern(i, 1) || map[i] != buf[i])) {
            snprintf(why, sizeof why, "BAD-contents-at-%ld", i);
            return why;
        }
    if (fstat(fd, &st) || st.st_size != MEMFD_LEN) return "BAD-size";
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals != (F_SEAL_SHRINK | F_SEAL_GROW)) {
        snprintf(why, sizeof why, "BAD-seals-%#x", seals);
        return why;
    }
    if (ftruncate(fd, MEMFD_LEN * 2) == 0) return "BAD-grew-despite-seal";
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (readlink(path, link, sizeof link - 1) < 0 || strcmp(link, "/memfd:cache (deleted)") != 0) {
        snprintf(why, sizeof why, "BAD-name-%s", link);
        return why;
    }
    /* One object: a write through the fd shows in the mapping. */
    static char v = 'A';
    v = v == 'Z' ? 'A' : v + 1;
    if (pwrite(fd, &v, 1, 100) != 1 || map[100] != v) return "BAD-fd-and-map-differ";
    return "ok";
}

static const char *check_deleted(int fd) {
    char buf[DELETED_LEN], link[256] = {0}, path[64];
    if (lseek(fd, 0, SEEK_CUR) != DELETED_POS) return "BAD-position";
    if (pread(fd, buf, DELETED_LEN, 0) != DELETED_LEN) return "BAD-read";
    for (long i = 0; i < DELETED_LEN; i++)
        if (buf[i] != pattern(i, 2)) return "BAD-contents";
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    size_t n = readlink(path, link, sizeof link - 1);
    if (n < 10 || strcmp(link + n - 10, " (deleted)") != 0) return "BAD-not-deleted";
    return "ok";
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: shared DIR\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    volatile uint64_t *anon =
        mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED) die("mmap anon");

    int mfd = memfd_create("cache", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (mfd < 0) die("memfd_create");
    char buf[MEMFD_LEN];
    for (long i = 0; i < MEMFD_LEN; i++) buf[i] = pattern(i, 1);
    if (write(mfd, buf, MEMFD_LEN) != MEMFD_LEN) die("write memfd");
    if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW)) die("seal");
    char *mmap_memfd = mmap(NULL, MEMFD_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (mmap_memfd == MAP_FAILED) die("mmap memfd");

    char path[4096];
    snprintf(path, sizeof path, "%s/deleted", argv[1]);
    int dfd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
    if (dfd < 0) die("open deleted");
    for (long i = 0; i < DELETED_LEN; i++) buf[i] = pattern(i, 2);
    if (write(dfd, buf, DELETED_LEN) != DELETED_LEN) die("write deleted");
    if (lseek(dfd, DELETED_POS, SEEK_SET) != DELETED_POS || unlink(path)) die("unlink deleted");

    int sfd = open("/dev/shm/mapped", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (sfd < 0 || ftruncate(sfd, 8192)) die("/dev/shm/mapped");
    volatile uint64_t *shm = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    if (shm == MAP_FAILED) die("mmap shm");
    close(sfd);
    unlink("/dev/shm/mapped");

    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        for (;;) {
            anon[0]++;
            shm[0]++;
            anon[2] = anon[1];
            sleep_ms(5);
        }
    }
    printf("ready child %d\n", child);
    for (long round = 0;; round++) {
        anon[1]++;
        sleep_ms(50);
        if (round % 10) continue;
        /* The child echoes within 5 ms: after 50 ms, an echo behind by more than one
         * means it no longer sees our writes. */
        uint64_t ping = anon[1], echo = anon[2];
        printf("status anon=%lu shm=%lu echo=%s memfd=%s deleted=%s\n", (unsigned long)anon[0],
               (unsigned long)shm[0], echo + 1 >= ping ? "ok" : "late", check_memfd(mfd, mmap_memfd),
               check_deleted(dfd));
    }
}

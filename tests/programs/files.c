/* Open files whose state a checkpoint must carry, for tests/checkpoint_restore.rs.
 *
 * Usage: files DIR   (DIR holds numbers.txt: the lines "1" .. "N", made by the test)
 *
 * Every 20 ms it reads the next line of DIR/numbers.txt through one fd, one byte at a
 * time (so the only record of where it is is the fd's position), checks that the number
 * is the previous one plus 1, and appends it to DIR/append.log through an fd opened with
 * O_APPEND. Along the way it checks its other fds: a directory (openat through it finds
 * numbers.txt), /dev/null (writes succeed), /dev/urandom (reads give bytes), and that the
 * log fd still has O_APPEND. It prints "hb N" every 25 lines and "ERROR ..." on any
 * inconsistency. Build: cc -O2 files.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

static int must_open(const char *path, int flags) {
    int fd = open(path, flags, 0644);
    if (fd < 0) {
        say("ERROR open %s: %s", path, strerror(errno));
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        say("ERROR usage: files DIR");
        return 2;
    }
    if (chdir(argv[1]) != 0) {
        say("ERROR chdir %s: %s", argv[1], strerror(errno));
        return 1;
    }
    int numbers = must_open("numbers.txt", O_RDONLY);
    int log = must_open("append.log", O_WRONLY | O_CREAT | O_APPEND);
    int dir = must_open(".", O_RDONLY | O_DIRECTORY);
    int null = must_open("/dev/null", O_WRONLY);
    int random = must_open("/dev/urandom", O_RDONLY);
    say("fds numbers %d log %d dir %d null %d random %d", numbers, log, dir, null, random);
    long prev = 0;
    for (;;) {
        char line[64];
        size_t len = 0;
        for (;;) {
            char c;
            ssize_t r = read(numbers, &c, 1);
            if (r == 0) {
                say("ERROR numbers.txt ended after %ld", prev);
                sleep(1000000);
            }
            if (r < 0) {
                if (errno == EINTR) continue;
                say("ERROR reading numbers.txt after %ld: %s", prev, strerror(errno));
                sleep(1000000);
            }
            if (c == '\n') break;
            if (len < sizeof line - 1) line[len++] = c;
        }
        line[len] = 0;
        long v = strtol(line, NULL, 10);
        if (v != prev + 1) say("ERROR read %s after %ld", line, prev);
        prev = v;

        int fl = fcntl(log, F_GETFL);
        if (fl < 0 || !(fl & O_APPEND)) say("ERROR append.log fd flags %#x lack O_APPEND", fl);
        char out[32];
        int n = snprintf(out, sizeof out, "%ld\n", v);
        if (write(log, out, n) != n) say("ERROR writing append.log: %s", strerror(errno));

        int probe = openat(dir, "numbers.txt", O_RDONLY);
        if (probe < 0) say("ERROR openat(dir fd, numbers.txt): %s", strerror(errno));
        else close(probe);
        if (write(null, out, n) != n) say("ERROR writing /dev/null: %s", strerror(errno));
        char rnd[8];
        if (read(random, rnd, sizeof rnd) != (ssize_t)sizeof rnd) say("ERROR reading /dev/urandom: %s", strerror(errno));

        if (v % 25 == 0) say("hb %ld", v);
        struct timespec req = {0, 20 * 1000 * 1000};
        while (nanosleep(&req, &req) != 0 && errno == EINTR) {
        }
    }
}

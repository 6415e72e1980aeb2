/* Two processes of two threads each that count, for tests/failpoints.rs.
 *
 * The parent forks a child; each process starts a second thread that sleeps in a loop,
 * and its main thread ticks every 50 ms: it prints "tick ROLE N" to stdout and appends
 * the same line to the file named by argv[1] (on the machine's filesystem, which lab
 * containers share). A restore that was interrupted must leave that file as it was: no
 * process of the image may have run. The main threads block SIGUSR2 and the sleepers
 * SIGUSR1, so that a signal mask left changed by an interrupted checkpoint shows. Prints
 * "ready" once both processes and their threads run.
 * Build: cc -O2 -pthread ticker.c */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "say.h"

static void nap(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void *sleeper(void *arg) {
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_SETMASK, &set, NULL);
    for (;;) nap(1000);
    return NULL;
}

static void run(const char *role, const char *path, int ready_pipe) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_SETMASK, &set, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, sleeper, NULL) != 0) {
        say("ERROR %s: pthread_create", role);
        exit(1);
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        say("ERROR %s: open %s", role, path);
        exit(1);
    }
    if (ready_pipe >= 0) {
        char c = 1;
        if (write(ready_pipe, &c, 1) != 1) say("ERROR %s: ready pipe", role);
        close(ready_pipe);
    }
    for (unsigned long n = 1;; n++) {
        char line[64];
        int len = snprintf(line, sizeof line, "tick %s %lu\n", role, n);
        if (write(fd, line, len) != len) say("ERROR %s: write to %s", role, path);
        say("tick %s %lu", role, n);
        nap(50);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        say("usage: ticker FILE");
        return 2;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return 1;
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        close(p[0]);
        run("child", argv[1], p[1]);
    }
    close(p[1]);
    char c;
    if (read(p[0], &c, 1) != 1) {
        say("ERROR parent: the child did not start");
        return 1;
    }
    close(p[0]);
    say("ready");
    run("parent", argv[1], -1);
    return 0;
}

/* say(): printf a line to stdout in one write(2), for the test programs of
 * tests/programs: lines of different threads never interleave, and a test reading the
 * log never sees half a line's words. */
#ifndef SAY_H
#define SAY_H
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static void say(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(1, buf, n);
    (void)w;
}
#endif

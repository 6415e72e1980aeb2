/* TCP listeners and UDP sockets with their options, for tests/checkpoint_inet.rs.
 *
 * Usage: inet PORT UDPPORT CLIENTIP CLIENTPORT TRIGGER
 *
 * Before "ready" it makes, each with options set away from their defaults:
 *  - an IPv4 TCP listener on 0.0.0.0:PORT (backlog 77);
 *  - two IPv6 TCP listeners on [::]:PORT, IPV6_V6ONLY (backlog 33), sharing the port
 *    with the first and, by SO_REUSEPORT, with each other; owned by uid 4242 (made
 *    while the fsuid is 4242), as a reuseport group must be;
 *  - a UDP socket bound to 0.0.0.0:UDPPORT;
 *  - a UDP socket bound to 0.0.0.0:UDPPORT+1 and connected to CLIENTIP:CLIENTPORT, with
 *    a receive timeout of 2.5 s;
 *  - an IPv6 TCP socket, unbound, and an IPv4 one bound to 0.0.0.0:PORT+3, not listening,
 *    its receive buffer forced beyond rmem_max.
 * It reads back every option it set (and a few it did not) and keeps the answers. Once
 * TRIGGER exists (after the move) it prints
 *     options same | option FD/NAME was A now B
 * then serves, in this order: one TCP connection on the IPv4 listener (reads a word,
 * answers "tcp ok WORD"), one connection it makes itself to [::1]:PORT, accepted on
 * whichever IPv6 listener the kernel chose ("v6 accept ok"), one datagram on the bound UDP socket (answered
 * "pong WORD" to its sender), after which it sends "hello" on the connected one, and
 * prints "done". Build: cc -O2 inet.c */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "say.h"

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void set(int fd, int level, int opt, int v, const char *name) {
    if (setsockopt(fd, level, opt, &v, sizeof v) < 0) die(name);
}

struct opt {
    int level, opt;
    const char *name;
};

/* Read on every socket; an option the socket does not answer is remembered as such. */
static const struct opt OPTS[] = {
    {SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR"},     {SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT"},
    {SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE"},     {SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF"},
    {SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF"},           {SOL_SOCKET, SO_PRIORITY, "SO_PRIORITY"},
    {SOL_SOCKET, SO_MARK, "SO_MARK"},               {SOL_SOCKET, SO_RCVLOWAT, "SO_RCVLOWAT"},
    {SOL_SOCKET, SO_BROADCAST, "SO_BROADCAST"},     {SOL_SOCKET, SO_ACCEPTCONN, "SO_ACCEPTCONN"},
    {IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY"},      {IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE"},
    {IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL"},  {IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT"},
    {IPPROTO_TCP, TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT"}, {IPPROTO_TCP, TCP_FASTOPEN, "TCP_FASTOPEN"},
    {IPPROTO_TCP, TCP_MAXSEG, "TCP_MAXSEG"},        {IPPROTO_IP, IP_TOS, "IP_TOS"},
    {IPPROTO_IP, IP_TTL, "IP_TTL"},                 {IPPROTO_IP, IP_FREEBIND, "IP_FREEBIND"},
    {IPPROTO_IP, IP_PKTINFO, "IP_PKTINFO"},         {IPPROTO_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY"},
    {IPPROTO_IPV6, IPV6_TCLASS, "IPV6_TCLASS"},     {IPPROTO_IPV6, IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS"},
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])
#define NSOCK 7
#define STRS 3

struct answers {
    int value[NOPTS];
    int ok[NOPTS];
    struct linger linger;
    unsigned owner;
    struct timeval rcvtimeo;
    char cc[16], local[64], peer[64];
};

static void addr_str(struct sockaddr_storage *a, char *out) {
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (a->ss_family == AF_INET) {
        struct sockaddr_in *s = (void *)a;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof ip);
        port = ntohs(s->sin_port);
    } else if (a->ss_family == AF_INET6) {
        struct sockaddr_in6 *s = (void *)a;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof ip);
        port = ntohs(s->sin6_port);
    }
    snprintf(out, 64, "%s/%d", ip, port);
}

static void read_all(int fd, struct answers *a) {
    memset(a, 0, sizeof *a);
    for (size_t i = 0; i < NOPTS; i++) {
        socklen_t len = sizeof(int);
        a->ok[i] = getsockopt(fd, OPTS[i].level, OPTS[i].opt, &a->value[i], &len) == 0;
    }
    struct stat st;
    a->owner = fstat(fd, &st) == 0 ? st.st_uid : ~0u;
    socklen_t len = sizeof a->rcvtimeo;
    getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &a->rcvtimeo, &len);
    len = sizeof a->linger;
    getsockopt(fd, SOL_SOCKET, SO_LINGER, &a->linger, &len);
    len = sizeof a->cc;
    getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, a->cc, &len);
    struct sockaddr_storage ss = {0};
    len = sizeof ss;
    getsockname(fd, (void *)&ss, &len);
    addr_str(&ss, a->local);
    memset(&ss, 0, sizeof ss);
    len = sizeof ss;
    if (getpeername(fd, (void *)&ss, &len) == 0) addr_str(&ss, a->peer);
}

/* Prints each difference; returns their number. */
static int compare(int fd, const struct answers *was, const struct answers *now) {
    int diffs = 0;
    for (size_t i = 0; i < NOPTS; i++) {
        if (was->ok[i] != now->ok[i] || (was->ok[i] && was->value[i] != now->value[i])) {
            say("option %d/%s was %d (%s) now %d (%s)", fd, OPTS[i].name, was->value[i],
                was->ok[i] ? "ok" : "err", now->value[i], now->ok[i] ? "ok" : "err");
            diffs++;
        }
    }
    if (was->rcvtimeo.tv_sec != now->rcvtimeo.tv_sec || was->rcvtimeo.tv_usec != now->rcvtimeo.tv_usec) {
        say("option %d/SO_RCVTIMEO was %ld.%06ld now %ld.%06ld", fd, (long)was->rcvtimeo.tv_sec,
            (long)was->rcvtimeo.tv_usec, (long)now->rcvtimeo.tv_sec, (long)now->rcvtimeo.tv_usec);
        diffs++;
    }
    if (was->owner != now->owner) {
        say("option %d/owner was %u now %u", fd, was->owner, now->owner);
        diffs++;
    }
    if (was->linger.l_onoff != now->linger.l_onoff || was->linger.l_linger != now->linger.l_linger) {
        say("option %d/SO_LINGER was %d,%d now %d,%d", fd, was->linger.l_onoff, was->linger.l_linger,
            now->linger.l_onoff, now->linger.l_linger);
        diffs++;
    }
    const char *s[STRS][2] = {{was->cc, now->cc}, {was->local, now->local}, {was->peer, now->peer}};
    const char *names[STRS] = {"TCP_CONGESTION", "local address", "peer"};
    for (int i = 0; i < STRS; i++) {
        if (strcmp(s[i][0], s[i][1])) {
            say("option %d/%s was %s now %s", fd, names[i], s[i][0], s[i][1]);
            diffs++;
        }
    }
    return diffs;
}

static int rmem_max(void) {
    int v = 0;
    FILE *f = fopen("/proc/sys/net/core/rmem_max", "r");
    if (!f || fscanf(f, "%d", &v) != 1) die("rmem_max");
    fclose(f);
    return v;
}

static int wait_readable(int fd) {
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 20000) == 1;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: inet PORT UDPPORT CLIENTIP CLIENTPORT TRIGGER\n");
        return 2;
    }
    int port = atoi(argv[1]), uport = atoi(argv[2]), cport = atoi(argv[4]);
    const char *trigger = argv[5];

    int v4 = socket(AF_INET, SOCK_STREAM, 0);
    if (v4 < 0) die("socket v4");
    set(v4, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    set(v4, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
    set(v4, IPPROTO_TCP, TCP_KEEPIDLE, 33, "TCP_KEEPIDLE");
    set(v4, IPPROTO_TCP, TCP_KEEPINTVL, 7, "TCP_KEEPINTVL");
    set(v4, IPPROTO_TCP, TCP_KEEPCNT, 4, "TCP_KEEPCNT");
    set(v4, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    set(v4, IPPROTO_TCP, TCP_DEFER_ACCEPT, 5, "TCP_DEFER_ACCEPT");
    set(v4, IPPROTO_TCP, TCP_FASTOPEN, 16, "TCP_FASTOPEN");
    set(v4, IPPROTO_TCP, TCP_MAXSEG, 1200, "TCP_MAXSEG");
    set(v4, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS");
    set(v4, SOL_SOCKET, SO_PRIORITY, 3, "SO_PRIORITY");
    set(v4, IPPROTO_IP, IP_TTL, 42, "IP_TTL");
    set(v4, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND");
    set(v4, SOL_SOCKET, SO_RCVBUF, 100000, "SO_RCVBUF");
    set(v4, SOL_SOCKET, SO_SNDBUF, 60000, "SO_SNDBUF");
    set(v4, SOL_SOCKET, SO_MARK, 7, "SO_MARK");
    set(v4, SOL_SOCKET, SO_RCVLOWAT, 2, "SO_RCVLOWAT");
    struct linger lg = {1, 3};
    if (setsockopt(v4, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0) die("SO_LINGER");
    if (setsockopt(v4, IPPROTO_TCP, TCP_CONGESTION, "reno", 4) < 0) die("TCP_CONGESTION");
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(v4, (void *)&a4, sizeof a4) < 0) die("bind v4");
    if (listen(v4, 77) < 0) die("listen v4");

    int v6s[2];
    for (int i = 0; i < 2; i++) {
        setfsuid(4242);
        int v6 = socket(AF_INET6, SOCK_STREAM, 0);
        if (v6 < 0) die("socket v6");
        setfsuid(0);
        set(v6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
        set(v6, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
        set(v6, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
        set(v6, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS");
        set(v6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9, "IPV6_UNICAST_HOPS");
        struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
        if (bind(v6, (void *)&a6, sizeof a6) < 0) die("bind v6");
        if (listen(v6, 33) < 0) die("listen v6");
        v6s[i] = v6;
    }

    int ub = socket(AF_INET, SOCK_DGRAM, 0);
    if (ub < 0) die("socket udp");
    set(ub, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST");
    set(ub, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
    set(ub, SOL_SOCKET, SO_RCVBUF, 300000, "SO_RCVBUF");
    struct sockaddr_in au = {.sin_family = AF_INET, .sin_port = htons(uport)};
    if (bind(ub, (void *)&au, sizeof au) < 0) die("bind udp");

    int uc = socket(AF_INET, SOCK_DGRAM, 0);
    if (uc < 0) die("socket udp connected");
    set(uc, IPPROTO_IP, IP_TOS, 0x08, "IP_TOS");
    struct timeval tv = {2, 500000};
    if (setsockopt(uc, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) die("SO_RCVTIMEO");
    struct sockaddr_in ac = {.sin_family = AF_INET, .sin_port = htons(uport + 1)};
    if (bind(uc, (void *)&ac, sizeof ac) < 0) die("bind udp connected");
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(cport)};
    if (inet_pton(AF_INET, argv[3], &peer.sin_addr) != 1) die("CLIENTIP");
    if (connect(uc, (void *)&peer, sizeof peer) < 0) die("connect udp");

    int tu = socket(AF_INET6, SOCK_STREAM, 0);
    if (tu < 0) die("socket unbound");
    set(tu, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    int tb = socket(AF_INET, SOCK_STREAM, 0);
    if (tb < 0) die("socket bound");
    struct sockaddr_in ab = {.sin_family = AF_INET, .sin_port = htons(port + 3)};
    set(tb, SOL_SOCKET, SO_RCVBUFFORCE, rmem_max() + (1 << 20), "SO_RCVBUFFORCE");
    if (bind(tb, (void *)&ab, sizeof ab) < 0) die("bind tcp");

    int fds[NSOCK] = {v4, v6s[0], v6s[1], ub, uc, tu, tb};
    static struct answers was[NSOCK], now[NSOCK];
    for (int i = 0; i < NSOCK; i++) read_all(fds[i], &was[i]);
    say("ready");

    struct stat st;
    while (stat(trigger, &st) < 0) usleep(50000);
    int diffs = 0;
    for (int i = 0; i < NSOCK; i++) {
        read_all(fds[i], &now[i]);
        diffs += compare(fds[i], &was[i], &now[i]);
    }
    if (!diffs) say("options same");

    char buf[64] = {0};
    if (!wait_readable(v4)) die("no connection on the IPv4 listener");
    int c = accept(v4, NULL, NULL);
    if (c < 0) die("accept v4");
    ssize_t n = read(c, buf, sizeof buf - 1);
    if (n < 0) die("read tcp");
    buf[n] = 0;
    char reply[128];
    int len = snprintf(reply, sizeof reply, "tcp ok %s", buf);
    if (write(c, reply, len) != len) die("write tcp");
    close(c);

    int self = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 lo = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_loopback};
    if (connect(self, (void *)&lo, sizeof lo) < 0) die("connect [::1]");
    if (write(self, "x", 1) != 1) die("write [::1]");
    struct pollfd p6[2] = {{v6s[0], POLLIN, 0}, {v6s[1], POLLIN, 0}};
    if (poll(p6, 2, 20000) < 1) die("no connection on the IPv6 listeners");
    c = accept(p6[0].revents ? v6s[0] : v6s[1], NULL, NULL);
    if (c < 0) die("accept v6");
    say("v6 accept ok");
    close(c);
    close(self);

    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    if (!wait_readable(ub)) die("no datagram on the bound UDP socket");
    n = recvfrom(ub, buf, sizeof buf - 1, 0, (void *)&from, &flen);
    if (n < 0) die("recvfrom");
    buf[n] = 0;
    len = snprintf(reply, sizeof reply, "pong %s", buf);
    if (sendto(ub, reply, len, 0, (void *)&from, flen) != len) die("sendto");
    if (send(uc, "hello", 5, 0) != 5) die("send connected");
    say("done");
    return 0;
}

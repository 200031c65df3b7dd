// idleconn: open N connections to an echo server (directly or through a proxy),
// make each one do a single 1-byte round trip, then hold them all open and idle.
// Used by bench/run.sh to measure a proxy's resident memory per idle connection.
//
//   idleconn HOST PORT N [CONNECT_DEADLINE_S [HOLD_S [CONCURRENCY]]]
//
// Defaults: CONNECT_DEADLINE_S 60, HOLD_S 120, CONCURRENCY 256 (connections in
// their connect/round-trip phase at once; the rest wait their turn, so the
// proxy's listen backlog is never flooded).
//
// The 1-byte round trip ('i', never 0x04, so bench/echo_server keeps the
// connection open) proves that the whole path exists: client -> proxy ->
// upstream. Once every connection has finished (or failed, or the deadline
// passed), it prints one line to stdout and flushes it:
//   ready ok=<n> failed=<n> elapsed_s=<float>
// plus a breakdown of failures on stderr. Then it sleeps, holding the
// connections, until it gets SIGTERM/SIGINT or HOLD_S seconds pass, and exits.
// Every socket has SO_LINGER {1,0}: exiting resets all connections (RST, no
// TIME_WAIT anywhere on the path).
//
// It raises its own RLIMIT_NOFILE soft limit to the hard limit. Exit status:
// 0 after the hold (or a signal), 1 fatal error, 2 usage.
//
// Build: cc -O2 -o idleconn idleconn.c
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { F_SOCKET, F_CONNECT, F_WRITE, F_READ, F_EOF, F_MISMATCH, F_DEADLINE, F_COUNT };
static const char* const fail_names[F_COUNT] = {"socket", "connect", "write",   "read",
                                                "eof",    "mismatch", "deadline"};

enum { S_CONNECTING = 1, S_WAIT_ECHO = 2 };

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
    if (argc < 4 || argc > 7) {
        fprintf(stderr, "usage: %s HOST PORT N [CONNECT_DEADLINE_S [HOLD_S [CONCURRENCY]]]\n",
                argv[0]);
        return 2;
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    int port = atoi(argv[2]);
    long n = atol(argv[3]);
    double deadline_s = argc > 4 ? atof(argv[4]) : 60;
    double hold_s = argc > 5 ? atof(argv[5]) : 120;
    long conc = argc > 6 ? atol(argv[6]) : 256;
    if (port <= 0 || port > 65535 || n < 1 || deadline_s <= 0 || hold_s < 0 || conc < 1 ||
        inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "idleconn: bad arguments\n");
        return 2;
    }
    addr.sin_port = htons((uint16_t)port);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)n + 16 > rl.rlim_cur) {
        fprintf(stderr, "idleconn: %ld connections need more than the fd limit %lu\n", n,
                (unsigned long)rl.rlim_cur);
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("idleconn: epoll_create1");
        return 1;
    }
    // state[fd]: 0 = not ours / done, S_CONNECTING, S_WAIT_ECHO.
    size_t cap = (size_t)n + 1024;
    unsigned char* state = calloc(cap, 1);
    int* held = malloc(sizeof(int) * (size_t)n);
    if (!state || !held) {
        perror("idleconn: malloc");
        return 1;
    }
    long started = 0, ok = 0, failed = 0, inflight = 0, fails[F_COUNT] = {0};
    const double t0 = now_s();
    struct epoll_event evs[256];

#define FAIL(fd, kind)                                \
    do {                                              \
        epoll_ctl(ep, EPOLL_CTL_DEL, (fd), NULL);     \
        close(fd);                                    \
        state[(fd)] = 0;                              \
        fails[(kind)]++;                              \
        failed++;                                     \
        inflight--;                                   \
    } while (0)

    while (!g_stop && ok + failed < n && now_s() - t0 < deadline_s) {
        while (inflight < conc && started < n) {
            started++;
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0 || (size_t)fd >= cap) {
                if (fd >= 0) close(fd);
                fails[F_SOCKET]++;
                failed++;
                continue;
            }
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            inflight++;
            int rc = connect(fd, (struct sockaddr*)&addr, sizeof addr);
            if (rc < 0 && errno != EINPROGRESS) {
                close(fd);
                fails[F_CONNECT]++;
                failed++;
                inflight--;
                continue;
            }
            state[fd] = S_CONNECTING;
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
        int k = epoll_wait(ep, evs, 256, 100);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("idleconn: epoll_wait");
            return 1;
        }
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            if (state[fd] == S_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    FAIL(fd, F_CONNECT);
                    continue;
                }
                char b = 'i';
                if (send(fd, &b, 1, MSG_NOSIGNAL) != 1) {
                    FAIL(fd, F_WRITE);
                    continue;
                }
                state[fd] = S_WAIT_ECHO;
                struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            } else if (state[fd] == S_WAIT_ECHO) {
                char b;
                ssize_t r = recv(fd, &b, 1, 0);
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (r < 0) {
                    FAIL(fd, F_READ);
                    continue;
                }
                if (r == 0) {
                    FAIL(fd, F_EOF);
                    continue;
                }
                if (b != 'i') {
                    FAIL(fd, F_MISMATCH);
                    continue;
                }
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                state[fd] = 0;
                held[ok++] = fd;
                inflight--;
            }
        }
    }
    // Whatever is still in flight at the deadline counts as failed.
    for (size_t fd = 0; fd < cap; fd++) {
        if (state[fd]) FAIL((int)fd, F_DEADLINE);
    }
    if (started < n) {
        fails[F_DEADLINE] += n - started;
        failed += n - started;
    }
    printf("ready ok=%ld failed=%ld elapsed_s=%.3f\n", ok, failed, now_s() - t0);
    fflush(stdout);
    if (failed > 0) {
        fprintf(stderr, "idleconn: failures:");
        for (int f = 0; f < F_COUNT; f++)
            if (fails[f]) fprintf(stderr, " %s=%ld", fail_names[f], fails[f]);
        fprintf(stderr, "\n");
    }
    const double t1 = now_s();
    while (!g_stop && now_s() - t1 < hold_s) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    // Exit closes every socket; SO_LINGER {1,0} turns each close into a RST.
    return 0;
}

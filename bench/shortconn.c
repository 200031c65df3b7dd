// shortconn: short-connection rate and ping-pong latency client for the
// tcpfault benchmarks. Talks to an echo server (directly or through a proxy).
//
// Short-connection rate (N threads, each one connection at a time, for D s):
//   shortconn conn HOST PORT CLIENTS SECONDS [client-close|server-close|rst]
//   each connection: connect, send 100 bytes, read the 100 bytes echoed back
//   (and check them), close. Prints one line:
//     conns_per_sec=<float> errors=<n> conns=<n> elapsed_s=<float>
//   and, if there were errors, a breakdown on stderr. Who closes first:
//   client-close (default): the client close()s after the echo. The client
//     sends the first FIN, so each connection leaves a TIME_WAIT socket on a
//     client ephemeral port (and, through a proxy, usually another on the
//     proxy's upstream ephemeral port). On loopback with one destination this
//     caps the rate at about (ephemeral ports / TIME_WAIT reuse delay),
//     ~14k/s on a default Linux: see bench/README.md.
//   server-close: the 100th byte is 0x04 (EOT), which tells bench/echo_server
//     to close after echoing; the client reads the echo, then waits for EOF,
//     then close()s. TIME_WAIT lands on the server's (and the proxy's
//     listening) side, where it uses no ephemeral port.
//   rst: like client-close but with SO_LINGER {1,0}: close() sends RST, no
//     TIME_WAIT; the proxy sees an abort instead of an orderly EOF.
//
// Ping-pong latency (one connection, 1 byte each way, COUNT round trips):
//   shortconn pingpong HOST PORT COUNT [WARMUP]
//   TCP_NODELAY; WARMUP (default 1000) untimed round trips first. Prints:
//     p50_us=<float> p99_us=<float> mean_us=<float> max_us=<float> n=<n>
//
// Exit status: 0 ok (conn mode: even with errors; they are counted),
// 1 fatal error, 2 usage. Every socket has 5 s send/receive timeouts so a
// stuck proxy cannot hang the benchmark.
//
// Build: cc -O2 -pthread -o shortconn shortconn.c
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG_LEN 100
#define IO_TIMEOUT_S 5
#define MAX_CLIENTS 1024

static struct sockaddr_in g_addr;
static atomic_int g_stop;
static int g_linger0;       // rst mode
static int g_server_close;  // server-close mode

enum {
    E_SOCKET,
    E_CONNECT,
    E_ADDRNOTAVAIL,
    E_WRITE,
    E_READ,
    E_TIMEOUT,
    E_EOF,
    E_MISMATCH,
    E_NO_EOF,
    E_COUNT
};
static const char* const err_names[E_COUNT] = {"socket",    "connect",  "connect_EADDRNOTAVAIL",
                                               "write",     "read",     "read_timeout",
                                               "early_eof", "mismatch", "no_eof_after_echo"};

struct client {
    pthread_t tid;
    long ok;
    long err[E_COUNT];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set_timeouts(int fd) {
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int connect_to_target(int* err_kind) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err_kind = E_SOCKET;
        return -1;
    }
    set_timeouts(fd);
    if (g_linger0) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    while (connect(fd, (struct sockaddr*)&g_addr, sizeof g_addr) < 0) {
        if (errno == EINTR) continue;
        *err_kind = errno == EADDRNOTAVAIL ? E_ADDRNOTAVAIL : E_CONNECT;
        close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const char* p, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

// 0 ok, else an E_* code.
static int read_all(int fd, char* p, size_t len) {
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? E_TIMEOUT : E_READ;
        if (n == 0) return E_EOF;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void* conn_worker(void* arg) {
    struct client* c = arg;
    char out[MSG_LEN], in[MSG_LEN];
    for (int i = 0; i < MSG_LEN; i++) out[i] = (char)('a' + i % 26);
    if (g_server_close) out[MSG_LEN - 1] = 0x04;  // EOT: echo_server closes after echoing
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        int kind = 0;
        int fd = connect_to_target(&kind);
        if (fd < 0) {
            c->err[kind]++;
            // Ports or fds exhausted: back off a little instead of spinning.
            if (kind == E_ADDRNOTAVAIL || kind == E_SOCKET) usleep(1000);
            continue;
        }
        if (write_all(fd, out, MSG_LEN) < 0) {
            c->err[E_WRITE]++;
        } else if ((kind = read_all(fd, in, MSG_LEN)) != 0) {
            c->err[kind]++;
        } else if (memcmp(in, out, MSG_LEN) != 0) {
            c->err[E_MISMATCH]++;
        } else if (g_server_close) {
            // Wait for the server's (or the proxy's) FIN before closing.
            char extra;
            ssize_t n;
            while ((n = recv(fd, &extra, 1, 0)) < 0 && errno == EINTR) {
            }
            if (n == 0)
                c->ok++;
            else if (n > 0)
                c->err[E_NO_EOF]++;
            else
                c->err[(errno == EAGAIN || errno == EWOULDBLOCK) ? E_TIMEOUT : E_READ]++;
        } else {
            c->ok++;
        }
        close(fd);
    }
    return NULL;
}

static int run_conn(int clients, double seconds) {
    static struct client cl[MAX_CLIENTS];
    double t0 = now_s();
    for (int i = 0; i < clients; i++) {
        if (pthread_create(&cl[i].tid, NULL, conn_worker, &cl[i]) != 0) {
            perror("shortconn: pthread_create");
            return 1;
        }
    }
    struct timespec ts = {.tv_sec = (time_t)seconds,
                          .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    atomic_store(&g_stop, 1);
    for (int i = 0; i < clients; i++) pthread_join(cl[i].tid, NULL);
    double elapsed = now_s() - t0;  // includes the connections that finish after the stop flag
    long ok = 0, errs = 0, by_kind[E_COUNT] = {0};
    for (int i = 0; i < clients; i++) {
        ok += cl[i].ok;
        for (int k = 0; k < E_COUNT; k++) {
            by_kind[k] += cl[i].err[k];
            errs += cl[i].err[k];
        }
    }
    printf("conns_per_sec=%.1f errors=%ld conns=%ld elapsed_s=%.3f\n", (double)ok / elapsed, errs,
           ok, elapsed);
    if (errs > 0) {
        fprintf(stderr, "shortconn: errors:");
        for (int k = 0; k < E_COUNT; k++)
            if (by_kind[k]) fprintf(stderr, " %s=%ld", err_names[k], by_kind[k]);
        fprintf(stderr, "\n");
    }
    return 0;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static int run_pingpong(long count, long warmup) {
    int kind = 0;
    int fd = connect_to_target(&kind);
    if (fd < 0) {
        fprintf(stderr, "shortconn: connect: %s (%s)\n", strerror(errno), err_names[kind]);
        return 1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double* us = malloc(sizeof(double) * (size_t)count);
    if (!us) {
        perror("shortconn: malloc");
        return 1;
    }
    char b = 'x', r;
    for (long i = -warmup; i < count; i++) {
        double t = now_s();
        if (write_all(fd, &b, 1) < 0) {
            fprintf(stderr, "shortconn: write failed at round trip %ld: %s\n", i, strerror(errno));
            return 1;
        }
        int rc = read_all(fd, &r, 1);
        if (rc != 0) {
            fprintf(stderr, "shortconn: read failed at round trip %ld: %s\n", i, err_names[rc]);
            return 1;
        }
        if (r != b) {
            fprintf(stderr, "shortconn: echo mismatch at round trip %ld\n", i);
            return 1;
        }
        if (i >= 0) us[i] = (now_s() - t) * 1e6;
    }
    close(fd);
    double sum = 0;
    for (long i = 0; i < count; i++) sum += us[i];
    qsort(us, (size_t)count, sizeof(double), cmp_double);
    // Nearest-rank percentiles.
    long i50 = (long)(0.50 * (double)count + 0.999999) - 1;
    long i99 = (long)(0.99 * (double)count + 0.999999) - 1;
    if (i50 < 0) i50 = 0;
    if (i99 < 0) i99 = 0;
    printf("p50_us=%.1f p99_us=%.1f mean_us=%.1f max_us=%.1f n=%ld\n", us[i50], us[i99],
           sum / (double)count, us[count - 1], count);
    free(us);
    return 0;
}

static void usage(const char* argv0) {
    fprintf(stderr,
            "usage:\n"
            "  %s conn HOST PORT CLIENTS SECONDS [client-close|server-close|rst]\n"
            "  %s pingpong HOST PORT COUNT [WARMUP]\n",
            argv0, argv0);
    exit(2);
}

int main(int argc, char** argv) {
    if (argc < 5) usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sin_family = AF_INET;
    int port = atoi(argv[3]);
    if (port <= 0 || port > 65535) usage(argv[0]);
    g_addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, argv[2], &g_addr.sin_addr) != 1) {
        fprintf(stderr, "shortconn: bad IPv4 address %s\n", argv[2]);
        return 2;
    }
    if (strcmp(argv[1], "conn") == 0) {
        if (argc < 6 || argc > 7) usage(argv[0]);
        int clients = atoi(argv[4]);
        double seconds = atof(argv[5]);
        if (argc == 7) {
            if (strcmp(argv[6], "rst") == 0)
                g_linger0 = 1;
            else if (strcmp(argv[6], "server-close") == 0)
                g_server_close = 1;
            else if (strcmp(argv[6], "client-close") != 0)
                usage(argv[0]);
        }
        if (clients < 1 || clients > MAX_CLIENTS || seconds <= 0) usage(argv[0]);
        return run_conn(clients, seconds);
    }
    if (strcmp(argv[1], "pingpong") == 0) {
        if (argc > 6) usage(argv[0]);
        long count = atol(argv[4]);
        long warmup = argc == 6 ? atol(argv[5]) : 1000;
        if (count < 1 || warmup < 0) usage(argv[0]);
        return run_pingpong(count, warmup);
    }
    usage(argv[0]);
    return 2;
}

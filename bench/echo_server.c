// echo_server: a small epoll TCP echo server for the tcpfault benchmarks.
//
//   echo_server HOST PORT [THREADS]
//
// Echoes every byte it reads back to the sender; closes its side when the
// peer has sent EOF and everything has been written back. One in-band rule:
// if a read ends with the byte 0x04 (EOT), the server closes the connection
// as soon as that data has been echoed (a "server closes first" short
// connection, like HTTP/1.0; see shortconn's server-close mode). The
// ping-pong test never sends 0x04. Each thread has its
// own SO_REUSEPORT listening socket and epoll loop (default 1 thread), so the
// kernel spreads connections over threads. Level-triggered, non-blocking,
// TCP_NODELAY on accepted sockets. Prints "listening HOST:PORT" on stdout
// once all threads are listening. Stops on SIGTERM/SIGINT.
//
// Build: cc -O2 -pthread -o echo_server echo_server.c
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 256

// Per-connection state: bytes read but not yet written back. The buffer is
// allocated lazily, only when a write was partial, so idle/short connections
// cost no memory beyond this struct.
struct conn {
    int fd;
    char* pending;        // unsent bytes (NULL if none)
    size_t pend_off;      // first unsent byte
    size_t pend_len;      // end of unsent bytes
    int peer_eof;         // peer has shut down its write side
    int close_when_sent;  // saw EOT: close once everything is echoed
};

#define EOT 0x04

static struct sockaddr_in g_addr;
static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static int make_listener(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr*)&g_addr, sizeof g_addr) < 0 || listen(fd, 4096) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_close(int ep, struct conn* c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

// Write buf[0..len) to c; keep what the kernel did not take in c->pending.
// Returns -1 on a fatal socket error.
static int conn_send(struct conn* c, const char* buf, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return -1;
    }
    if (off < len) {
        size_t rest = len - off;
        if (!c->pending) {
            c->pending = malloc(BUF_SIZE);
            if (!c->pending) return -1;
            c->pend_off = c->pend_len = 0;
        }
        // Only called when pending is empty (we stop reading while it is not).
        memcpy(c->pending, buf + off, rest);
        c->pend_off = 0;
        c->pend_len = rest;
    }
    return 0;
}

static void update_interest(int ep, struct conn* c) {
    struct epoll_event ev = {0};
    ev.data.ptr = c;
    if (c->pending && c->pend_off < c->pend_len)
        ev.events = EPOLLOUT;  // stop reading until the backlog is flushed
    else
        ev.events = EPOLLIN | EPOLLRDHUP;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void* worker(void* arg) {
    int lfd = (int)(intptr_t)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    char* buf = malloc(BUF_SIZE);
    if (!buf) {
        perror("echo_server: malloc");
        exit(1);
    }
    struct epoll_event events[MAX_EVENTS];

    while (!g_stop) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 200);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("echo_server: epoll_wait");
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {  // listener
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break;  // EAGAIN, or transient errors (EMFILE, ECONNABORTED)
                    int one = 1;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn* c = calloc(1, sizeof *c);
                    if (!c) {
                        close(cfd);
                        continue;
                    }
                    c->fd = cfd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            struct conn* c = events[i].data.ptr;
            uint32_t e = events[i].events;
            if (e & EPOLLERR) {
                conn_close(ep, c);
                continue;
            }
            if (e & EPOLLOUT) {
                size_t len = c->pend_len - c->pend_off;
                int dead = 0;
                while (c->pend_off < c->pend_len) {
                    ssize_t w = send(c->fd, c->pending + c->pend_off, len, MSG_NOSIGNAL);
                    if (w > 0) {
                        c->pend_off += (size_t)w;
                        len -= (size_t)w;
                    } else if (w < 0 && errno == EINTR) {
                        continue;
                    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                        break;
                    } else {
                        dead = 1;
                        break;
                    }
                }
                if (dead) {
                    conn_close(ep, c);
                    continue;
                }
                if (c->pend_off == c->pend_len && (c->peer_eof || c->close_when_sent)) {
                    conn_close(ep, c);
                    continue;
                }
                update_interest(ep, c);
                continue;
            }
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
                int dead = 0;
                // Read until EAGAIN or until a write could not complete.
                for (;;) {
                    ssize_t r = recv(c->fd, buf, BUF_SIZE, 0);
                    if (r > 0) {
                        if (buf[r - 1] == EOT) c->close_when_sent = 1;
                        if (conn_send(c, buf, (size_t)r) < 0) {
                            dead = 1;
                            break;
                        }
                        if (c->pending && c->pend_off < c->pend_len) break;
                        continue;
                    }
                    if (r == 0) {
                        c->peer_eof = 1;
                        break;
                    }
                    if (errno == EINTR) continue;
                    if (errno != EAGAIN && errno != EWOULDBLOCK) dead = 1;
                    break;
                }
                int backlog = c->pending && c->pend_off < c->pend_len;
                if (dead || ((c->peer_eof || c->close_when_sent) && !backlog)) {
                    conn_close(ep, c);
                    continue;
                }
                if (backlog || c->peer_eof) update_interest(ep, c);
            }
        }
    }
    close(lfd);
    close(ep);
    free(buf);
    return NULL;
}

int main(int argc, char** argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s HOST PORT [THREADS]\n", argv[0]);
        return 2;
    }
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &g_addr.sin_addr) != 1) {
        fprintf(stderr, "echo_server: bad IPv4 address %s\n", argv[1]);
        return 2;
    }
    int threads = argc == 4 ? atoi(argv[3]) : 1;
    if (threads < 1 || threads > 64) {
        fprintf(stderr, "echo_server: THREADS must be 1..64\n");
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    // All listening sockets exist before we claim readiness.
    int lfds[64];
    for (int i = 0; i < threads; i++) {
        lfds[i] = make_listener();
        if (lfds[i] < 0) {
            perror("echo_server: bind/listen");
            return 1;
        }
    }
    pthread_t tids[64];
    for (int i = 0; i < threads; i++)
        pthread_create(&tids[i], NULL, worker, (void*)(intptr_t)lfds[i]);
    printf("listening %s:%s\n", argv[1], argv[2]);
    fflush(stdout);
    for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
    return 0;
}

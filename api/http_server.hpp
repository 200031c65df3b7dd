// A small HTTP/1.1 server on the proxy's own libuv loop, for the admin API and /metrics.
// Single-threaded: the handler runs synchronously on the loop thread and must not block.
//
// Per connection: one response in flight at a time. While a response is being written the
// connection is not read, so pipelined requests wait in the kernel (or in the parser's
// buffer, at most one read of 16 KiB) and a client that never reads its responses holds at
// most one response here. Timers: the request head must arrive within header_timeout_ms of
// its first byte (of the connection's start for the first request) -> 408 and close; a body
// must arrive within idle_timeout_ms of its head -> 408 and close; a keep-alive connection
// idle for idle_timeout_ms is closed; a response the peer does not take within
// idle_timeout_ms is dropped with a reset. A closing response (error, `Connection: close`,
// HTTP/1.0) is followed by a FIN, then the peer's leftover bytes are read and discarded for
// up to linger_ms so the kernel does not answer them with a RST that could destroy the
// response before the client reads it.
//
// Bounded work per loop turn, so no client can keep the loop from I/O:
//  - at most requests_per_turn requests are answered per loop turn over all connections, and
//    at most requests_per_slice in a row for one connection; a connection with more buffered
//    requests waits in a FIFO, is not read meanwhile, and resumes from a uv_idle callback in
//    a later turn (after the loop polled for I/O);
//  - at most accepts_per_turn connections are accepted per turn; the rest wait in the
//    kernel's backlog of 4096 (libuv stops polling the listener until the idle callback
//    accepts).
// Connection limits, so idle or slow clients cannot lock others out: a client address
// (IPv4 address, or IPv6 /64) holds at most max_connections_per_client connections and the
// server at most max_connections. A connection over a limit is not refused: it takes the
// place of the least useful connection of that address (per-client limit) or of the address
// holding the most connections (global limit), in this order: one whose last response is
// sent (lingering), the longest-idle keep-alive connection, the oldest one still waiting for
// its request (slowloris), the oldest one whose peer does not read its response, the oldest
// one with requests waiting for their turn. Evictions are logged at debug, and a warning at
// most once a minute.
//
// Responses carry Content-Length and Content-Type (unless content_type is empty), and
// `Connection: close` when the server closes afterwards; 1xx/204/304 carry neither body nor
// Content-Length. HEAD gets the GET headers without the body. Parse errors are answered with
// `{"error":"<reason>"}` and the status from HttpRequestParser (400/413/431/501/505).
// `Expect: 100-continue` is answered with an interim 100 before the body is read.
// A handler that throws gets a 500 (the exception does not cross libuv).
//
// The process must ignore SIGPIPE (App does), as libuv writes with write(2).
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "api/http_parser.hpp"

namespace tcpfault {

struct HttpResponse {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    // Extra headers. Content-Length and Transfer-Encoding are ignored (the server frames the
    // body); `Connection: close` makes the server close after this response; a header with
    // CR, LF or NUL in its name or value is dropped.
    std::vector<std::pair<std::string, std::string>> headers;
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

class HttpServer {
  public:
    struct Limits {
        size_t max_header_bytes = 16 * 1024;     // request line + headers; over -> 431
        size_t max_body_bytes = 1024 * 1024;     // Content-Length over -> 413 (body not read)
        uint64_t header_timeout_ms = 10000;      // whole request head within this -> else 408
        uint64_t idle_timeout_ms = 30000;        // keep-alive idle / body / stalled write bound
        size_t max_connections = 256;            // in all; beyond, one is evicted (see above)
        size_t max_connections_per_client = 64;  // per IPv4 address / IPv6 /64
        uint64_t linger_ms = 2000;               // after a closing response: wait for the FIN
        unsigned requests_per_turn = 64;         // requests answered per loop turn, all connections
        unsigned requests_per_slice = 4;         // ... and in a row for one connection
        unsigned accepts_per_turn = 64;          // connections accepted per loop turn
    };

    // (Two constructors rather than `Limits limits = {}`: GCC rejects a default argument built
    // from a nested struct's member initializers inside the enclosing class.)
    HttpServer(uv_loop_t* loop, HttpHandler handler);
    HttpServer(uv_loop_t* loop, HttpHandler handler, Limits limits);
    // Only once closed() is true: after close()'s `done` ran, or if listen() was never called.
    // (A failed listen() leaves the listener handle closing: call close() and run the loop.)
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // 0 or a libuv error. `host` is an IPv4/IPv6 literal ("::1" or "[::1]") or a name resolved
    // once, synchronously; port 0 picks a free port (see address()). Once per server.
    int listen(const std::string& host, uint16_t port);
    // The bound address with the real port: "127.0.0.1:9474" / "[::1]:9474"; "" before listen.
    std::string address() const;
    // Closes the listener and every connection (in-flight responses are dropped); `done` runs
    // once all handles are closed — synchronously if the server holds none. A second call
    // replaces a `done` that has not run yet (or runs the new one at once if already closed).
    void close(std::function<void()> done);
    // True when the server holds no libuv handles (never listened, or close() completed).
    bool closed() const { return !listener_open_ && conns_.empty() && turn_handles_ == 0; }
    // Connections currently open (evicted or rejected ones being closed are not counted).
    size_t connection_count() const { return active_; }
    // Connections evicted to admit others since the start.
    uint64_t evictions() const { return evictions_; }
    // True once listening on a loopback address (127.0.0.0/8, ::1).
    bool loopback() const { return loopback_; }

  private:
    class Connection;
    friend class Connection;

    static void on_connection(uv_stream_t* listener, int status);
    static void on_listener_closed(uv_handle_t* h);
    static void on_idle(uv_idle_t* h);
    static void on_check(uv_check_t* h);
    static void on_turn_handle_closed(uv_handle_t* h);
    void accept_one(uv_stream_t* listener);
    // Makes room for a connection from `client`; false if nothing could be evicted.
    bool make_room(const std::string& client);
    void count(Connection* c);
    void uncount(Connection* c);
    void connection_finished(Connection* c);
    void maybe_done();
    HttpResponse call_handler(const HttpRequest& req);
    // The per-turn budgets: spending starts the check handle that refills them after poll.
    bool budget_left() const { return budget_ > 0; }
    void spend_budget();
    void enqueue(Connection* c);
    void start_idle();

    uv_loop_t* loop_;
    HttpHandler handler_;
    Limits limits_;
    uv_tcp_t listener_{};
    bool listener_open_ = false;
    bool listener_closing_ = false;
    bool listened_ = false;
    bool closing_ = false;
    std::string address_;
    std::unordered_map<Connection*, std::unique_ptr<Connection>> conns_;
    size_t active_ = 0;
    std::unordered_map<std::string, size_t> per_client_;  // counted connections per address
    std::deque<Connection*> ready_;  // connections with buffered requests awaiting their turn
    // Per-turn work: the idle handle runs queued work (and a deferred accept) before the next
    // poll; the check handle refills the budgets after the poll. Both run only while needed.
    uv_idle_t idle_{};
    uv_check_t check_{};
    int turn_handles_ = 0;  // of idle_/check_, initialised and not yet closed
    bool turn_closing_ = false;
    bool idle_active_ = false;
    bool check_active_ = false;
    unsigned budget_ = 0;
    unsigned accepts_ = 0;
    bool accept_deferred_ = false;  // libuv holds an accepted fd for us (listener paused)
    bool loopback_ = false;
    uint64_t evictions_ = 0;
    uint64_t progress_seq_ = 0;  // orders the connections' last progress
    uint64_t last_limit_warning_ms_ = 0;
    bool warned_limit_ = false;
    std::function<void()> done_;
};

}  // namespace tcpfault

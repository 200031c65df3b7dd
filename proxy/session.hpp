// One proxied connection: the accepted client socket, the socket to the upstream, and the
// two pipes between them. The session ends when both directions have passed their FIN, or at
// once on a reset, an upstream failure or a forced stop. It is freed only after every handle
// it owns has run its close callback (and every in-flight request has called back), so no
// libuv callback ever sees a dangling session.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "proxy/endpoint.hpp"
#include "proxy/pipe.hpp"

namespace tcpfault {

class ProxyServer;

class Session {
  public:
    Session(ProxyServer& server, uint64_t id, std::shared_ptr<const config::Proxy> cfg);
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    uint64_t id() const { return id_; }
    const std::string& client_addr() const { return client_addr_; }
    uint64_t bytes_up() const { return up_.bytes(); }
    uint64_t bytes_down() const { return down_.bytes(); }
    uint64_t started_ms() const { return started_ms_; }

    // Takes the pending connection from the listener and starts connecting upstream.
    void accept(uv_stream_t* listener);

    // Forced end (grace period over, proxy removed): close both sockets now.
    void abort(bool with_reset);

    // Endpoint / Pipe callbacks.
    void handle_opened() { ++live_; }
    void endpoint_closed(Endpoint& e);
    void on_bytes(config::Direction dir, size_t n);
    void on_peer_reset(Endpoint& who, int err);
    void on_direction_done();
    void on_discard_end();
    void on_backpressure(bool paused);
    void trace(const char* event);  // debug-level lifecycle log line

  private:
    void resolve();
    void connect_next();
    void on_connected();
    void upstream_failed(const char* kind, int err);
    void close_all();
    void start_timer(config::Duration d, uv_timer_cb cb);
    void stop_timer();
    void handle_closed();

    static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res);
    static void on_connect(uv_connect_t* req, int status);
    static void on_connect_timeout(uv_timer_t* t);
    static void on_drain_timeout(uv_timer_t* t);
    static void on_timer_closed(uv_handle_t* h);

    ProxyServer& server_;
    uint64_t id_;
    std::shared_ptr<const config::Proxy> cfg_;
    Endpoint client_{*this, Endpoint::Side::client};
    Endpoint upstream_{*this, Endpoint::Side::server};
    Pipe up_{*this, client_, upstream_, config::Direction::upstream};
    Pipe down_{*this, upstream_, client_, config::Direction::downstream};

    uv_getaddrinfo_t gai_{};
    uv_connect_t connect_req_{};
    uv_timer_t timer_{};
    std::vector<sockaddr_storage> addrs_;  // upstream candidates, tried in order
    size_t next_addr_ = 0;
    int last_connect_err_ = 0;

    std::string client_addr_;
    uint64_t started_ms_ = 0;
    int live_ = 0;  // open handles plus in-flight requests that cannot be cancelled
    bool timer_open_ = false;
    bool connecting_ = false;
    bool connected_ = false;
    bool timed_out_ = false;
    bool retry_pending_ = false;
    bool upstream_failed_ = false;
    bool closing_ = false;
};

}  // namespace tcpfault

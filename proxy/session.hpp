// One proxied connection: the accepted client socket, the socket to the upstream, and the
// two pipes between them. The session ends when both directions have passed their FIN, or at
// once on a reset, an upstream failure or a forced stop. It is freed only after every handle
// it owns has run its close callback (and every in-flight request has called back), so no
// libuv callback ever sees a dangling session.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "faults/rule_matcher.hpp"
#include "faults/trigger.hpp"
#include "ftp/ftp_control.hpp"
#include "net/endpoint.hpp"
#include "proxy/pipe.hpp"

namespace tcpfault {

class ProxyServer;

class Session final : public FtpControl::Host {
  public:
    // An FTP data connection: the target address comes from the control channel, and in
    // active mode the socket we accept is the server's and we connect out to the client.
    struct DataTarget {
        sockaddr_storage addr{};
        bool accepted_is_server = false;
    };

    Session(ProxyServer& server, uint64_t id, std::shared_ptr<const config::Proxy> cfg,
            std::optional<DataTarget> data = std::nullopt);
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    uint64_t id() const override { return id_; }
    const std::string& proxy_name() const override { return cfg_->name; }
    const std::string& client_addr() const { return client_addr_; }
    uint64_t bytes_up() const { return up_.bytes(); }
    uint64_t bytes_down() const { return down_.bytes(); }
    uint64_t started_ms() const { return started_ms_; }

    // Takes the pending connection from the listener and starts connecting upstream.
    void accept(uv_stream_t* listener);

    // Forced end (grace period over, proxy removed): close both sockets now.
    void abort(bool with_reset);

    uv_loop_t* loop() const;
    ProxyServer& server() { return server_; }
    faults::SplitMix64& rng() { return rng_; }
    // True once a terminal fault or a reset ends the connection: no more bytes move.
    bool ending() const { return closing_ || terminal_; }

    // Admission under `cap`: slots held (released when the session ends), a parked session
    // admitted later, or a rejection the way the rule says.
    void take_slot(const std::string& rule) { slots_.push_back(rule); }
    const std::vector<std::string>& slots() const { return slots_; }
    void admit();
    void reject(config::CapFault::Over over, const std::string& banner);
    void log_fault(const config::Rule& rule);

    // Applies the proxy's matching rules to this connection (at accept, or when a rule is
    // added at runtime with `existing`).
    void apply_rule(const config::Rule* rule);
    // Same for a rule that appeared while the connection was open; `snapshot` owns the rule.
    void apply_runtime_rule(const config::Rule* rule,
                            std::shared_ptr<const config::Proxy> snapshot);
    uint64_t ordinal() const { return ordinal_; }
    config::Channel channel() const { return channel_; }
    // The local address of the client-facing / server-facing socket (FTP data listeners bind
    // there, so the address written into PASV/PORT is one the peer can reach).
    bool local_addr(bool client_side, sockaddr_storage* out) const override;
    bool server_peer_addr(sockaddr_storage* out) const override;
    std::string open_ftp_data(const sockaddr_storage& bind, const sockaddr_storage& target,
                              bool accepted_is_server, sockaddr_storage* bound) override;
    std::vector<std::string> rule_names() const {
        std::vector<std::string> out;
        for (const auto& r : rules_) out.push_back(r.rule->name);
        return out;
    }
    const sockaddr* peer() const { return reinterpret_cast<const sockaddr*>(&peer_); }
    void set_ordinal(uint64_t n) { ordinal_ = n; }

    // Trigger scanning for a pipe: where in [p, p+n) the next fault fires or the stream holds.
    struct ScanResult {
        size_t pass;  // bytes to forward first
        bool fired;   // then fire_pending()
        bool hold;    // then hold the rest until a time condition passes
    };
    bool watches(config::Direction dir) const {
        return watching_[dir == config::Direction::upstream ? 0 : 1] > 0;
    }
    ScanResult scan(config::Direction dir, const char* p, size_t n);
    void fire_pending();

    // Endpoint / Pipe callbacks.
    void handle_opened() { ++live_; }
    void timer_closed() {
        --live_;
        handle_closed();
    }
    void on_activity();
    void on_write_drained();
    void on_data_after_close(Endpoint& who);
    void on_eof_after_close(Endpoint& who);
    void endpoint_closed(Endpoint& e);
    void on_bytes(config::Direction dir, size_t n);
    void on_peer_reset(Endpoint& who, int err);
    void on_direction_done();
    void on_backpressure(bool paused);
    void trace(const char* event);  // debug-level lifecycle log line

  private:
    struct AppliedRule {
        const config::Rule* rule;
        faults::Trigger trigger;
        uint64_t deadline_ms = 0;  // `after` timer, 0 when none is running
        bool done = false;
    };

    void resolve();
    void start_rules();
    void fire(size_t i);
    void arm_rule_timers();
    void recount_watchers();
    void fault_reset(config::Target to, bool flush);
    void finish_reset();
    void fault_close(config::Target to, config::CloseFault::Then then);
    void fault_stall(const config::StallFault& f, size_t rule);
    void end_stall(size_t k);
    void fault_clamp(const config::ClampFault& f);
    void apply_clamp(Endpoint& e, bool server_side, const config::ClampFault& f);
    // Server-side clamps of rules acting at accept, set on the new socket before connect():
    // the MSS and window scale are negotiated in the handshake.
    bool has_preconnect_clamp() const;
    void each_pipe(config::Direction d, const std::function<void(Pipe&)>& fn);
    void rearm_fault_timer();
    void close_pipe_timers();
    static void on_fault_timer(uv_timer_t* t);
    void connect_next();
    void on_connected();
    void upstream_failed(const char* kind, int err);
    void close_client_gently();
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
    // The socket we accepted and the one we connect (client_/upstream_, swapped for an
    // active-mode FTP data connection).
    Endpoint* accepted_ = &client_;
    Endpoint* outgoing_ = &upstream_;
    std::optional<DataTarget> data_;
    config::Channel channel_ = config::Channel::any;
    std::unique_ptr<FtpControl> ftp_;
    Pipe up_{*this, client_, upstream_, config::Direction::upstream};
    Pipe down_{*this, upstream_, client_, config::Direction::downstream};

    uv_getaddrinfo_t gai_{};
    uv_connect_t connect_req_{};
    uv_timer_t timer_{};
    std::vector<sockaddr_storage> addrs_;  // upstream candidates, tried in order
    size_t next_addr_ = 0;
    int last_connect_err_ = 0;

    std::vector<AppliedRule> rules_;
    std::vector<std::string> slots_;
    // Config snapshots owning rules applied at runtime (reload, API) beyond cfg_.
    std::vector<std::shared_ptr<const config::Proxy>> keep_alive_;
    uint64_t ordinal_ = 0;
    sockaddr_storage peer_{};
    std::vector<size_t> pending_fire_;
    // Trigger states saved by scan() for a rollback; kept to reuse its capacity.
    std::vector<std::pair<size_t, faults::Trigger::Saved>> saved_;
    int watching_[2] = {0, 0};  // rules whose trigger reads upstream / downstream bytes
    faults::SplitMix64 rng_;
    uv_timer_t fault_timer_{};
    bool fault_timer_open_ = false;
    // Deadlines in uv_now() milliseconds; 0 = not set.
    uint64_t stall_check_ = 0;  // under an endless stall: next look at whether both peers are gone
    uint64_t idle_deadline_ = 0;
    uint64_t flush_deadline_ = 0;  // reset with flush: give up waiting for acks
    uint64_t last_activity_ms_ = 0;
    // Stalls in force, one per rule that fired one; each ends on its own deadline (0: never).
    struct ActiveStall {
        config::StallFault fault;
        size_t rule;  // index in rules_
        uint64_t deadline_ms;
    };
    std::vector<ActiveStall> stalls_;
    const config::IdleFault* idle_ = nullptr;
    config::Target reset_to_ = config::Target::both;
    bool flushing_ = false;
    bool terminal_ = false;
    bool close_fault_ = false;

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

// One proxied connection: the accepted client socket, the socket to the upstream, and the
// two pipes between them.
//
// Its lifecycle: connecting (resolve, connect) -> open (bytes flow both ways; each direction
// may half-close on its own) -> ending -> finished. There is exactly one way into `ending`:
// end_connection(), with a named ending per side (net/ending.hpp) and a reason. Faults
// (through the faults::Connection interface), a peer's RST (mirrored), a failed upstream, a
// cap rejection, a restart, the end of the grace period, and the normal end once both FINs
// have passed all go through it. It is idempotent: a later, stronger ending still overrides a
// side's weaker one; anything else a rule asks then is logged and counted as suppressed.
// Inside an ending, nothing more is forwarded; each side waits for the bytes already let
// through toward it (its pipe drains) and then ends its socket as told, so the side a fault
// does not target gets every forwarded byte, then a FIN.
//
// The session is freed only after every handle it owns has run its close callback, so no
// libuv callback ever sees a dangling session. All its timed work shares one timer.
#pragma once

#include <netinet/in.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "faults/contracts.hpp"
#include "faults/rule_matcher.hpp"
#include "faults/trigger_set.hpp"
#include "ftp/ftp_control.hpp"
#include "net/deadlines.hpp"
#include "net/endpoint.hpp"
#include "net/loop_queue.hpp"
#include "net/resolver.hpp"
#include "proxy/pipe.hpp"

namespace tcpfault {

class Session;

// The rule label of faults applied over the admin API to one connection (metrics, logs, the
// timeline, the stages they install). Rule names are [a-z0-9_-]+, so it names no rule.
inline constexpr const char* kApiRule = "@api";

// What a session needs from the proxy that owns it: admission, counters and its own end.
class SessionOwner {
  public:
    virtual uv_loop_t* loop() const = 0;
    // Hands work to this loop from another thread (name lookups answer through it).
    virtual LoopQueue* loop_queue() const = 0;
    virtual uint64_t seed() const = 0;
    enum class Admission { admit, hold, rejected };
    // Applies the matching rules to a new session; `cap` rules may hold or reject it.
    virtual Admission match_rules(Session& s, const sockaddr* client) = 0;
    // A rule's fault is about to act: counts it (false: `limit` reached, or the rule is gone).
    virtual bool record_fault(const config::Rule& rule) = 0;
    // A rule's fault could not act (the connection was already ending): logged and counted.
    virtual void count_suppressed(const config::Rule& rule, uint64_t conn, const char* why) = 0;
    virtual void count_bytes(config::Direction dir, size_t n) = 0;
    virtual void count_rejected(const char* reason) = 0;
    virtual void count_upstream_error(const char* kind) = 0;
    virtual std::string open_ftp_data(const sockaddr_storage& bind, const sockaddr_storage& target,
                                      bool accepted_is_server, sockaddr_storage* bound) = 0;
    // `target` is this proxy's own listening socket (a loop: refused).
    virtual bool is_own_listener(const sockaddr_storage& target) const = 0;
    // Drops packets below the socket (blackhole, loss); null without CAP_NET_ADMIN.
    virtual PacketFilter* packet_filter() const = 0;
    // Every handle of the session has closed: the owner frees it.
    virtual void session_finished(uint64_t id) = 0;
    // A fault acted on the session (a rule's, or the admin API's): the event timeline hears.
    virtual void fault_applied(const Session& s, std::string_view rule, const char* fault) = 0;
    // A fault applied over the admin API is counted like a rule's (tcpfault_faults_total).
    virtual void count_api_fault(const char* fault) = 0;

  protected:
    ~SessionOwner() = default;
};

class Session final : public FtpControl::Host,
                      public faults::Connection,
                      private Endpoint::Events,
                      private Pipe::Events,
                      private Deadlines::Owner,
                      private Deadlines::Client {
  public:
    // An FTP data connection: the target address comes from the control channel, and in
    // active mode the socket we accept is the server's and we connect out to the client.
    struct DataTarget {
        sockaddr_storage addr{};
        bool accepted_is_server = false;
    };

    Session(SessionOwner& server, uint64_t id, std::shared_ptr<const config::Proxy> cfg,
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
    // `nodelay_inherited`: the listener has TCP_NODELAY, which Linux passes on to the socket.
    void accept(uv_stream_t* listener, bool nodelay_inherited = false);

    // Forced end: RST both sides (restart), or close them now (grace period over).
    void abort(bool with_reset);

    uv_loop_t* loop() const;
    bool ending() const override { return ending_; }

    // Admission under `cap`: slots held (released when the session ends), a parked session
    // admitted later, or a rejection the way the rule says.
    void take_slot(const std::string& rule) { slots_.push_back(rule); }
    const std::vector<std::string>& slots() const { return slots_; }
    void admit();
    void reject(const config::CapFault& cap);
    void log_fault(const config::Rule& rule);

    // The compiled rules of the config this session was accepted with (ProxyServer hands over
    // its own, before the first apply_rule; otherwise it is looked up).
    void set_rule_program(std::shared_ptr<const faults::RuleProgram> program);
    // Applies one of the proxy's matching rules to this connection at accept. `current`: the
    // config `rule` belongs to, when it may have replaced this session's since (a client a cap
    // held); null: this session's.
    void apply_rule(const config::Rule* rule,
                    const std::shared_ptr<const config::Proxy>& current = nullptr);
    // Applies the rules of a bit row of the program given to set_rule_program() (at accept).
    void apply_rules(const uint64_t* rows) { rules_.apply_rows(rows); }
    // Same for a rule that appeared while the connection was open: `one` is its program alone
    // (RuleProgram::of_rule), shared by every connection it is added to.
    void apply_runtime_rule(std::shared_ptr<const faults::RuleProgram> one);
    // A rule was disabled or deleted: its stages and pending triggers leave this connection
    // (and so does the rule set it was added with, if it was added while open).
    void lift_rule(const std::string& name);
    uint64_t ordinal() const { return ordinal_; }
    void set_ordinal(uint64_t n) { ordinal_ = n; }
    // The proxy's uptime when this connection was accepted (rules are matched as of then).
    config::Duration accepted_at() const { return accepted_at_; }
    void set_accepted_at(config::Duration d) { accepted_at_ = d; }
    config::Channel channel() const { return channel_; }
    const sockaddr* peer() const { return reinterpret_cast<const sockaddr*>(&peer_); }
    // What a rule's `match` is checked against, for this connection at uptime `since_start`.
    faults::ConnectionFacts facts(config::Duration since_start) const {
        return {
            .ordinal = ordinal_, .client = peer(), .channel = channel_, .since_start = since_start};
    }
    std::vector<std::string> rule_names() const;
    // "open", "ending", and each socket's state, for the connection listing.
    std::string state() const;
    // Every packet of some flow of it is being dropped (blackhole), for the listing.
    bool blackholed() const;

    // The admin API acting on this one connection now.
    enum class ApiResult { applied, ending, connecting, proxy_scope };
    // Applies a connection or stage fault now, as if a rule called `label` had fired: logged,
    // counted and on the timeline like a rule's fault. Refused for a proxy fault (cap, refuse,
    // restart act on the listener), on a connection already ending, and on one still connecting
    // unless `while_connecting` (a fault that only ends the connection can act then).
    ApiResult apply_api_fault(const config::FaultSpec& f, const std::string& label,
                              bool while_connecting = false);
    // Lifts the stages faults labelled `label` installed, as disabling a rule lifts its own.
    ApiResult lift_api_faults(const std::string& label);
    // The faults that acted on this connection, in order (rule name or API label, fault type);
    // the first kMaxFaultsListed of faults_applied_total().
    struct AppliedFault {
        std::string rule;
        std::string fault;
    };
    static constexpr size_t kMaxFaultsListed = 32;
    const std::vector<AppliedFault>& faults_applied() const { return applied_; }
    uint64_t faults_applied_total() const { return applied_total_; }
    // Each side's ending once ending() (Ending::none before).
    faults::Endings endings() const { return endings_; }

    // FtpControl::Host
    bool local_addr(bool client_side, sockaddr_storage* out) const override;
    bool server_peer_addr(sockaddr_storage* out) const override;
    std::string open_ftp_data(const sockaddr_storage& bind, const sockaddr_storage& target,
                              bool accepted_is_server, sockaddr_storage* bound) override;

    // faults::Connection
    faults::LogIdentity identity() const override { return {cfg_->name, id_}; }
    void end(const faults::Endings& e, std::string_view rule) override;
    void add_stage(config::Direction d, std::unique_ptr<faults::Stage> s) override;
    int socket_fd(faults::Side s) override;
    void set_max_read(faults::Side s, size_t n) override;
    void log_event(std::string_view event, std::string_view rule, std::string_view detail) override;
    uint64_t now_us() const override { return Deadlines::now_us(); }
    bool addresses(faults::Side s, sockaddr_storage* local, sockaddr_storage* peer) override;
    uint64_t unacknowledged(faults::Side s) override;
    PacketFilter* packet_filter() override { return server_.packet_filter(); }
    void keep_packet_drop(std::string_view rule, std::unique_ptr<PacketFilter::Handle> h) override;
    void release_packet_drops(std::string_view rule) override;

  private:
    // The one way into `ending`.
    void end_connection(faults::Endings e, std::string_view why, const config::Rule* rule);
    // "fault injected", logged once per fault, and the fault noted for the listing and timeline.
    void log_injected(std::string_view rule, const char* fault);
    void end_side(faults::Side s);
    void peer_gone(faults::Side gone, const char* what, int err);
    void check_finished();
    void maybe_free();

    // Rules: set 0 is rules_, set k > 0 is (*added_rules_)[k - 1].
    size_t rule_sets() const { return 1 + (added_rules_ ? added_rules_->size() : 0); }
    faults::TriggerSet& rule_set(size_t k) { return k == 0 ? rules_ : (*added_rules_)[k - 1]; }
    const faults::TriggerSet& rule_set(size_t k) const {
        return k == 0 ? rules_ : (*added_rules_)[k - 1];
    }
    // fn(const config::Rule&) for every rule applied to this connection, in order.
    template <class Fn>
    void each_rule(Fn&& fn) const;
    void start_rules();
    void fire(size_t set, uint32_t rule);
    void fire_all(size_t set, const std::vector<uint32_t>& rules);
    faults::TriggerSet::Offsets offsets() const { return {up_.forwarded(), down_.forwarded()}; }
    bool has_preconnect_clamp() const;
    void rearm();

    // Connecting.
    void resolve();
    void connect_next();
    // gone: 0, or UV_ECONNRESET (a RST) / UV_EPIPE (a FIN, then a RST) when the peer we
    // connected to ended before the connection was seen made (the connect's error).
    void on_connected(int gone = 0);
    void upstream_failed(const char* kind, int err);
    void on_resolved(const Resolver::Result& r);
    static void on_connect(uv_connect_t* req, int status);

    Endpoint& endpoint(faults::Side s) { return s == faults::Side::client ? client_ : upstream_; }
    Pipe& pipe_from(const Endpoint& e) { return &e == &client_ ? up_ : down_; }
    Pipe& pipe_into(const Endpoint& e) { return &e == &client_ ? down_ : up_; }
    Pipe& pipe(config::Direction d) { return d == config::Direction::upstream ? up_ : down_; }

    // Endpoint::Events
    void on_opened(Endpoint&) override { ++live_; }
    void on_data(Endpoint& e, Chunk& chunk, size_t n, bool fin_follows) override {
        pipe_from(e).on_data(chunk, n, fin_follows);
    }
    void on_eof(Endpoint& e) override { pipe_from(e).on_eof(); }
    void on_read_error(Endpoint& e, int err) override { pipe_from(e).on_read_error(err); }
    void on_write_done(Endpoint& e) override { pipe_into(e).on_write_done(); }
    void on_write_error(Endpoint& e, int err) override;
    void on_fin_sent(Endpoint& e) override { pipe_into(e).on_fin_sent(); }
    void on_discarded(Endpoint& e, size_t n) override;
    void on_closed(Endpoint& e) override;

    // Pipe::Events
    void on_bytes(config::Direction dir, size_t n) override;
    bool watches(config::Direction dir) const override;
    Pipe::ScanResult scan(config::Direction dir, const char* p, size_t n) override;
    void fire_pending() override;
    void on_source_reset(config::Direction dir, int err) override;
    void on_sink_error(config::Direction dir, int err) override;
    void on_direction_done(config::Direction dir) override;
    void on_drained(config::Direction dir) override;
    faults::StageContext stage_context() override { return {now_us(), rng_, *this}; }
    void trace(const char* event) override;

    // Deadlines::Owner and ::Client
    void handle_opened() override { ++live_; }
    void handle_closed() override;
    void on_deadline(uint64_t now_us) override;

    SessionOwner& server_;
    uint64_t id_;
    std::shared_ptr<const config::Proxy> cfg_;
    // Before the endpoints and pipes, which hold it, and destroyed after them.
    Deadlines deadlines_;
    Endpoint client_{Endpoint::Side::client, *this, deadlines_};
    Endpoint upstream_{Endpoint::Side::server, *this, deadlines_};
    // The socket we accepted and the one we connect (client_/upstream_, swapped for an
    // active-mode FTP data connection).
    Endpoint* accepted_ = &client_;
    Endpoint* outgoing_ = &upstream_;
    std::unique_ptr<const DataTarget> data_;  // most sessions are not FTP data: 8 bytes
    config::Channel channel_ = config::Channel::any;
    std::unique_ptr<FtpControl> ftp_;
    Pipe up_{*this, client_, upstream_, config::Direction::upstream, deadlines_};
    Pipe down_{*this, upstream_, client_, config::Direction::downstream, deadlines_};

    std::shared_ptr<Resolver::Ticket> lookup_;
    uv_connect_t connect_req_{};
    std::vector<sockaddr_storage> addrs_;  // upstream candidates, tried in order
    size_t next_addr_ = 0;
    uint64_t connect_deadline_us_ = 0;
    uint64_t reap_check_us_ = 0;  // under an endless stage: next look at whether both peers left

    // The rules applied at accept (the proxy's config, compiled once for all its connections),
    // and one set per rule added while the connection is open (reload, API), each holding the
    // program (and so the config snapshot) its rule belongs to.
    faults::TriggerSet rules_;
    std::unique_ptr<std::vector<faults::TriggerSet>> added_rules_;
    std::vector<AppliedFault> applied_;
    uint64_t applied_total_ = 0;
    std::vector<std::string> slots_;
    // Packets dropped below the socket, per rule; released when the rule is lifted, its fault
    // ends, or the connection starts ending.
    std::vector<std::pair<std::string, std::unique_ptr<PacketFilter::Handle>>> packet_drops_;
    uint64_t ordinal_ = 0;
    config::Duration accepted_at_{0};
    union {
        sockaddr sa;
        sockaddr_in v4;
        sockaddr_in6 v6;
    } peer_{};  // TCP peers only: 28 bytes, not sockaddr_storage's 128
    std::vector<std::pair<uint32_t, uint32_t>> pending_fire_;  // (set, rule) firing next
    faults::SplitMix64 rng_;

    faults::Endings endings_;
    bool ending_ = false;
    std::string client_addr_;
    uint64_t started_ms_ = 0;
    int live_ = 0;  // open handles plus in-flight requests that cannot be cancelled
    bool resolving_ = false;
    bool connecting_ = false;
    bool connected_ = false;
    bool retry_pending_ = false;
    bool upstream_failed_ = false;
    bool finished_ = false;
};

template <class Fn>
void Session::each_rule(Fn&& fn) const {
    for (size_t k = 0; k < rule_sets(); ++k) {
        const faults::TriggerSet& set = rule_set(k);
        set.each_applied([&](size_t i) { fn(set.program()->rule(i)); });
    }
}

}  // namespace tcpfault

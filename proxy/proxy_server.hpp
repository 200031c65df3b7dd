// One configured proxy at run time: its listening socket, its open sessions and its counters.
// The config snapshot is shared with sessions, so a reload swaps it for new connections while
// open ones keep the one they started with.
//
// With `workers: N` the instance on the main loop (the primary, the one the APIs and the App
// hold) owns a replica on each worker loop: every instance listens on the same address with
// SO_REUSEPORT and serves the sessions the kernel gives it. The primary forwards every
// operation to its replicas and waits for them, so an API call has acted everywhere when it
// returns; what must count across instances (ordinals, `limit`, cap slots) lives in
// ProxyShared.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "faults/contracts.hpp"
#include "ftp/ftp_data_listener.hpp"
#include "net/worker.hpp"
#include "observe/events.hpp"
#include "observe/metrics.hpp"
#include "proxy/session.hpp"

namespace tcpfault {

class ProxyServer;

// What a proxy's instances on all loops count together. Locked briefly per accept and per
// fault; with one worker it is never contended.
struct ProxyShared {
    std::mutex mu;
    uint64_t ordinal = 0;       // client connections, for `connections: {every, nth, first}`
    uint64_t data_ordinal = 0;  // FTP data connections, counted apart
    std::unordered_map<std::string, uint64_t> fired;       // per rule, for `limit`
    std::unordered_map<std::string, uint64_t> cap_active;  // slots taken, per cap rule
    // Clients held by a cap rule (`over: hold`), first come first served over all loops.
    struct Held {
        ProxyServer* server;
        LoopQueue* queue;  // of the server's loop
        uint64_t session;
    };
    std::unordered_map<std::string, std::deque<Held>> cap_waiting;
    // Each live instance, so a task posted to another loop can tell it is still there.
    std::vector<ProxyServer*> instances;
};

class ProxyServer final : public FtpDataListener::Owner,
                          public faults::ProxyControl,
                          public SessionOwner {
  public:
    // `pool` null or without workers: a single instance on `loop`.
    ProxyServer(uv_loop_t* loop, std::shared_ptr<const config::Proxy> cfg,
                WorkerPool* pool = nullptr);
    ~ProxyServer();  // destroys the replicas on their own loops
    ProxyServer(const ProxyServer&) = delete;
    ProxyServer& operator=(const ProxyServer&) = delete;

    // Binds and listens; returns 0 or a libuv error. Logs the real address on success.
    int listen();
    // Retires the proxy: closes the listener for good; open sessions finish on their own.
    void stop_accepting();
    // The crashed-and-restarted server: RST every open connection, refuse new ones for
    // `downtime` (restart fault, admin API).
    void restart(config::Duration downtime) override;
    // Drops the SYNs sent to the listening address while on (drop_syn); one entry for every
    // loop's listener, as they share the address.
    void set_syn_drop(bool on) override;
    // Closes every open session (plain close, or RST with `with_reset`).
    void abort_sessions(bool with_reset);
    // Replaces the config used for new connections (same listen address).
    // Rules new or newly enabled in it also apply to open connections (`existing`).
    // `replaced` names a rule whose definition changed (API PUT): it is re-applied too.
    void update_config(std::shared_ptr<const config::Proxy> cfg, const std::string& replaced = "");
    // update_config with these rules and this instance's own settings: how an instance still
    // finishing (a reload re-bound or removed it) follows its name's rules.
    void take_rules(const std::vector<config::Rule>& rules, const std::string& replaced = "");
    // Every open session of every instance, with the instance's worker(); `fn` runs on each
    // session's own loop while the caller waits.
    void for_each_session(const std::function<void(const Session&, unsigned)>& fn) const;
    // A page of the open sessions in id order (oldest first): on each instance's loop, `fn`
    // sees that instance's `limit` lowest ids above `after` (so the caller, merging the
    // instances, sorts by id and keeps `limit`). Returns the number of open sessions in all.
    // Work per call: one pass over the ids, and `fn` at most `limit` times per loop.
    size_t for_each_session_page(uint64_t after, size_t limit,
                                 const std::function<void(const Session&, unsigned)>& fn) const;
    // Runs `fn` on the session with this id, on its own loop, while the caller waits; false
    // when no instance has it (it never existed, or has ended and been freed).
    bool with_session(uint64_t id, const std::function<void(Session&, unsigned)>& fn);
    // The rule by that name in the current config, or null.
    const config::Rule* current_rule(const std::string& name) const;
    // Applies one rule to every open connection it matches.
    void apply_to_open_sessions(const config::Rule& rule);

    const config::Proxy& config() const { return *cfg_; }
    // Made over an API rather than by the file: a reload leaves it alone.
    void set_created_at_runtime() { created_at_runtime_ = true; }
    bool created_at_runtime() const { return created_at_runtime_; }
    const std::string& name() const override { return cfg_->name; }
    uv_loop_t* loop() const override { return loop_; }
    LoopQueue* loop_queue() const override { return queue_; }
    bool is_own_listener(const sockaddr_storage& target) const override;
    // 0 for the main loop's instance, else the worker loop's number.
    unsigned worker() const { return worker_; }
    std::string listen_addr() const { return listen_addr_; }
    // The listening socket is open (not refused, restarting or retired).
    bool listening() const { return listener_open_ && !listener_closing_; }
    // The libuv error of the last attempt to open the listener, 0 if it succeeded.
    int listen_error() const { return listen_error_; }
    // Open sessions over all instances.
    size_t active() const;
    // Connections accepted since the start, all instances (FTP data connections included).
    uint64_t connections_total() const;
    // Bytes read from the client (upstream) or the server (downstream), all instances.
    uint64_t bytes_total(config::Direction dir) const;
    // True once retired, every handle closed and no session remains, in every instance:
    // safe to destroy.
    bool finished() const;

    // Called whenever a session ends or the listener closes, so the owner can reap.
    void set_on_idle(std::function<void()> cb) { on_idle_ = std::move(cb); }

    // FTP data: opens a one-shot listener on `bind`'s address for a data connection to
    // `target`; fills `bound` with our address. "" or the error.
    std::string open_ftp_data(const sockaddr_storage& bind, const sockaddr_storage& target,
                              bool accepted_is_server, sockaddr_storage* bound) override;
    void accept_data(uv_stream_t* listener, const sockaddr_storage& target,
                     bool accepted_is_server) override;
    void data_listener_closed(uint64_t id) override;

    // Rules: matching at accept, and injection counting (for `limit` and metrics).
    void set_seed(uint64_t seed) { seed_ = seed; }  // before listen()
    // The packet filter (before listen(); null: none, the faults that need one are rejected
    // when rules are read). It outlives the proxy.
    void set_packet_filter(PacketFilter* f) { packet_filter_ = f; }
    PacketFilter* packet_filter() const override { return packet_filter_; }
    uint64_t seed() const override { return seed_; }
    // Applies matching rules to a new session; `cap` rules may hold or reject it.
    Admission match_rules(Session& s, const sockaddr* client) override;
    // A session that held `cap` slots ends: free them and admit who waits.
    void release_slots(const std::vector<std::string>& rules);
    bool record_fault(const config::Rule& rule) override;
    uint64_t fired(const std::string& rule) const;

    // Session callbacks.
    void session_finished(uint64_t id) override;
    void count_bytes(config::Direction dir, size_t n) override;
    void count_rejected(const char* reason) override;
    // A rule's fault could not act (the connection was already ending): logged and counted.
    void count_suppressed(const config::Rule& rule, uint64_t conn, const char* why) override;
    void count_upstream_error(const char* kind) override;
    void fault_applied(const Session& s, std::string_view rule, const char* fault) override;
    void count_api_fault(const char* fault) override;

    // Metrics: series declared for this proxy and its rules; scrape-time values folded in.
    void set_metrics(Metrics* m);
    // `draining`: open connections of earlier instances of this proxy that a reload re-bound
    // (retired, still finishing), counted in its active gauge with its own.
    void sync_metrics(size_t draining = 0);
    // Stopped accepting for good (removed, re-bound, shutting down): finishing what is open.
    bool retired() const { return retired_; }
    // The event timeline (faults, suppressed faults, the end of connections a fault acted
    // on); before listen(). Null: none.
    void set_events(EventLog* e) { events_ = e; }
    EventLog* events() const { return events_; }

  private:
    struct Replica {
        Worker* worker;
        std::unique_ptr<ProxyServer> server;
    };
    struct WindowState {
        bool window = false;   // enabled and inside its schedule
        bool engaged = false;  // fired for the current window
    };

    int open_listener();
    void close_listener();
    // Listener wanted open (true) or closed (refuse, restart); on every instance.
    void set_accepting(bool on);
    void each_replica(const std::function<void(ProxyServer&)>& fn) const;
    void become_replica_of(const ProxyServer& primary, Worker& worker);
    // Hands a freed cap slot (already counted as taken) to a held session of this instance.
    // Gives the held session `id` a slot of cap rule `rule` and admits it; false if it is gone
    // or ending (the caller passes the slot on).
    bool admit_held(const std::string& rule, uint64_t id);
    // One slot of cap rule `name` frees.
    void release_slot(const std::string& name);
    // The rules from `from` on, in order, for a config with a `cap` rule: stops at a cap that
    // holds or turns the connection away.
    // `passed`: rules to leave out (applied already, or caps whose slot it holds).
    Admission match_in_order(Session& s, const faults::ConnectionFacts& facts, size_t from,
                             const std::vector<std::string>& passed);
    // Gives a slot of cap rule `name` to a held client, on whichever loop it waits; false if
    // it is on this loop and gone (the slot is still to be passed on).
    bool hand_slot(const std::string& name, const ProxyShared::Held& held);
    // Admits the clients cap rule `name` holds while fewer than `max` hold its slots: after
    // the rule went or was switched off (max: no limit), or its max was raised.
    void admit_waiting(const std::string& name, uint64_t max);
    bool local_finished() const {
        return retired_ && !listener_open_ && !clock_open_ && sessions_.empty() &&
               data_listeners_.empty();
    }
    void start_rule_clock();
    void on_rule_tick();
    static void on_connection(uv_stream_t* listener, int status);
    static void on_listener_closed(uv_handle_t* h);
    static void on_rule_clock(uv_timer_t* t);
    static void on_clock_closed(uv_handle_t* h);

    uv_loop_t* loop_;
    std::shared_ptr<const config::Proxy> cfg_;
    // cfg_'s rules compiled (triggers, literal matchers), shared with the sessions using them.
    std::shared_ptr<const faults::RuleProgram> program_;
    WorkerPool* pool_;
    bool replica_ = false;
    unsigned worker_ = 0;
    LoopQueue* queue_;  // this instance's loop's (the main loop's for a primary; null alone)
    std::vector<Replica> replicas_;  // primary only
    std::shared_ptr<ProxyShared> shared_;
    uv_tcp_t listener_{};
    bool want_listen_ = true;
    bool listener_open_ = false;
    bool listener_nodelay_ = false;  // accepted sockets inherit TCP_NODELAY from it (Linux)
    bool listener_closing_ = false;
    int listen_error_ = 0;
    bool retired_ = false;
    bool created_at_runtime_ = false;
    sockaddr_storage bound_{};  // the real address once bound, so a re-open keeps port 0's pick
    std::string listen_addr_;
    uv_timer_t clock_{};
    bool clock_open_ = false;
    uint64_t restart_until_ms_ = 0;
    PacketFilter* packet_filter_ = nullptr;
    bool syn_drop_wanted_ = false;                    // a drop_syn rule is in its window
    std::unique_ptr<PacketFilter::Handle> syn_drop_;  // the SYNs are being dropped
    std::unordered_map<std::string, WindowState> windows_;
    std::unordered_map<uint64_t, std::unique_ptr<FtpDataListener>> data_listeners_;
    uint64_t next_listener_id_ = 1;
    std::unordered_map<uint64_t, std::unique_ptr<Session>> sessions_;
    // Read by the main loop (API, scrapes) while this instance's loop writes them.
    std::atomic<size_t> active_{0};
    std::atomic<uint64_t> bytes_up_{0};
    std::atomic<uint64_t> bytes_down_{0};
    uint64_t seed_ = 0;
    Metrics* metrics_ = nullptr;
    EventLog* events_ = nullptr;
    Metrics::ProxySeries series_;
    uint64_t synced_up_ = 0;  // bytes already added to the Prometheus counters (primary)
    uint64_t synced_down_ = 0;
    std::function<void()> on_idle_;
};

// Folds every instance's scrape-time values into the metrics: the running ones and those
// still finishing (a re-bound proxy's open connections count in its active gauge).
void sync_all_metrics(const std::vector<ProxyServer*>& servers);

}  // namespace tcpfault

// One configured proxy at run time: its listening socket, its open sessions and its counters.
// The config snapshot is shared with sessions, so a reload swaps it for new connections while
// open ones keep the one they started with.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "config/config.hpp"
#include "proxy/ftp_data_listener.hpp"
#include "proxy/metrics.hpp"
#include "proxy/session.hpp"

namespace tcpfault {

struct ProxyCounters {
    uint64_t connections = 0;  // accepted
    uint64_t connected = 0;    // upstream connect succeeded
    uint64_t bytes_up = 0;
    uint64_t bytes_down = 0;
    std::unordered_map<std::string, uint64_t> rejected;         // by reason
    std::unordered_map<std::string, uint64_t> upstream_errors;  // by kind
};

class ProxyServer {
  public:
    ProxyServer(uv_loop_t* loop, std::shared_ptr<const config::Proxy> cfg);
    ~ProxyServer();
    ProxyServer(const ProxyServer&) = delete;
    ProxyServer& operator=(const ProxyServer&) = delete;

    // Binds and listens; returns 0 or a libuv error. Logs the real address on success.
    int listen();
    // Retires the proxy: closes the listener for good; open sessions finish on their own.
    void stop_accepting();
    // The crashed-and-restarted server: RST every open connection, refuse new ones for
    // `downtime` (restart fault, admin API).
    void restart(config::Duration downtime);
    // Closes every open session (plain close, or RST with `with_reset`).
    void abort_sessions(bool with_reset);
    // Replaces the config used for new connections (same listen address).
    // Rules new or newly enabled in it also apply to open connections (`existing`).
    // `replaced` names a rule whose definition changed (API PUT): it is re-applied too.
    void update_config(std::shared_ptr<const config::Proxy> cfg, const std::string& replaced = "");
    void for_each_session(const std::function<void(const Session&)>& fn) const {
        for (const auto& [id, s] : sessions_) fn(*s);
    }
    // The rule by that name in the current config, or null.
    const config::Rule* current_rule(const std::string& name) const;
    // Applies one rule to every open connection it matches.
    void apply_to_open_sessions(const config::Rule& rule);

    const config::Proxy& config() const { return *cfg_; }
    // Made over an API rather than by the file: a reload leaves it alone.
    void set_created_at_runtime() { created_at_runtime_ = true; }
    bool created_at_runtime() const { return created_at_runtime_; }
    const std::string& name() const { return cfg_->name; }
    uv_loop_t* loop() const { return loop_; }
    std::string listen_addr() const { return listen_addr_; }
    size_t active() const { return sessions_.size(); }
    // True once retired, every handle closed and no session remains: safe to destroy.
    bool finished() const {
        return retired_ && !listener_open_ && !clock_open_ && sessions_.empty() &&
               data_listeners_.empty();
    }
    const ProxyCounters& counters() const { return counters_; }

    // Called whenever a session ends or the listener closes, so the owner can reap.
    void set_on_idle(std::function<void()> cb) { on_idle_ = std::move(cb); }

    // FTP data: opens a one-shot listener on `bind`'s address for a data connection to
    // `target`; fills `bound` with our address. "" or the error.
    std::string open_ftp_data(const sockaddr_storage& bind, const sockaddr_storage& target,
                              bool accepted_is_server, sockaddr_storage* bound);
    void accept_data(uv_stream_t* listener, const sockaddr_storage& target,
                     bool accepted_is_server);
    void data_listener_closed(uint64_t id);

    // Rules: matching at accept, and injection counting (for `limit` and metrics).
    void set_seed(uint64_t seed) { seed_ = seed; }
    uint64_t seed() const { return seed_; }
    enum class Admission { admit, hold, rejected };
    // Applies matching rules to a new session; `cap` rules may hold or reject it.
    Admission match_rules(Session& s, const sockaddr* client);
    // A session that held `cap` slots ends: free them and admit who waits.
    void release_slots(const std::vector<std::string>& rules);
    bool record_fault(const config::Rule& rule);
    uint64_t fired(const std::string& rule) const;

    // Session callbacks.
    void session_finished(uint64_t id);
    void count_bytes(config::Direction dir, size_t n);
    void count_connected() { ++counters_.connected; }
    void count_rejected(const char* reason);
    void count_upstream_error(const char* kind);

    // Metrics: series declared for this proxy and its rules; scrape-time values folded in.
    void set_metrics(Metrics* m);
    void sync_metrics();

  private:
    struct CapState {
        uint64_t active = 0;
        std::vector<uint64_t> waiting;  // held session ids, first come first served
    };
    struct WindowState {
        bool window = false;   // enabled and inside its schedule
        bool engaged = false;  // fired for the current window
    };

    int open_listener();
    void close_listener();
    void start_rule_clock();
    void on_rule_tick();
    static void on_connection(uv_stream_t* listener, int status);
    static void on_listener_closed(uv_handle_t* h);
    static void on_rule_clock(uv_timer_t* t);
    static void on_clock_closed(uv_handle_t* h);

    uv_loop_t* loop_;
    std::shared_ptr<const config::Proxy> cfg_;
    uv_tcp_t listener_{};
    bool listener_open_ = false;
    bool listener_closing_ = false;
    bool retired_ = false;
    bool created_at_runtime_ = false;
    sockaddr_storage bound_{};  // the real address once bound, so a re-open keeps port 0's pick
    std::string listen_addr_;
    uv_timer_t clock_{};
    bool clock_open_ = false;
    uint64_t restart_until_ms_ = 0;
    std::unordered_map<std::string, CapState> caps_;
    std::unordered_map<std::string, WindowState> windows_;
    std::unordered_map<uint64_t, std::unique_ptr<FtpDataListener>> data_listeners_;
    uint64_t next_listener_id_ = 1;
    uint64_t data_ordinal_ = 0;
    uint64_t next_id_ = 1;
    std::unordered_map<uint64_t, std::unique_ptr<Session>> sessions_;
    ProxyCounters counters_;
    uint64_t seed_ = 0;
    uint64_t ordinal_ = 0;
    Metrics* metrics_ = nullptr;
    uint64_t synced_up_ = 0;  // bytes already added to the Prometheus counters
    uint64_t synced_down_ = 0;
    std::unordered_map<std::string, uint64_t> fired_;  // per rule name
    std::function<void()> on_idle_;
};

}  // namespace tcpfault

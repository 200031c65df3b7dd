#include "proxy/proxy_server.hpp"

#include <sys/socket.h>

#include <cstring>

#include <algorithm>
#include <vector>

#include "faults/rule_matcher.hpp"
#include "proxy/clock.hpp"
#include "proxy/log.hpp"
#include "proxy/uv_util.hpp"

namespace tcpfault {

namespace {
constexpr int kBacklog = 4096;
uint64_t g_session_ids = 0;  // process-wide, so ids in logs are unique across proxies
}  // namespace

ProxyServer::ProxyServer(uv_loop_t* loop, std::shared_ptr<const config::Proxy> cfg)
    : loop_(loop), cfg_(std::move(cfg)) {}

ProxyServer::~ProxyServer() = default;

int ProxyServer::listen() {
    sockaddr_storage ss;
    if (!numeric_addr(cfg_->listen, &ss)) {
        // Listen hosts are usually literals; a name (e.g. "localhost") is resolved once here.
        uv_getaddrinfo_t req;
        addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        int err = uv_getaddrinfo(loop_, &req, nullptr, cfg_->listen.host.c_str(),
                                 std::to_string(cfg_->listen.port).c_str(), &hints);
        if (err != 0) return err;
        std::memcpy(&ss, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
        uv_freeaddrinfo(req.addrinfo);
    }
    bound_ = ss;
    int err = open_listener();
    if (err != 0) return err;
    log::info("listening",
              {{"proxy", cfg_->name}, {"addr", listen_addr_}, {"upstream", cfg_->upstream.str()}});
    start_rule_clock();
    return 0;
}

int ProxyServer::open_listener() {
    int err = uv_tcp_init(loop_, &listener_);
    if (err != 0) return err;
    listener_.data = this;
    listener_open_ = true;
    err = uv_tcp_bind(&listener_, reinterpret_cast<const sockaddr*>(&bound_), 0);
    if (err == 0)
        err = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), kBacklog, on_connection);
    if (err != 0) {
        close_listener();
        return err;
    }
    int len = sizeof bound_;
    uv_tcp_getsockname(&listener_, reinterpret_cast<sockaddr*>(&bound_), &len);
    listen_addr_ = format_addr(reinterpret_cast<const sockaddr*>(&bound_));
    return 0;
}

void ProxyServer::close_listener() {
    if (!listener_open_ || listener_closing_) return;
    listener_closing_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), on_listener_closed);
}

void ProxyServer::stop_accepting() {
    retired_ = true;
    close_listener();
    for (auto& [id, l] : data_listeners_) l->close();
    if (clock_open_) uv_close(reinterpret_cast<uv_handle_t*>(&clock_), on_clock_closed);
}

void ProxyServer::on_listener_closed(uv_handle_t* h) {
    auto* self = static_cast<ProxyServer*>(h->data);
    self->listener_open_ = false;
    self->listener_closing_ = false;
    if (self->on_idle_) self->on_idle_();
}

void ProxyServer::on_clock_closed(uv_handle_t* h) {
    auto* self = static_cast<ProxyServer*>(h->data);
    self->clock_open_ = false;
    if (self->on_idle_) self->on_idle_();
}

// `refuse` and `restart` follow their schedule windows; a 10 ms tick is finer than any window
// a test or user sets, and only proxies with such rules pay for it.
void ProxyServer::start_rule_clock() {
    bool needed = false;
    for (const auto& r : cfg_->rules) {
        needed = needed || std::holds_alternative<config::RefuseFault>(r.fault) ||
                 std::holds_alternative<config::RestartFault>(r.fault);
    }
    if (!needed || clock_open_ || retired_) return;
    uv_timer_init(loop_, &clock_);
    clock_.data = this;
    clock_open_ = true;
    uv_timer_start(&clock_, on_rule_clock, 0, 10);
}

void ProxyServer::on_rule_clock(uv_timer_t* t) {
    static_cast<ProxyServer*>(t->data)->on_rule_tick();
}

void ProxyServer::on_rule_tick() {
    if (retired_) return;
    config::Duration now = since_start();
    bool refuse = false;
    for (const auto& rule : cfg_->rules) {
        bool is_refuse = std::holds_alternative<config::RefuseFault>(rule.fault);
        const auto* restart_fault = std::get_if<config::RestartFault>(&rule.fault);
        if (!is_refuse && restart_fault == nullptr) continue;
        WindowState& w = windows_[rule.name];
        bool window = rule.enabled && (!rule.match.schedule || rule.match.schedule->active_at(now));
        if (window && !w.window && record_fault(rule)) {
            w.engaged = true;
            size_t open = sessions_.size();
            if (restart_fault != nullptr) restart(restart_fault->downtime);
            if (is_refuse && listener_open_) close_listener();
            log::info("fault injected", {{"proxy", cfg_->name},
                                         {"rule", rule.name},
                                         {"fault", config::fault_name(rule.fault)},
                                         {"open_connections", open}});
        }
        if (!window) w.engaged = false;
        w.window = window;
        refuse = refuse || (is_refuse && w.engaged);
    }
    refuse = refuse || uv_now(loop_) < restart_until_ms_;
    if (refuse && listener_open_) {
        close_listener();
    } else if (!refuse && !listener_open_) {
        int err = open_listener();
        if (err != 0)
            log::warn("cannot re-open listener, will retry",
                      {{"proxy", cfg_->name}, {"error", uv_error_string(err)}});
        else
            log::info("listener re-opened", {{"proxy", cfg_->name}, {"addr", listen_addr_}});
    }
}

void ProxyServer::restart(config::Duration downtime) {
    size_t open = sessions_.size();
    abort_sessions(true);
    if (downtime.count() > 0) {
        restart_until_ms_ = uv_now(loop_) + static_cast<uint64_t>((downtime.count() + 999) / 1000);
        close_listener();  // closes the socket now; new connects are refused from here on
        // Proxies without refuse/restart rules (an API restart) need the clock to re-open.
        if (!clock_open_ && !retired_) {
            uv_timer_init(loop_, &clock_);
            clock_.data = this;
            clock_open_ = true;
            uv_timer_start(&clock_, on_rule_clock, 10, 10);
        }
    }
    // Logged once it has happened, so a client reading the log sees the new state.
    log::info("restart", {{"proxy", cfg_->name},
                          {"open_connections", open},
                          {"downtime_ms", downtime.count() / 1000}});
}

void ProxyServer::on_connection(uv_stream_t* listener, int status) {
    auto* self = static_cast<ProxyServer*>(listener->data);
    if (status != 0) {
        // EMFILE/ENFILE: libuv already accepted-and-closed the pending connection with its
        // reserve fd, so the listener does not spin; count it and keep serving.
        self->count_rejected("accept_error");
        log::warn("accept error", {{"proxy", self->name()}, {"error", uv_error_string(status)}});
        return;
    }
    uint64_t id = ++g_session_ids;
    ++self->counters_.connections;
    if (self->metrics_ != nullptr) self->metrics_->connection_opened(self->name());
    auto session = std::make_unique<Session>(*self, id, self->cfg_);
    Session* s = session.get();
    self->sessions_.emplace(id, std::move(session));
    s->accept(listener);  // may fail and end the session later; never frees it synchronously
}

std::string ProxyServer::open_ftp_data(const sockaddr_storage& bind, const sockaddr_storage& target,
                                       bool accepted_is_server, sockaddr_storage* bound) {
    if (retired_) return "proxy is stopping";
    uint64_t id = next_listener_id_++;
    auto l = std::make_unique<FtpDataListener>(*this, id, target, accepted_is_server);
    FtpDataListener* raw = l.get();
    data_listeners_.emplace(id, std::move(l));
    // On failure the listener closes itself and is erased in data_listener_closed().
    return raw->open(loop_, bind, bound);
}

void ProxyServer::accept_data(uv_stream_t* listener, const sockaddr_storage& target,
                              bool accepted_is_server) {
    uint64_t id = ++g_session_ids;
    ++counters_.connections;
    if (metrics_ != nullptr) metrics_->connection_opened(name());
    Session::DataTarget t{target, accepted_is_server};
    auto session = std::make_unique<Session>(*this, id, cfg_, t);
    Session* s = session.get();
    sessions_.emplace(id, std::move(session));
    s->accept(listener);
}

void ProxyServer::data_listener_closed(uint64_t id) {
    data_listeners_.erase(id);
    if (on_idle_) on_idle_();
}

void ProxyServer::abort_sessions(bool with_reset) {
    std::vector<Session*> open;
    open.reserve(sessions_.size());
    for (auto& [id, s] : sessions_) open.push_back(s.get());
    for (Session* s : open) s->abort(with_reset);
}

void ProxyServer::session_finished(uint64_t id) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    std::vector<std::string> slots = it->second->slots();
    if (metrics_ != nullptr)
        metrics_->connection_closed(
            name(), static_cast<double>(uv_now(loop_) - it->second->started_ms()) / 1000.0);
    sessions_.erase(it);
    if (!slots.empty()) release_slots(slots);
    if (on_idle_) on_idle_();
}

ProxyServer::Admission ProxyServer::match_rules(Session& s, const sockaddr* client) {
    faults::ConnectionFacts facts;
    // FTP data connections are counted apart, so `connections: {nth: 2}` with
    // `channel: data` means the second transfer.
    facts.ordinal = s.channel() == config::Channel::data ? ++data_ordinal_ : ++ordinal_;
    facts.channel = s.channel();
    s.set_ordinal(facts.ordinal);
    facts.client = client;
    facts.since_start = since_start();
    for (const auto& rule : cfg_->rules) {
        if (!faults::rule_matches(rule, facts, seed_, fired(rule.name))) continue;
        if (std::holds_alternative<config::RefuseFault>(rule.fault) ||
            std::holds_alternative<config::RestartFault>(rule.fault))
            continue;  // proxy-wide, driven by the rule clock
        const auto* cap = std::get_if<config::CapFault>(&rule.fault);
        if (cap == nullptr) {
            s.apply_rule(&rule);
            continue;
        }
        CapState& st = caps_[rule.name];
        if (st.active < cap->max) {
            ++st.active;
            s.take_slot(rule.name);
            continue;
        }
        if (!record_fault(rule)) continue;  // limit reached: the cap no longer applies
        s.log_fault(rule);
        count_rejected("cap");
        if (cap->over == config::CapFault::Over::hold) {
            st.waiting.push_back(s.id());
            return Admission::hold;
        }
        s.reject(cap->over, cap->banner);
        return Admission::rejected;
    }
    return Admission::admit;
}

const config::Rule* ProxyServer::current_rule(const std::string& name) const {
    for (const auto& r : cfg_->rules)
        if (r.name == name) return &r;
    return nullptr;
}

void ProxyServer::update_config(std::shared_ptr<const config::Proxy> cfg,
                                const std::string& replaced) {
    std::shared_ptr<const config::Proxy> old = std::move(cfg_);
    cfg_ = std::move(cfg);
    // A replaced rule is a new rule: its `limit` counts afresh (faults_total keeps counting).
    if (!replaced.empty()) fired_.erase(replaced);
    set_metrics(metrics_);  // declares series for new rules
    start_rule_clock();     // the new rules may include refuse/restart
    // Switching refuse on or off acts now, not at the next tick.
    if (clock_open_) on_rule_tick();
    // Rules that are new, or newly enabled, also hit open connections (`existing`).
    for (const auto& rule : cfg_->rules) {
        if (!rule.match.existing || !rule.enabled) continue;
        auto was = std::find_if(old->rules.begin(), old->rules.end(),
                                [&](const config::Rule& r) { return r.name == rule.name; });
        if (was != old->rules.end() && was->enabled && rule.name != replaced) continue;
        apply_to_open_sessions(rule);
    }
}

void ProxyServer::apply_to_open_sessions(const config::Rule& rule) {
    if (std::holds_alternative<config::CapFault>(rule.fault) ||
        std::holds_alternative<config::RefuseFault>(rule.fault) ||
        std::holds_alternative<config::RestartFault>(rule.fault))
        return;  // proxy-wide: they act on new connections and the listener
    config::Duration now = since_start();
    for (auto& [id, s] : sessions_) {
        if (s->ending()) continue;
        faults::ConnectionFacts facts;
        facts.ordinal = s->ordinal();
        facts.channel = s->channel();
        facts.client = s->peer();
        facts.since_start = now;
        if (faults::rule_matches(rule, facts, seed_, fired(rule.name)))
            s->apply_runtime_rule(&rule, cfg_);
    }
}

void ProxyServer::release_slots(const std::vector<std::string>& rules) {
    for (const auto& name : rules) {
        auto it = caps_.find(name);
        if (it == caps_.end()) continue;
        CapState& st = it->second;
        if (st.active > 0) --st.active;
        // Admit the longest-waiting client that is still there.
        while (!st.waiting.empty()) {
            uint64_t id = st.waiting.front();
            st.waiting.erase(st.waiting.begin());
            auto sit = sessions_.find(id);
            if (sit == sessions_.end() || sit->second->ending()) continue;
            ++st.active;
            sit->second->take_slot(name);
            sit->second->admit();
            break;
        }
    }
}

bool ProxyServer::record_fault(const config::Rule& rule) {
    // A pending trigger of a rule since deleted or disabled (API, reload) no longer fires.
    const config::Rule* cur = current_rule(rule.name);
    if (cur == nullptr || !cur->enabled) return false;
    uint64_t& n = fired_[rule.name];
    if (rule.match.limit && n >= *rule.match.limit) return false;
    ++n;
    if (metrics_ != nullptr) metrics_->fault(name(), rule.name, config::fault_name(rule.fault));
    return true;
}

void ProxyServer::count_rejected(const char* reason) {
    ++counters_.rejected[reason];
    if (metrics_ != nullptr) metrics_->rejected(name(), reason);
}

void ProxyServer::count_upstream_error(const char* kind) {
    ++counters_.upstream_errors[kind];
    if (metrics_ != nullptr) metrics_->upstream_error(name(), kind);
}

void ProxyServer::set_metrics(Metrics* m) {
    metrics_ = m;
    if (metrics_ == nullptr) return;
    metrics_->declare_proxy(name());
    for (const auto& r : cfg_->rules)
        metrics_->declare_rule(name(), r.name, config::fault_name(r.fault));
}

void ProxyServer::sync_metrics() {
    if (metrics_ == nullptr) return;
    metrics_->bytes(name(), "upstream", counters_.bytes_up - synced_up_);
    metrics_->bytes(name(), "downstream", counters_.bytes_down - synced_down_);
    synced_up_ = counters_.bytes_up;
    synced_down_ = counters_.bytes_down;
    if (retired_) return;  // a retiring instance's successor reports the live values
    metrics_->set_active(name(), static_cast<double>(sessions_.size()));
    config::Duration now = since_start();
    for (const auto& r : cfg_->rules) {
        bool active = faults::rule_active(r, now, fired(r.name));
        metrics_->set_rule_active(name(), r.name, active);
    }
}

uint64_t ProxyServer::fired(const std::string& rule) const {
    auto it = fired_.find(rule);
    return it == fired_.end() ? 0 : it->second;
}

void ProxyServer::count_bytes(config::Direction dir, size_t n) {
    if (dir == config::Direction::upstream)
        counters_.bytes_up += n;
    else
        counters_.bytes_down += n;
}

}  // namespace tcpfault

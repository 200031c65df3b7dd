#include "proxy/proxy_server.hpp"

#include <sys/socket.h>

#include <cstdio>
#include <cstring>

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <vector>

#include "faults/rule_matcher.hpp"
#include "net/uv_util.hpp"
#include "observe/clock.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {
constexpr int kBacklog = 4096;
// Process-wide, so ids in logs and the API are unique across proxies and workers.
std::atomic<uint64_t> g_session_ids{0};
}  // namespace

ProxyServer::ProxyServer(uv_loop_t* loop, std::shared_ptr<const config::Proxy> cfg,
                         WorkerPool* pool)
    : loop_(loop),
      cfg_(std::move(cfg)),
      program_(faults::RuleProgram::of(cfg_)),
      pool_(pool),
      queue_(pool != nullptr ? pool->main : nullptr),
      shared_(std::make_shared<ProxyShared>()) {}

ProxyServer::~ProxyServer() {
    for (auto& r : replicas_) {
        // A replica's handles and sessions belong to its loop: it is freed there.
        r.worker->queue().run_sync([&r] { r.server.reset(); });
    }
    {
        std::lock_guard<std::mutex> lock(shared_->mu);
        std::erase(shared_->instances, this);
    }
    // The replicas, which share the series' pointers, are gone: the series may go too.
    if (!replica_ && metrics_ != nullptr && series_.connections != nullptr)
        metrics_->release_proxy_series(name());
}

void ProxyServer::become_replica_of(const ProxyServer& primary, Worker& worker) {
    replica_ = true;
    shared_ = primary.shared_;
    seed_ = primary.seed_;
    packet_filter_ = primary.packet_filter_;
    metrics_ = primary.metrics_;
    events_ = primary.events_;
    series_ = primary.series_;
    bound_ = primary.bound_;
    listen_addr_ = primary.listen_addr_;
    WorkerPool* pool = primary.pool_;
    // Whatever a replica frees, the main loop may now be able to reap its primary.
    on_idle_ = [pool] { pool->main->post(pool->on_idle); };
    queue_ = &worker.queue();
    worker_ = worker.index();
    std::lock_guard<std::mutex> lock(shared_->mu);
    shared_->instances.push_back(this);
}

void ProxyServer::each_replica(const std::function<void(ProxyServer&)>& fn) const {
    for (const auto& r : replicas_) {
        ProxyServer* s = r.server.get();
        r.worker->queue().run_sync([&] { fn(*s); });
    }
}

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
    if (pool_ != nullptr && !pool_->workers.empty()) {
        {
            std::lock_guard<std::mutex> lock(shared_->mu);
            shared_->instances.push_back(this);
        }
        // Replicas bind the port the primary got (port 0 included), beside it.
        for (auto& w : pool_->workers) {
            Worker* worker = w.get();
            std::unique_ptr<ProxyServer> r;
            w->queue().run_sync([&] {
                r = std::make_unique<ProxyServer>(worker->loop(), cfg_);
                r->become_replica_of(*this, *worker);
                err = r->open_listener();
                if (err != 0) r->stop_accepting();
            });
            replicas_.push_back(Replica{worker, std::move(r)});
            if (err != 0) return err;  // the caller retires us, and with us every replica
        }
    }
    log::info("listening",
              {{"proxy", cfg_->name}, {"addr", listen_addr_}, {"upstream", cfg_->upstream.str()}});
    start_rule_clock();
    return 0;
}

int ProxyServer::open_listener() {
    int err = uv_tcp_init_ex(loop_, &listener_, bound_.ss_family);
    listen_error_ = err;
    if (err != 0) return err;
    listener_.data = this;
    listener_open_ = true;
    // Set once here instead of once per accepted connection.
    listener_nodelay_ = uv_tcp_nodelay(&listener_, 1) == 0;
    bool reuseport = replica_ || (pool_ != nullptr && !pool_->workers.empty());
    if (reuseport) {
        // One listening socket per loop; the kernel spreads new connections across them.
        uv_os_fd_t fd;
        int on = 1;
        err = uv_fileno(reinterpret_cast<uv_handle_t*>(&listener_), &fd);
        if (err == 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0)
            err = uv_translate_sys_error(errno);
    }
    if (err == 0) err = uv_tcp_bind(&listener_, reinterpret_cast<const sockaddr*>(&bound_), 0);
    if (err == 0)
        err = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), kBacklog, on_connection);
    listen_error_ = err;
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
    want_listen_ = false;
    close_listener();
    syn_drop_.reset();
    for (auto& [id, l] : data_listeners_) l->close();
    if (clock_open_) uv_close(reinterpret_cast<uv_handle_t*>(&clock_), on_clock_closed);
    each_replica([](ProxyServer& r) { r.stop_accepting(); });
}

void ProxyServer::set_accepting(bool on) {
    want_listen_ = on;
    int err = 0;
    bool opened = false;
    if (!on) {
        close_listener();
    } else if (!listener_open_ && !retired_) {
        err = open_listener();
        opened = err == 0;
    }
    each_replica([on](ProxyServer& r) { r.set_accepting(on); });
    // Logged once every loop listens again, so a client reading the log can connect.
    if (err != 0)
        log::warn("cannot re-open listener, will retry",
                  {{"proxy", cfg_->name}, {"error", uv_error_string(err)}});
    else if (opened && !replica_)
        log::info("listener re-opened", {{"proxy", cfg_->name}, {"addr", listen_addr_}});
}

void ProxyServer::on_listener_closed(uv_handle_t* h) {
    auto* self = static_cast<ProxyServer*>(h->data);
    self->listener_open_ = false;
    self->listener_closing_ = false;
    // Asked to listen again while the old socket was still closing.
    if (self->want_listen_ && !self->retired_ && self->open_listener() != 0)
        log::warn("cannot re-open listener", {{"proxy", self->cfg_->name}});
    if (self->on_idle_) self->on_idle_();
}

void ProxyServer::on_clock_closed(uv_handle_t* h) {
    auto* self = static_cast<ProxyServer*>(h->data);
    self->clock_open_ = false;
    if (self->on_idle_) self->on_idle_();
}

// `refuse`, `restart` and `drop_syn` follow their schedule windows; a 10 ms tick is finer than
// any window a test or user sets, and only proxies with such rules pay for it.
void ProxyServer::start_rule_clock() {
    bool needed = false;
    for (const auto& r : cfg_->rules) {
        needed = needed || std::holds_alternative<config::RefuseFault>(r.fault) ||
                 std::holds_alternative<config::RestartFault>(r.fault) ||
                 std::holds_alternative<config::DropSynFault>(r.fault);
    }
    // Replicas follow their primary's clock.
    if (!needed || clock_open_ || retired_ || replica_) return;
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
    bool drop_syn = false;
    for (const auto& rule : cfg_->rules) {
        bool is_refuse = std::holds_alternative<config::RefuseFault>(rule.fault);
        bool is_drop_syn = std::holds_alternative<config::DropSynFault>(rule.fault);
        const auto* restart_fault = std::get_if<config::RestartFault>(&rule.fault);
        if (!is_refuse && !is_drop_syn && restart_fault == nullptr) continue;
        WindowState& w = windows_[rule.name];
        bool window = rule.enabled && (!rule.match.schedule || rule.match.schedule->active_at(now));
        if (window && !w.window && record_fault(rule)) {
            w.engaged = true;
            size_t open = active();
            if (restart_fault != nullptr) restart_fault->activate(*this);
            log::info("fault injected", {{"proxy", cfg_->name},
                                         {"rule", rule.name},
                                         {"fault", config::fault_name(rule.fault)},
                                         {"open_connections", open}});
            if (events_ != nullptr) {
                Event e;
                e.kind = "fault";
                e.proxy = cfg_->name;
                e.rule = rule.name;
                e.fault = config::fault_name(rule.fault);
                e.detail = std::to_string(open) + " open connections";
                events_->add(std::move(e));
            }
        }
        if (!window) w.engaged = false;
        w.window = window;
        refuse = refuse || (is_refuse && w.engaged);
        drop_syn = drop_syn || (is_drop_syn && w.engaged);
    }
    if (drop_syn != syn_drop_wanted_) {
        syn_drop_wanted_ = drop_syn;
        config::DropSynFault::activate(*this, drop_syn);
    }
    refuse = refuse || uv_now(loop_) < restart_until_ms_;
    if (refuse == want_listen_) {
        set_accepting(!refuse);
    } else if (!refuse && !listener_open_ && !listener_closing_) {
        set_accepting(true);  // a re-open that failed: retry on every tick
    }
}

void ProxyServer::restart(config::Duration downtime) {
    size_t open = active();
    abort_sessions(true);
    if (downtime.count() > 0) {
        restart_until_ms_ = uv_now(loop_) + static_cast<uint64_t>((downtime.count() + 999) / 1000);
        // Closes the sockets now; new connects are refused from here on.
        set_accepting(false);
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

void ProxyServer::set_syn_drop(bool on) {
    if (!on) {
        if (syn_drop_)
            log::info("syn drop lifted", {{"proxy", cfg_->name}, {"addr", listen_addr_}});
        syn_drop_.reset();
        return;
    }
    if (syn_drop_) return;
    std::string err = "no packet filter (needs CAP_NET_ADMIN)";
    if (packet_filter_ != nullptr) syn_drop_ = packet_filter_->drop_syn(bound_, &err);
    if (!syn_drop_) {
        log::warn("cannot drop SYNs", {{"proxy", cfg_->name}, {"error", err}});
        return;
    }
    log::info("dropping SYNs", {{"proxy", cfg_->name}, {"addr", listen_addr_}});
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
    if (self->series_.connections != nullptr) self->series_.connections->Increment();
    auto session = std::make_unique<Session>(*self, id, self->cfg_);
    Session* s = session.get();
    self->sessions_.emplace(id, std::move(session));
    self->active_.store(self->sessions_.size(), std::memory_order_relaxed);
    // May fail and end the session later; never frees it synchronously.
    s->accept(listener, self->listener_nodelay_);
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
    if (series_.connections != nullptr) series_.connections->Increment();
    Session::DataTarget t{target, accepted_is_server};
    auto session = std::make_unique<Session>(*this, id, cfg_, t);
    Session* s = session.get();
    sessions_.emplace(id, std::move(session));
    active_.store(sessions_.size(), std::memory_order_relaxed);
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
    each_replica([with_reset](ProxyServer& r) { r.abort_sessions(with_reset); });
}

void ProxyServer::for_each_session(const std::function<void(const Session&, unsigned)>& fn) const {
    for (const auto& [id, s] : sessions_) fn(*s, worker_);
    each_replica([&fn](ProxyServer& r) { r.for_each_session(fn); });
}

size_t ProxyServer::for_each_session_page(
    uint64_t after, size_t limit, const std::function<void(const Session&, unsigned)>& fn) const {
    std::vector<const Session*> page;
    for (const auto& [id, s] : sessions_)
        if (id > after) page.push_back(s.get());
    auto by_id = [](const Session* a, const Session* b) { return a->id() < b->id(); };
    if (page.size() > limit) {
        std::nth_element(page.begin(), page.begin() + static_cast<std::ptrdiff_t>(limit),
                         page.end(), by_id);
        page.resize(limit);
    }
    std::sort(page.begin(), page.end(), by_id);
    for (const Session* s : page) fn(*s, worker_);
    size_t total = sessions_.size();
    each_replica([&](ProxyServer& r) { total += r.for_each_session_page(after, limit, fn); });
    return total;
}

bool ProxyServer::with_session(uint64_t id, const std::function<void(Session&, unsigned)>& fn) {
    auto it = sessions_.find(id);
    if (it != sessions_.end()) {
        fn(*it->second, worker_);
        return true;
    }
    // Ids are unique over all loops: the first instance that has it is the one.
    for (auto& r : replicas_) {
        bool found = false;
        ProxyServer* replica = r.server.get();
        r.worker->queue().run_sync([&] { found = replica->with_session(id, fn); });
        if (found) return true;
    }
    return false;
}

uint64_t ProxyServer::connections_total() const {
    std::lock_guard<std::mutex> lock(shared_->mu);
    return shared_->ordinal + shared_->data_ordinal;
}

size_t ProxyServer::active() const {
    size_t n = active_.load(std::memory_order_relaxed);
    for (const auto& r : replicas_) n += r.server->active_.load(std::memory_order_relaxed);
    return n;
}

uint64_t ProxyServer::bytes_total(config::Direction dir) const {
    auto of = [dir](const ProxyServer& s) {
        return (dir == config::Direction::upstream ? s.bytes_up_ : s.bytes_down_)
            .load(std::memory_order_relaxed);
    };
    uint64_t n = of(*this);
    for (const auto& r : replicas_) n += of(*r.server);
    return n;
}

bool ProxyServer::finished() const {
    if (!local_finished()) return false;
    bool all = true;
    each_replica([&all](ProxyServer& r) { all = all && r.local_finished(); });
    return all;
}

void ProxyServer::session_finished(uint64_t id) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    std::vector<std::string> slots = it->second->slots();
    double seconds = static_cast<double>(uv_now(loop_) - it->second->started_ms()) / 1000.0;
    if (series_.duration != nullptr) series_.duration->Observe(seconds);
    // The end of a connection a fault acted on completes its story on the timeline.
    const Session& s = *it->second;
    if (events_ != nullptr && s.faults_applied_total() > 0) {
        char took[32];
        std::snprintf(took, sizeof took, "%.3f s", seconds);
        Event e;
        e.kind = "closed";
        e.proxy = cfg_->name;
        e.conn = id;
        e.client = s.client_addr();
        e.detail = std::string("client: ") + ending_name(s.endings().client) +
                   ", server: " + ending_name(s.endings().server) + ", after " + took;
        e.bytes_up = s.bytes_up();
        e.bytes_down = s.bytes_down();
        events_->add(std::move(e));
    }
    sessions_.erase(it);
    active_.store(sessions_.size(), std::memory_order_relaxed);
    if (!slots.empty()) release_slots(slots);
    if (on_idle_) on_idle_();
}

ProxyServer::Admission ProxyServer::match_rules(Session& s, const sockaddr* client) {
    faults::ConnectionFacts facts;
    {
        // FTP data connections are counted apart, so `connections: {nth: 2}` with
        // `channel: data` means the second transfer.
        std::lock_guard<std::mutex> lock(shared_->mu);
        facts.ordinal =
            s.channel() == config::Channel::data ? ++shared_->data_ordinal : ++shared_->ordinal;
    }
    facts.channel = s.channel();
    s.set_ordinal(facts.ordinal);
    facts.client = client;
    facts.since_start = since_start();
    if (!program_->in_order()) {
        // No `cap` rule: the rules every connection gets in one go, then only those with
        // something in `match` to check.
        bool given = false;
        auto give = [&] {
            if (!given) s.set_rule_program(program_);  // only if some rule applies
            given = true;
        };
        if (program_->any_always()) {
            give();
            s.apply_rules(program_->always());
        }
        for (uint32_t i : program_->checked()) {
            const config::Rule& rule = cfg_->rules[i];
            uint64_t n = rule.match.limit ? fired(rule.name) : 0;
            if (!faults::rule_matches(rule, facts, seed_, n)) continue;
            give();
            s.apply_rule(&rule);
        }
        return Admission::admit;
    }
    s.set_accepted_at(facts.since_start);  // a client a cap holds is matched on from there
    return match_in_order(s, facts, 0, {});
}

ProxyServer::Admission ProxyServer::match_in_order(Session& s, const faults::ConnectionFacts& facts,
                                                   size_t from,
                                                   const std::vector<std::string>& passed) {
    bool program_given = false;
    for (size_t i = from; i < cfg_->rules.size(); ++i) {
        const config::Rule& rule = cfg_->rules[i];
        if (std::find(passed.begin(), passed.end(), rule.name) != passed.end()) continue;
        // The injection count (a lock and a lookup) matters only under `limit`.
        uint64_t n = rule.match.limit ? fired(rule.name) : 0;
        if (!faults::rule_matches(rule, facts, seed_, n)) continue;
        if (std::holds_alternative<config::RefuseFault>(rule.fault) ||
            std::holds_alternative<config::RestartFault>(rule.fault) ||
            std::holds_alternative<config::DropSynFault>(rule.fault))
            continue;  // proxy-wide, driven by the rule clock
        const auto* cap = std::get_if<config::CapFault>(&rule.fault);
        if (cap == nullptr) {
            if (!program_given) {
                s.set_rule_program(program_);  // only a session some rule applies to holds it
                program_given = true;
            }
            s.apply_rule(&rule, cfg_);
            continue;
        }
        bool slot = false;
        {
            std::lock_guard<std::mutex> lock(shared_->mu);
            uint64_t& taken = shared_->cap_active[rule.name];
            if (taken < cap->max) {
                ++taken;
                slot = true;
            }
        }
        if (slot) {
            s.take_slot(rule.name);
            continue;
        }
        if (!record_fault(rule)) continue;  // limit reached: the cap no longer applies
        count_rejected("cap");
        if (cap->over == config::CapFault::Over::hold) {
            {
                std::lock_guard<std::mutex> lock(shared_->mu);
                shared_->cap_waiting[rule.name].push_back(ProxyShared::Held{this, queue_, s.id()});
            }
            // Logged once queued: a client that saw the line and connects again (maybe on
            // another loop) queues behind this one.
            s.log_fault(rule);
            return Admission::hold;
        }
        s.log_fault(rule);
        s.reject(*cap);
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
    program_ = faults::RuleProgram::of(cfg_);
    if (!replica_) {
        // A replaced rule is a new rule: its `limit` counts afresh (faults_total keeps
        // counting).
        if (!replaced.empty()) {
            std::lock_guard<std::mutex> lock(shared_->mu);
            shared_->fired.erase(replaced);
        }
        // Declares series for new rules; not for a retired instance (a proxy removed by a
        // reload has no series left to declare, a re-bound one's successor declares them).
        if (!retired_) set_metrics(metrics_);
        start_rule_clock();  // the new rules may include refuse/restart
    }
    // Rules deleted, disabled or replaced leave open connections: their stages are lifted and
    // their pending triggers never fire.
    for (const auto& was : old->rules) {
        if (!was.enabled) continue;
        auto now = std::find_if(cfg_->rules.begin(), cfg_->rules.end(),
                                [&](const config::Rule& r) { return r.name == was.name; });
        if (now == cfg_->rules.end() || !now->enabled || was.name == replaced)
            for (auto& [id, s] : sessions_) s->lift_rule(was.name);
    }
    // Rules that are new, or newly enabled, also hit open connections (`existing`).
    for (const auto& rule : cfg_->rules) {
        if (!rule.match.existing || !rule.enabled) continue;
        auto was = std::find_if(old->rules.begin(), old->rules.end(),
                                [&](const config::Rule& r) { return r.name == rule.name; });
        if (was != old->rules.end() && was->enabled && rule.name != replaced) continue;
        apply_to_open_sessions(rule);
    }
    each_replica([&](ProxyServer& r) { r.update_config(cfg_, replaced); });
    if (!replica_) {
        // A cap that went, was switched off or now allows more admits those it holds. Last:
        // every loop has the new rules, and rules just applied to open connections (held ones
        // included) are not matched twice.
        for (const auto& was : old->rules) {
            if (!std::holds_alternative<config::CapFault>(was.fault)) continue;
            const config::Rule* now = current_rule(was.name);
            const auto* cap = now != nullptr && now->enabled
                                  ? std::get_if<config::CapFault>(&now->fault)
                                  : nullptr;
            admit_waiting(was.name, cap != nullptr ? cap->max : UINT64_MAX);
        }
    }
    // Switching refuse on or off acts now, not at the next tick.
    if (clock_open_) on_rule_tick();
}

void ProxyServer::take_rules(const std::vector<config::Rule>& rules, const std::string& replaced) {
    auto c = std::make_shared<config::Proxy>(*cfg_);
    c->rules = rules;
    update_config(std::move(c), replaced);
}

void ProxyServer::apply_to_open_sessions(const config::Rule& rule) {
    if (std::holds_alternative<config::CapFault>(rule.fault) ||
        std::holds_alternative<config::RefuseFault>(rule.fault) ||
        std::holds_alternative<config::RestartFault>(rule.fault) ||
        std::holds_alternative<config::DropSynFault>(rule.fault))
        return;  // proxy-wide: they act on new connections and the listener
    config::Duration now = since_start();
    std::shared_ptr<const faults::RuleProgram> one;  // compiled once, for all of them
    for (auto& [id, s] : sessions_) {
        if (s->ending()) continue;
        if (!faults::rule_matches(rule, s->facts(now), seed_, fired(rule.name))) continue;
        if (!one) one = faults::RuleProgram::of_rule(*cfg_, rule);
        s->apply_runtime_rule(one);
    }
}

void ProxyServer::release_slots(const std::vector<std::string>& rules) {
    for (const auto& name : rules) release_slot(name);
}

void ProxyServer::release_slot(const std::string& name) {
    // A loop, not a recursion: every waiting client that is gone meanwhile passes the slot on,
    // and thousands may be (a cap holding 10,000 clients that all leave).
    for (;;) {
        std::optional<ProxyShared::Held> next;
        {
            std::lock_guard<std::mutex> lock(shared_->mu);
            uint64_t& taken = shared_->cap_active[name];
            if (taken > 0) --taken;
            // The slot goes to the longest-waiting client, on whichever loop it waits.
            auto it = shared_->cap_waiting.find(name);
            if (it != shared_->cap_waiting.end() && !it->second.empty()) {
                next = it->second.front();
                it->second.pop_front();
                ++taken;
            }
        }
        if (!next || hand_slot(name, *next)) return;
    }
}

void ProxyServer::admit_waiting(const std::string& name, uint64_t max) {
    std::vector<ProxyShared::Held> admitted;
    {
        std::lock_guard<std::mutex> lock(shared_->mu);
        auto it = shared_->cap_waiting.find(name);
        if (it == shared_->cap_waiting.end()) return;
        // Each takes a slot as if one had freed: it gives it back when it ends.
        uint64_t& taken = shared_->cap_active[name];
        while (!it->second.empty() && taken < max) {
            admitted.push_back(it->second.front());
            it->second.pop_front();
            ++taken;
        }
        if (it->second.empty()) shared_->cap_waiting.erase(it);
    }
    for (const auto& held : admitted)
        if (!hand_slot(name, held)) release_slot(name);
}

bool ProxyServer::hand_slot(const std::string& name, const ProxyShared::Held& next) {
    if (next.server == this) return admit_held(name, next.session);
    std::weak_ptr<ProxyShared> weak = shared_;
    next.queue->post([weak, held = next, name] {
        auto shared = weak.lock();
        if (!shared) return;
        bool live;
        {
            // Instances are freed on their own loop (this thread): still listed, still alive.
            std::lock_guard<std::mutex> lock(shared->mu);
            live = std::find(shared->instances.begin(), shared->instances.end(), held.server) !=
                   shared->instances.end();
        }
        if (live && !held.server->admit_held(name, held.session)) held.server->release_slot(name);
    });
    return true;  // that loop passes the slot on if the client is gone
}

bool ProxyServer::admit_held(const std::string& rule, uint64_t id) {
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second->ending()) return false;
    Session& s = *it->second;
    s.take_slot(rule);
    // The rules after the cap apply as to any connection, with what was known at accept
    // (another cap among them may hold it again, or turn it away). A cap since deleted no
    // longer marks the place: then every rule is matched. Either way not those applied while
    // it waited (`existing`), nor caps whose slot it holds.
    const config::Rule* cap = current_rule(rule);
    size_t from = cap != nullptr ? static_cast<size_t>(cap - cfg_->rules.data()) + 1 : 0;
    std::vector<std::string> passed = s.rule_names();
    passed.insert(passed.end(), s.slots().begin(), s.slots().end());
    Admission a = match_in_order(s, s.facts(s.accepted_at()), from, passed);
    if (a == Admission::admit) s.admit();
    return true;
}

bool ProxyServer::record_fault(const config::Rule& rule) {
    // A pending trigger of a rule since deleted or disabled (API, reload) no longer fires.
    const config::Rule* cur = current_rule(rule.name);
    if (cur == nullptr || !cur->enabled) return false;
    {
        std::lock_guard<std::mutex> lock(shared_->mu);
        uint64_t& n = shared_->fired[rule.name];
        if (rule.match.limit && n >= *rule.match.limit) return false;
        ++n;
    }
    if (metrics_ != nullptr) metrics_->fault(name(), rule.name, config::fault_name(rule.fault));
    return true;
}

bool ProxyServer::is_own_listener(const sockaddr_storage& target) const {
    return same_endpoint_or_wildcard(bound_, target);
}

void ProxyServer::count_suppressed(const config::Rule& rule, uint64_t conn, const char* why) {
    log::info("fault suppressed", {{"proxy", name()},
                                   {"conn", conn},
                                   {"rule", rule.name},
                                   {"fault", config::fault_name(rule.fault)},
                                   {"reason", why}});
    if (metrics_ != nullptr)
        metrics_->fault_suppressed(name(), rule.name, config::fault_name(rule.fault));
    if (events_ != nullptr) {
        Event e;
        e.kind = "suppressed";
        e.proxy = name();
        e.conn = conn;
        e.rule = rule.name;
        e.fault = config::fault_name(rule.fault);
        e.detail = why;
        events_->add(std::move(e));
    }
}

void ProxyServer::fault_applied(const Session& s, std::string_view rule, const char* fault) {
    if (events_ == nullptr) return;
    Event e;
    e.kind = "fault";
    e.proxy = name();
    e.conn = s.id();
    e.client = s.client_addr();
    e.rule = rule;
    e.fault = fault;
    e.bytes_up = s.bytes_up();
    e.bytes_down = s.bytes_down();
    events_->add(std::move(e));
}

void ProxyServer::count_api_fault(const char* fault) {
    if (metrics_ != nullptr) metrics_->fault(name(), kApiRule, fault);
}

void ProxyServer::count_rejected(const char* reason) {
    if (metrics_ != nullptr) metrics_->rejected(name(), reason);
}

void ProxyServer::count_upstream_error(const char* kind) {
    if (metrics_ != nullptr) metrics_->upstream_error(name(), kind);
}

void ProxyServer::set_metrics(Metrics* m) {
    metrics_ = m;
    if (metrics_ == nullptr) return;
    metrics_->declare_proxy(name());
    if (series_.connections == nullptr) series_ = metrics_->proxy_series(name());  // see ~
    std::vector<Metrics::RuleLabels> rules;
    for (const auto& r : cfg_->rules) rules.emplace_back(r.name, config::fault_name(r.fault));
    metrics_->declare_rules(name(), rules);
    // Faults the admin API applies to one connection, so a dashboard finds them at 0.
    for (const auto& k : faults::fault_kinds())
        if (k.scope != faults::Scope::proxy)
            metrics_->declare_fault(name(), kApiRule, k.name.data());
}

void ProxyServer::sync_metrics(size_t draining) {
    if (metrics_ == nullptr) return;
    uint64_t up = bytes_up_.load(std::memory_order_relaxed);
    uint64_t down = bytes_down_.load(std::memory_order_relaxed);
    for (const auto& r : replicas_) {
        up += r.server->bytes_up_.load(std::memory_order_relaxed);
        down += r.server->bytes_down_.load(std::memory_order_relaxed);
    }
    metrics_->bytes(name(), "upstream", up - synced_up_);
    metrics_->bytes(name(), "downstream", down - synced_down_);
    synced_up_ = up;
    synced_down_ = down;
    if (retired_) return;  // a retiring instance's successor reports the live values
    metrics_->set_active(name(), static_cast<double>(active() + draining));
    config::Duration now = since_start();
    for (const auto& r : cfg_->rules) {
        bool active = faults::rule_active(r, now, fired(r.name));
        metrics_->set_rule_active(name(), r.name, active);
    }
}

uint64_t ProxyServer::fired(const std::string& rule) const {
    std::lock_guard<std::mutex> lock(shared_->mu);
    auto it = shared_->fired.find(rule);
    return it == shared_->fired.end() ? 0 : it->second;
}

void ProxyServer::count_bytes(config::Direction dir, size_t n) {
    // Only this loop writes: a relaxed load and store, no locked instruction per chunk.
    std::atomic<uint64_t>& c = dir == config::Direction::upstream ? bytes_up_ : bytes_down_;
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

void sync_all_metrics(const std::vector<ProxyServer*>& servers) {
    std::map<std::string, size_t> draining;
    for (ProxyServer* p : servers)
        if (p->retired()) draining[p->name()] += p->active();
    for (ProxyServer* p : servers) {
        auto it = draining.find(p->name());
        p->sync_metrics(it != draining.end() && !p->retired() ? it->second : 0);
    }
}

}  // namespace tcpfault

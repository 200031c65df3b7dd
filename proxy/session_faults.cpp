// The fault half of Session: applying rules to a connection, scanning triggers, and what each
// fault does to the two sockets. The plain data path lives in session.cpp and pipe.cpp.
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>

#include <algorithm>

#include "net/uv_util.hpp"
#include "observe/log.hpp"
#include "proxy/proxy_server.hpp"
#include "proxy/session.hpp"

namespace tcpfault {

namespace {
// Reset with flush waits for the peer to acknowledge what was forwarded; a peer that never
// reads (zero window) must not keep the connection alive forever.
constexpr uint64_t kFlushBoundMs = 3000;
constexpr uint64_t kFlushPollMs = 1;

template <class... Ts>
struct overloaded : Ts... {
    using Ts::operator()...;
};
// Spelled out: clang before 17 lacks C++20's implicit deduction guides for aggregates.
template <class... Ts>
overloaded(Ts...) -> overloaded<Ts...>;

bool hits_client(config::Target t) {
    return t != config::Target::server;
}
bool hits_server(config::Target t) {
    return t != config::Target::client;
}

// A stall that holds does not read, so it cannot see a FIN, and one that drops keeps the FIN it
// read to itself: the kernel's TCP state says whether the peer has closed (or reset) its end.
constexpr uint64_t kStallCheckMs = 1000;
bool peer_closed(Endpoint& e) {
    if (!e.usable()) return true;
    int fd = tcp_fd(e.tcp());
    tcp_info info{};
    socklen_t len = sizeof info;
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return false;
    switch (info.tcpi_state) {
        case TCP_CLOSE_WAIT:
        case TCP_LAST_ACK:
        case TCP_CLOSING:
        case TCP_TIME_WAIT:
        case TCP_CLOSE:
            return true;
        default:
            return false;
    }
}

// Bytes sent but not yet acknowledged by the peer (Linux SIOCOUTQ).
int unacked_bytes(uv_tcp_t* tcp) {
    int fd = tcp_fd(tcp);
    int n = 0;
    if (fd < 0 || ioctl(fd, SIOCOUTQ, &n) != 0) return 0;
    return n;
}
}  // namespace

uv_loop_t* Session::loop() const {
    return server_.loop();
}

void Session::apply_rule(const config::Rule* rule) {
    rules_.push_back(AppliedRule{rule, faults::Trigger(rule->when ? &*rule->when : nullptr)});
    recount_watchers();
    // Rules added to an open connection start now; at accept they start once connected.
    if (connected_) {
        size_t i = rules_.size() - 1;
        if (rules_[i].trigger.start()) fire(i);
        arm_rule_timers();
    }
}

void Session::apply_runtime_rule(const config::Rule* rule,
                                 std::shared_ptr<const config::Proxy> snapshot) {
    if (ending()) return;
    if (snapshot != cfg_ &&
        std::find(keep_alive_.begin(), keep_alive_.end(), snapshot) == keep_alive_.end())
        keep_alive_.push_back(std::move(snapshot));
    rules_.push_back(AppliedRule{rule, faults::Trigger(rule->when ? &*rule->when : nullptr)});
    recount_watchers();
    if (!connected_) return;  // still connecting: starts with the others in start_rules()
    size_t i = rules_.size() - 1;
    uint64_t seen = rule->when && rule->when->direction == config::Direction::downstream
                        ? down_.forwarded()
                        : up_.forwarded();
    auto age = std::chrono::milliseconds(uv_now(loop()) - started_ms_);
    rules_[i].trigger.catch_up(seen, age);
    if (rules_[i].trigger.start()) fire(i);
    arm_rule_timers();
    recount_watchers();
}

void Session::start_rules() {
    for (size_t i = 0; i < rules_.size() && !ending(); ++i)
        if (rules_[i].trigger.start()) fire(i);
    arm_rule_timers();
}

void Session::recount_watchers() {
    watching_[0] = watching_[1] = 0;
    for (const auto& r : rules_) {
        if (r.trigger.watches(config::Direction::upstream)) ++watching_[0];
        if (r.trigger.watches(config::Direction::downstream)) ++watching_[1];
    }
}

Session::ScanResult Session::scan(config::Direction dir, const char* p, size_t n) {
    // First find the earliest event, then advance the triggers exactly that far, so a trigger
    // never counts bytes that a fault firing earlier holds or discards. Triggers that can save
    // their state are fed for real and rolled back only when something fires or holds inside
    // the chunk (rare): a chunk no rule acts on is scanned once, with no copy. `line`
    // triggers are probed on copies.
    size_t best = n;
    bool any = false;
    bool hold = false;
    saved_.clear();
    for (size_t i = 0; i < rules_.size(); ++i) {
        faults::Trigger& t = rules_[i].trigger;
        if (!t.watches(dir)) continue;
        std::optional<faults::Trigger> copy;
        if (t.can_save())
            saved_.emplace_back(i, t.save());
        else
            copy.emplace(t);
        auto step = copy ? copy->feed(p, n) : t.feed(p, n);
        if ((step.fire || step.hold) &&
            (!any || step.pass < best || (step.pass == best && step.fire))) {
            best = step.pass;
            any = true;
            hold = step.hold && !step.fire;
        }
    }
    if (!any) {
        // Nothing fires or holds: the saveable triggers have taken the whole chunk already.
        for (auto& r : rules_)
            if (r.trigger.watches(dir) && !r.trigger.can_save()) r.trigger.feed(p, n);
        arm_rule_timers();
        recount_watchers();
        return {n, false, false};
    }
    for (const auto& [i, state] : saved_) rules_[i].trigger.restore(state);
    for (size_t i = 0; i < rules_.size(); ++i) {
        auto& r = rules_[i];
        if (!r.trigger.watches(dir)) continue;
        auto step = r.trigger.feed(p, best);
        if (step.fire) pending_fire_.push_back(i);
    }
    arm_rule_timers();
    recount_watchers();
    return {best, !pending_fire_.empty(), hold && pending_fire_.empty()};
}

void Session::fire_pending() {
    std::vector<size_t> now;
    now.swap(pending_fire_);
    for (size_t i : now) {
        if (ending()) break;
        fire(i);
    }
}

void Session::fire(size_t i) {
    AppliedRule& r = rules_[i];
    if (r.done || ending()) return;
    r.done = true;
    r.deadline_ms = 0;
    const config::Rule& rule = *r.rule;
    // `limit` counts injections, so two connections racing for the last one cannot both fire.
    if (!server_.record_fault(rule)) return;
    log_fault(rule);
    std::visit(overloaded{
                   [&](const config::ResetFault& f) { fault_reset(f.to, f.flush); },
                   [&](const config::CloseFault& f) { fault_close(f.to, f.then); },
                   [&](const config::StallFault& f) { fault_stall(f, i); },
                   [&](const config::LatencyFault& f) {
                       each_pipe(f.direction, [&](Pipe& p) { p.add_latency(f.delay, f.jitter); });
                   },
                   [&](const config::BandwidthFault& f) {
                       each_pipe(f.direction, [&](Pipe& p) { p.set_bandwidth(f.rate); });
                   },
                   [&](const config::SliceFault& f) {
                       each_pipe(f.direction,
                                 [&](Pipe& p) { p.set_slice(f.min_size, f.max_size, f.delay); });
                   },
                   [&](const config::ClampFault& f) { fault_clamp(f); },
                   [&](const config::IdleFault& f) {
                       idle_ = &f;
                       last_activity_ms_ = uv_now(loop());
                       idle_deadline_ = last_activity_ms_ + f.timeout.count() / 1000;
                       rearm_fault_timer();
                   },
                   // Proxy-wide faults act in ProxyServer, never on one connection's bytes.
                   [&](const config::CapFault&) {},
                   [&](const config::RefuseFault&) {},
                   [&](const config::RestartFault&) {},
                   [&](const config::SlowCloseFault& f) {
                       each_pipe(f.direction, [&](Pipe& p) { p.set_fin_delay(f.delay); });
                   },
               },
               rule.fault);
}

void Session::log_fault(const config::Rule& rule) {
    log::info("fault injected", {{"proxy", cfg_->name},
                                 {"conn", id_},
                                 {"client", client_addr_},
                                 {"rule", rule.name},
                                 {"fault", config::fault_name(rule.fault)},
                                 {"bytes_up", up_.forwarded()},
                                 {"bytes_down", down_.forwarded()}});
}

void Session::each_pipe(config::Direction d, const std::function<void(Pipe&)>& fn) {
    if (d != config::Direction::downstream) fn(up_);
    if (d != config::Direction::upstream) fn(down_);
}

void Session::arm_rule_timers() {
    bool changed = false;
    uint64_t now = uv_now(loop());
    for (auto& r : rules_) {
        if (!r.trigger.wants_timer()) continue;
        r.trigger.timer_armed();
        r.deadline_ms = now + static_cast<uint64_t>((r.trigger.time_needed().count() + 999) / 1000);
        changed = true;
    }
    if (changed) rearm_fault_timer();
}

void Session::rearm_fault_timer() {
    if (closing_) return;
    uint64_t next = 0;
    auto consider = [&](uint64_t d) {
        if (d != 0 && (next == 0 || d < next)) next = d;
    };
    for (const auto& r : rules_)
        if (!r.done) consider(r.deadline_ms);
    for (const auto& st : stalls_) consider(st.deadline_ms);
    consider(stall_check_);
    consider(idle_deadline_);
    if (flushing_) consider(uv_now(loop()) + kFlushPollMs);
    if (next == 0) {
        if (fault_timer_open_) uv_timer_stop(&fault_timer_);
        return;
    }
    if (!fault_timer_open_) {
        uv_timer_init(loop(), &fault_timer_);
        fault_timer_.data = this;
        fault_timer_open_ = true;
        ++live_;
    }
    uint64_t now = uv_now(loop());
    uv_timer_start(&fault_timer_, on_fault_timer, next > now ? next - now : 0, 0);
}

void Session::on_fault_timer(uv_timer_t* t) {
    auto* self = static_cast<Session*>(t->data);
    uint64_t now = uv_now(self->loop());
    if (self->flushing_) {
        self->finish_reset();
        if (self->closing_) return;
    }
    for (size_t i = 0; i < self->rules_.size() && !self->ending(); ++i) {
        auto& r = self->rules_[i];
        if (r.done || r.deadline_ms == 0 || r.deadline_ms > now) continue;
        r.deadline_ms = 0;
        if (r.trigger.time_reached()) {
            self->fire(i);
            // A stream held at the byte threshold moves on once its fault has acted.
            if (!self->ending()) {
                self->up_.release_trigger_hold();
                self->down_.release_trigger_hold();
            }
        }
        self->recount_watchers();
    }
    if (!self->ending() && self->stall_check_ != 0 && self->stall_check_ <= now) {
        // Nobody is left on either side: end the session instead of stalling forever.
        if (peer_closed(self->client_) && peer_closed(self->upstream_)) {
            self->close_all();
            return;
        }
        self->stall_check_ = now + kStallCheckMs;
    }
    // Each stall ends on its own; the earliest first (a reset or close ends them all).
    while (!self->ending()) {
        size_t due = self->stalls_.size();
        for (size_t k = 0; k < self->stalls_.size(); ++k) {
            uint64_t d = self->stalls_[k].deadline_ms;
            if (d != 0 && d <= now &&
                (due == self->stalls_.size() || d < self->stalls_[due].deadline_ms))
                due = k;
        }
        if (due == self->stalls_.size()) break;
        self->end_stall(due);
    }
    if (!self->ending() && self->idle_ != nullptr && self->idle_deadline_ != 0) {
        uint64_t due = self->last_activity_ms_ + self->idle_->timeout.count() / 1000;
        if (due > now) {
            self->idle_deadline_ = due;
        } else {
            self->idle_deadline_ = 0;
            log::info("idle timeout", {{"proxy", self->cfg_->name}, {"conn", self->id_}});
            switch (self->idle_->action) {
                case config::IdleFault::Action::reset:
                    // A firewall that forgot the flow answers the next segment with RST.
                    self->up_.set_mode(Pipe::Mode::reset_on_segment);
                    self->down_.set_mode(Pipe::Mode::reset_on_segment);
                    break;
                case config::IdleFault::Action::drop:
                    self->up_.set_mode(Pipe::Mode::drop);
                    self->down_.set_mode(Pipe::Mode::drop);
                    break;
                case config::IdleFault::Action::close:
                    self->fault_close(config::Target::both, config::CloseFault::Then::reset);
                    break;
            }
        }
    }
    self->rearm_fault_timer();
}

void Session::on_activity() {
    if (idle_ != nullptr) last_activity_ms_ = uv_now(loop());
}

// reset: RST to the targets. With flush, bytes already forwarded are first acknowledged by
// the peer (kernel send queue empty), so "reset after exactly N bytes" means N were received.
void Session::fault_reset(config::Target to, bool flush) {
    terminal_ = true;
    reset_to_ = to;
    up_.discard_pending(flush);
    down_.discard_pending(flush);
    client_.stop_reading();
    upstream_.stop_reading();
    if (!flush) {
        flush_deadline_ = uv_now(loop());
        finish_reset();
        return;
    }
    flushing_ = true;
    flush_deadline_ = uv_now(loop()) + kFlushBoundMs;
    finish_reset();
    if (!closing_) rearm_fault_timer();
}

void Session::finish_reset() {
    // A side is flushed once the bytes let through toward it (shaped ones included) were
    // written and acknowledged by its peer.
    auto drained = [](Endpoint& e, const Pipe& into) {
        return !e.usable() ||
               (into.held_bytes() == 0 && e.queued_bytes() == 0 && unacked_bytes(e.tcp()) == 0);
    };
    // Shaped bytes leave on their own schedule; the bound is for a peer that stopped reading.
    if ((hits_client(reset_to_) && down_.held_bytes() > 0) ||
        (hits_server(reset_to_) && up_.held_bytes() > 0))
        flush_deadline_ = std::max(flush_deadline_, uv_now(loop()) + kFlushBoundMs);
    bool ready = uv_now(loop()) >= flush_deadline_ ||
                 ((!hits_client(reset_to_) || drained(client_, down_)) &&
                  (!hits_server(reset_to_) || drained(upstream_, up_)));
    if (!ready) return;
    flushing_ = false;
    closing_ = true;
    close_pipe_timers();
    if (hits_client(reset_to_))
        client_.reset();
    else
        client_.close();
    if (hits_server(reset_to_))
        upstream_.reset();
    else
        upstream_.close();
    handle_closed();
}

void Session::on_write_drained() {
    if (flushing_) finish_reset();
}

// close: FIN to both sides after what was already forwarded. The targets then get the
// `then` behaviour (RST on their next bytes, or silent discard: half-open); the other side's
// further bytes are dropped. The session ends when both sides have closed (or on that RST).
void Session::fault_close(config::Target to, config::CloseFault::Then then) {
    terminal_ = true;
    close_fault_ = true;
    up_.discard_pending(true);
    down_.discard_pending(true);
    Pipe::Mode target_mode =
        then == config::CloseFault::Then::reset ? Pipe::Mode::reset_on_data : Pipe::Mode::drop;
    up_.set_mode(hits_client(to) ? target_mode : Pipe::Mode::drop);
    down_.set_mode(hits_server(to) ? target_mode : Pipe::Mode::drop);
    // FIN after what was already let through, shaped bytes included.
    up_.finish_with_fin();
    down_.finish_with_fin();
    if (up_.source_eof()) on_eof_after_close(client_);
    if (down_.source_eof()) on_eof_after_close(upstream_);
}

void Session::on_data_after_close(Endpoint& who) {
    (void)who;
    if (closing_) return;
    closing_ = true;
    close_pipe_timers();
    client_.reset();
    upstream_.reset();
    handle_closed();
}

void Session::on_eof_after_close(Endpoint& who) {
    who.close();
    if (!client_.usable() && !upstream_.usable()) close_all();
}

// Every stall counts on its own: a direction moves again only once no stall holds it. An
// endless stall is the only one that cannot end by itself: while one is in force, the session
// is reaped once both peers have closed (TCP state), since nothing can ever pass again.
void Session::fault_stall(const config::StallFault& f, size_t rule) {
    uint64_t now = uv_now(loop());
    uint64_t deadline = 0;
    if (f.duration)
        deadline =
            now + std::max<uint64_t>(1, static_cast<uint64_t>((f.duration->count() + 999) / 1000));
    stalls_.push_back(ActiveStall{f, rule, deadline});
    each_pipe(f.direction, [&](Pipe& p) { p.stall(f.mode, f.pass_close); });
    if (deadline == 0 && stall_check_ == 0) stall_check_ = now + kStallCheckMs;
    rearm_fault_timer();
}

void Session::end_stall(size_t k) {
    ActiveStall st = stalls_[k];
    stalls_.erase(stalls_.begin() + static_cast<std::ptrdiff_t>(k));
    const config::StallFault& f = st.fault;
    const char* then = f.then == config::StallFault::Then::resume  ? "resume"
                       : f.then == config::StallFault::Then::reset ? "reset"
                                                                   : "close";
    log::info("stall ended", {{"proxy", cfg_->name},
                              {"conn", id_},
                              {"rule", rules_[st.rule].rule->name},
                              {"then", then}});
    switch (f.then) {
        case config::StallFault::Then::resume:
            // Lifts this stall only: another one may still hold either direction.
            each_pipe(f.direction, [&](Pipe& p) {
                if (!ending()) p.unstall(f.mode, f.pass_close);
            });
            break;
        case config::StallFault::Then::reset:
            fault_reset(config::Target::both, false);
            break;
        case config::StallFault::Then::close:
            fault_close(config::Target::both, config::CloseFault::Then::reset);
            break;
    }
}

void Session::apply_clamp(Endpoint& e, bool server_side, const config::ClampFault& f) {
    int fd = tcp_fd(e.tcp());
    if (fd < 0) return;
    const char* side = server_side ? "server" : "client";
    auto set = [&](int level, int opt, uint64_t v, const char* name) {
        int x = static_cast<int>(v);
        if (setsockopt(fd, level, opt, &x, sizeof x) != 0) {
            log::warn("clamp: setsockopt failed",
                      {{"proxy", cfg_->name}, {"conn", id_}, {"side", side}, {"option", name}});
            return;
        }
        // What the kernel really holds (it doubles SO_*BUF and enforces minimums).
        int got = 0;
        socklen_t len = sizeof got;
        getsockopt(fd, level, opt, &got, &len);
        log::debug("clamp applied", {{"proxy", cfg_->name},
                                     {"conn", id_},
                                     {"side", side},
                                     {"option", name},
                                     {"requested", v},
                                     {"effective", got}});
    };
    if (f.sndbuf) set(SOL_SOCKET, SO_SNDBUF, *f.sndbuf, "sndbuf");
    if (f.rcvbuf) set(SOL_SOCKET, SO_RCVBUF, *f.rcvbuf, "rcvbuf");
    if (f.window) set(IPPROTO_TCP, TCP_WINDOW_CLAMP, *f.window, "window");
    if (f.mss && server_side) set(IPPROTO_TCP, TCP_MAXSEG, *f.mss, "mss");
    if (f.read_size) e.set_max_read(*f.read_size);
}

void Session::fault_clamp(const config::ClampFault& f) {
    if (hits_client(f.side)) apply_clamp(client_, false, f);
    if (hits_server(f.side)) apply_clamp(upstream_, true, f);
}

bool Session::has_preconnect_clamp() const {
    if (outgoing_ != &upstream_) return false;
    for (const auto& r : rules_) {
        const auto* f = std::get_if<config::ClampFault>(&r.rule->fault);
        if (f != nullptr && !r.rule->when && hits_server(f->side)) return true;
    }
    return false;
}

void Session::close_pipe_timers() {
    up_.close_timer();
    down_.close_timer();
    if (fault_timer_open_) {
        fault_timer_open_ = false;
        uv_close(reinterpret_cast<uv_handle_t*>(&fault_timer_), on_timer_closed);
    }
}

}  // namespace tcpfault

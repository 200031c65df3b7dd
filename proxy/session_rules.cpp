// The rule half of Session: applying rules to a connection, scanning their triggers, firing
// faults (each fault's behaviour is in its own faults/<name>.cpp), lifting rules, and the
// faults::Connection interface faults act through.
#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <algorithm>

#include "faults/fault_list.hpp"
#include "observe/log.hpp"
#include "proxy/session.hpp"

namespace tcpfault {

faults::Trigger* Session::AppliedRule::trigger_for(config::Direction d) {
    if (downstream && d == config::Direction::downstream) return &*downstream;
    return trigger.watches(d) ? &trigger : nullptr;
}

void Session::apply_rule(const config::Rule* rule) {
    const config::When* when = rule->when ? &*rule->when : nullptr;
    bool both = when != nullptr && when->direction == config::Direction::both;
    AppliedRule a{rule, faults::Trigger(when), std::nullopt};
    if (both) a.downstream.emplace(when, config::Direction::downstream);
    rules_.push_back(std::move(a));
    recount_watchers();
}

bool Session::start_rule(size_t i, bool catch_up) {
    AppliedRule& r = rules_[i];
    bool now = false;
    for (faults::Trigger* t : {&r.trigger, r.downstream ? &*r.downstream : nullptr}) {
        if (t == nullptr) continue;
        // A rule added at runtime counts from the connection's start: a threshold already
        // passed fires at once.
        if (catch_up)
            t->catch_up(pipe(t->direction()).forwarded(),
                        std::chrono::milliseconds(uv_now(loop()) - started_ms_));
        now = t->start() || now;
    }
    return now;
}

void Session::apply_runtime_rule(const config::Rule* rule,
                                 std::shared_ptr<const config::Proxy> snapshot) {
    if (ending_) return;
    if (snapshot != cfg_ &&
        std::find(keep_alive_.begin(), keep_alive_.end(), snapshot) == keep_alive_.end())
        keep_alive_.push_back(std::move(snapshot));
    apply_rule(rule);
    if (!connected_) return;  // still connecting: starts with the others in start_rules()
    size_t i = rules_.size() - 1;
    if (start_rule(i, true)) fire(i);
    arm_rule_timers();
    recount_watchers();
}

void Session::start_rules() {
    for (size_t i = 0; i < rules_.size() && !ending_; ++i)
        if (start_rule(i, false)) fire(i);
    arm_rule_timers();
}

void Session::lift_rule(const std::string& name) {
    bool lifted = false;
    for (auto& r : rules_) {
        if (r.rule->name != name || r.done) continue;
        r.done = true;  // a pending trigger of it never fires
        r.deadline_us = 0;
        lifted = true;
    }
    up_.lift(name);
    down_.lift(name);
    release_packet_drops(name);
    if (!lifted) return;
    recount_watchers();
    rearm();
    // A stream this rule's trigger held at its byte threshold moves on.
    up_.release_trigger_hold();
    down_.release_trigger_hold();
}

std::vector<std::string> Session::rule_names() const {
    std::vector<std::string> out;
    for (const auto& r : rules_) out.push_back(r.rule->name);
    return out;
}

void Session::recount_watchers() {
    watching_[0] = watching_[1] = 0;
    for (auto& r : rules_) {
        if (r.done) continue;
        if (r.trigger_for(config::Direction::upstream) != nullptr) ++watching_[0];
        if (r.trigger_for(config::Direction::downstream) != nullptr) ++watching_[1];
    }
}

Pipe::ScanResult Session::scan(config::Direction dir, const char* p, size_t n) {
    // First find the earliest event, then advance the triggers exactly that far, so a trigger
    // never counts bytes that a fault firing earlier holds or discards. Triggers that can save
    // their state are fed for real and rolled back only when something fires or holds inside
    // the chunk (rare): a chunk no rule acts on is scanned once, with no copy. `line`
    // triggers are probed on copies.
    size_t best = n;
    bool any = false;
    bool hold = false;
    saved_.clear();
    for (auto& r : rules_) {
        faults::Trigger* t = r.done ? nullptr : r.trigger_for(dir);
        if (t == nullptr) continue;
        std::optional<faults::Trigger> copy;
        if (t->can_save())
            saved_.emplace_back(t, t->save());
        else
            copy.emplace(*t);
        auto step = copy ? copy->feed(p, n) : t->feed(p, n);
        if ((step.fire || step.hold) &&
            (!any || step.pass < best || (step.pass == best && step.fire))) {
            best = step.pass;
            any = true;
            hold = step.hold && !step.fire;
        }
    }
    if (!any) {
        // Nothing fires or holds: the saveable triggers have taken the whole chunk already.
        for (auto& r : rules_) {
            faults::Trigger* t = r.done ? nullptr : r.trigger_for(dir);
            if (t != nullptr && !t->can_save()) t->feed(p, n);
        }
        arm_rule_timers();
        recount_watchers();
        return {n, false, false};
    }
    for (const auto& [t, state] : saved_) t->restore(state);
    for (size_t i = 0; i < rules_.size(); ++i) {
        auto& r = rules_[i];
        faults::Trigger* t = r.done ? nullptr : r.trigger_for(dir);
        if (t == nullptr) continue;
        auto step = t->feed(p, best, best < n);
        if (step.fire) pending_fire_.push_back(i);
    }
    arm_rule_timers();
    recount_watchers();
    return {best, !pending_fire_.empty(), hold && pending_fire_.empty()};
}

void Session::fire_pending() {
    std::vector<size_t> now;
    now.swap(pending_fire_);
    for (size_t i : now) fire(i);
}

void Session::fire(size_t i) {
    AppliedRule& r = rules_[i];
    if (r.done) return;
    r.done = true;
    r.deadline_us = 0;
    const config::Rule& rule = *r.rule;
    if (ending_) {
        // Too late to act: said, not dropped silently.
        server_.count_suppressed(rule, id_, "connection already ending");
        return;
    }
    // `limit` counts injections, so two connections racing for the last one cannot both fire.
    if (!server_.record_fault(rule)) return;
    log_fault(rule);
    faults::apply_fault(rule.fault, *this, rule.name);
}

void Session::log_fault(const config::Rule& rule) {
    log_injected(rule.name, config::fault_name(rule.fault));
}

void Session::arm_rule_timers() {
    bool changed = false;
    uint64_t now = now_us();
    for (auto& r : rules_) {
        for (faults::Trigger* t : {&r.trigger, r.downstream ? &*r.downstream : nullptr}) {
            if (t == nullptr || !t->wants_timer()) continue;
            t->timer_armed();
            r.deadline_us = now + static_cast<uint64_t>(t->time_needed().count());
            changed = true;
        }
    }
    if (changed) rearm();
}

bool Session::has_preconnect_clamp() const {
    if (outgoing_ != &upstream_) return false;
    for (const auto& r : rules_) {
        const auto* f = std::get_if<config::ClampFault>(&r.rule->fault);
        if (f != nullptr && !r.rule->when && faults::hits_server(f->side)) return true;
    }
    return false;
}

// ---------------------------------------------------------------------------------------------
// faults::Connection

void Session::add_stage(config::Direction d, std::unique_ptr<faults::Stage> s) {
    if (ending_) return;
    pipe(d).add_stage(std::move(s));
    // An endless stage: the session looks now and then whether anyone is left.
    if (reap_check_us_ == 0 && pipe(d).held_endlessly()) {
        reap_check_us_ = now_us() + 1'000'000;
        rearm();
    }
}

int Session::socket_fd(faults::Side s) {
    return endpoint(s).fd();
}

void Session::set_max_read(faults::Side s, size_t n) {
    endpoint(s).set_max_read(n);
}

bool Session::addresses(faults::Side s, sockaddr_storage* local, sockaddr_storage* peer) {
    Endpoint& e = endpoint(s);
    if (!e.usable()) return false;
    int len = sizeof *local;
    if (uv_tcp_getsockname(e.tcp(), reinterpret_cast<sockaddr*>(local), &len) != 0) return false;
    len = sizeof *peer;
    return uv_tcp_getpeername(e.tcp(), reinterpret_cast<sockaddr*>(peer), &len) == 0;
}

uint64_t Session::unacknowledged(faults::Side s) {
    Endpoint& e = endpoint(s);
    if (!e.usable()) return 0;
    int in_kernel = 0;  // sent but unacknowledged, plus not yet sent
    if (e.fd() < 0 || ioctl(e.fd(), SIOCOUTQ, &in_kernel) != 0 || in_kernel < 0) in_kernel = 0;
    return e.queued_bytes() + static_cast<uint64_t>(in_kernel);
}

void Session::keep_packet_drop(std::string_view rule, std::unique_ptr<PacketFilter::Handle> h) {
    if (ending_) return;  // too late: the handle goes at once
    packet_drops_.emplace_back(std::string(rule), std::move(h));
}

void Session::release_packet_drops(std::string_view rule) {
    std::erase_if(packet_drops_, [&](const auto& d) { return d.first == rule; });
}

bool Session::blackholed() const {
    return std::any_of(packet_drops_.begin(), packet_drops_.end(),
                       [](const auto& d) { return d.second->per_10000() == PacketFilter::kAll; });
}

void Session::log_event(std::string_view event, std::string_view rule, std::string_view detail) {
    log::info(event, {{"proxy", cfg_->name}, {"conn", id_}, {"rule", rule}, {"detail", detail}});
}

}  // namespace tcpfault

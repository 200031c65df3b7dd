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

namespace {
// The rules a call into a TriggerSet reports as firing (reused: no allocation per chunk).
thread_local std::vector<uint32_t> t_firing;
}  // namespace

void Session::set_rule_program(std::shared_ptr<const faults::RuleProgram> program) {
    if (rules_.empty()) rules_ = faults::TriggerSet(std::move(program));
}

void Session::apply_rule(const config::Rule* rule,
                         const std::shared_ptr<const config::Proxy>& current) {
    if (rules_.empty()) rules_ = faults::TriggerSet(faults::RuleProgram::of(cfg_));
    long i = rules_.program()->index_of(rule);
    if (i >= 0) {
        rules_.apply(static_cast<size_t>(i));
        return;
    }
    // Not one of this session's config: a rule of a later one.
    apply_runtime_rule(faults::RuleProgram::of_rule(current != nullptr ? *current : *cfg_, *rule));
}

void Session::apply_runtime_rule(std::shared_ptr<const faults::RuleProgram> one) {
    if (ending_) return;
    if (!added_rules_) added_rules_ = std::make_unique<std::vector<faults::TriggerSet>>();
    added_rules_->emplace_back(std::move(one));
    added_rules_->back().apply(0);
    if (!connected_) return;  // still connecting: starts with the others in start_rules()
    // It counts from the connection's start: a threshold already passed fires at once.
    size_t k = rule_sets() - 1;
    uint64_t now = now_us();
    uint64_t since_accept_us = (uv_now(loop()) - started_ms_) * 1000;
    t_firing.clear();
    rule_set(k).start(true, now - std::min(now, since_accept_us), now, offsets(), t_firing);
    fire_all(k, t_firing);
    rearm();
}

void Session::start_rules() {
    uint64_t now = now_us();
    for (size_t k = 0; k < rule_sets() && !ending_; ++k) {
        t_firing.clear();
        rule_set(k).start(false, now, now, offsets(), t_firing);
        fire_all(k, t_firing);
    }
    rearm();
}

void Session::fire_all(size_t set, const std::vector<uint32_t>& rules) {
    // A copy: firing may scan (and so refill the shared list) further down.
    std::vector<uint32_t> now(rules);
    for (uint32_t i : now) {
        if (ending_) break;
        fire(set, i);
    }
}

void Session::lift_rule(const std::string& name) {
    bool lifted = false;  // a pending trigger of it: it never fires
    std::vector<size_t> hit;
    for (size_t k = 0; k < rule_sets(); ++k) {
        faults::TriggerSet& set = rule_set(k);
        hit.clear();
        set.each_applied([&](size_t i) {
            if (set.program()->rule(i).name == name) hit.push_back(i);
        });
        for (size_t i : hit) {
            lifted = lifted || !set.done(i);
            set.lift(i);
        }
    }
    // A set added while open holds one rule: it goes with it, so a rule switched off and on
    // (or replaced) again and again leaves nothing behind. Not while fires are pending: they
    // name sets by index.
    if (added_rules_ && pending_fire_.empty()) {
        std::erase_if(*added_rules_, [](const faults::TriggerSet& set) { return !set.applied(0); });
        if (added_rules_->empty()) added_rules_.reset();  // scan() takes its short way again
    }
    up_.lift(name);
    down_.lift(name);
    release_packet_drops(name);
    if (!lifted) return;
    rearm();
    // A stream this rule's trigger held at its byte threshold moves on.
    up_.release_trigger_hold();
    down_.release_trigger_hold();
}

std::vector<std::string> Session::rule_names() const {
    std::vector<std::string> out;
    each_rule([&](const config::Rule& r) { out.push_back(r.name); });
    return out;
}

bool Session::watches(config::Direction dir) const {
    if (rules_.watches(dir)) return true;
    if (added_rules_)
        for (const auto& set : *added_rules_)
            if (set.watches(dir)) return true;
    return false;
}

Pipe::ScanResult Session::scan(config::Direction dir, const char* p, size_t n) {
    // First the earliest point where a trigger fires or holds the stream, over every set;
    // then each set advances exactly that far, so no trigger counts a byte that a fault
    // firing earlier holds or discards. A chunk nothing happens in costs each set one probe
    // (one pass of its literal filter) and a few comparisons.
    uint64_t off = pipe(dir).forwarded();
    if (!added_rules_) {
        // The usual case: only the rules of accept, and nothing happens in this chunk.
        faults::TriggerSet::Probe pr = rules_.probe(dir, p, n, off);
        if (!pr.touched) {
            rules_.commit(dir, p, n, n, false, off, 0, t_firing);
            return {n, false, false};
        }
    }
    size_t sets = rule_sets();
    faults::TriggerSet::Probe best;
    uint64_t touched = 0;  // sets whose probe saw a state change (bit k; beyond 63: always)
    for (size_t k = 0; k < sets; ++k) {
        const faults::TriggerSet& set = rule_set(k);
        if (!set.watches(dir)) continue;
        faults::TriggerSet::Probe pr = set.probe(dir, p, n, off);
        if (pr.touched && k < 64) touched |= uint64_t{1} << k;
        if (pr.event && (!best.event || pr.pass < best.pass ||
                         (pr.pass == best.pass && pr.fire && !best.fire))) {
            best = pr;
        } else if (pr.event && pr.pass == best.pass && pr.fire) {
            best.fire = true;
        }
    }
    size_t upto = best.event ? best.pass : n;
    bool moved = false;
    uint64_t now = (touched != 0 || sets > 64) ? now_us() : 0;
    for (size_t k = 0; k < sets; ++k) {
        faults::TriggerSet& set = rule_set(k);
        if (!set.watches(dir)) continue;
        bool t = k >= 64 || ((touched >> k) & 1);
        t_firing.clear();
        moved = set.commit(dir, p, n, upto, t, off, now, t_firing) || moved;
        for (uint32_t i : t_firing) pending_fire_.emplace_back(static_cast<uint32_t>(k), i);
    }
    if (moved) rearm();
    bool fired = !pending_fire_.empty();
    return {upto, fired, best.event && !best.fire && !fired};
}

void Session::fire_pending() {
    std::vector<std::pair<uint32_t, uint32_t>> now;
    now.swap(pending_fire_);
    for (auto [k, i] : now) fire(k, i);
}

void Session::fire(size_t set, uint32_t i) {
    faults::TriggerSet& ts = rule_set(set);
    ts.finish(i);  // already done if its trigger said so
    const config::Rule& rule = ts.program()->rule(i);
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

bool Session::has_preconnect_clamp() const {
    if (outgoing_ != &upstream_) return false;
    if (!rules_.empty() && rules_.program()->preconnect_clamp(rules_.applied_rows())) return true;
    if (!added_rules_) return false;
    bool any = false;
    each_rule([&](const config::Rule& r) {
        const auto* f = std::get_if<config::ClampFault>(&r.fault);
        if (f != nullptr && !r.when && faults::hits_server(f->side)) any = true;
    });
    return any;
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

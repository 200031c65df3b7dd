#include "observe/metrics.hpp"

#include <prometheus/text_serializer.h>

#include <sstream>

namespace tcpfault {

namespace {
using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

// Connection lifetimes in a fault proxy span from a refused connect to a long soak.
const prometheus::Histogram::BucketBoundaries kDurationBuckets = {
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800};
}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      connections_(BuildCounter()
                       .Name("tcpfault_connections_total")
                       .Help("Client connections accepted")
                       .Register(*registry_)),
      active_(BuildGauge()
                  .Name("tcpfault_connections_active")
                  .Help("Client connections open now")
                  .Register(*registry_)),
      rejected_(BuildCounter()
                    .Name("tcpfault_connections_rejected_total")
                    .Help("Client connections not proxied, by reason")
                    .Register(*registry_)),
      upstream_errors_(BuildCounter()
                           .Name("tcpfault_upstream_errors_total")
                           .Help("Failed upstream connects, by error")
                           .Register(*registry_)),
      bytes_(BuildCounter()
                 .Name("tcpfault_bytes_total")
                 .Help("Bytes received from each side (upstream: client to server)")
                 .Register(*registry_)),
      faults_(BuildCounter()
                  .Name("tcpfault_faults_total")
                  .Help("Faults injected, by rule")
                  .Register(*registry_)),
      suppressed_(BuildCounter()
                      .Name("tcpfault_faults_suppressed_total")
                      .Help("Faults a rule fired that could not act: the connection was already "
                            "ending")
                      .Register(*registry_)),
      rule_active_(BuildGauge()
                       .Name("tcpfault_rule_active")
                       .Help("1 while the rule is enabled and inside its schedule")
                       .Register(*registry_)),
      duration_(BuildHistogram()
                    .Name("tcpfault_connection_duration_seconds")
                    .Help("Lifetime of proxied connections")
                    .Register(*registry_)),
      reloads_(BuildCounter()
                   .Name("tcpfault_config_reloads_total")
                   .Help("Configuration reloads, by result")
                   .Register(*registry_)) {
    reloads_.Add({{"result", "ok"}});
    reloads_.Add({{"result", "error"}});
}

void Metrics::declare_proxy(const std::string& proxy) {
    unretire_proxy(proxy);  // back: its series go on
    connections_.Add({{"proxy", proxy}});
    active_.Add({{"proxy", proxy}});
    for (const char* r : kRejectReasons) rejected_.Add({{"proxy", proxy}, {"reason", r}});
    for (const char* e : kUpstreamErrors) upstream_errors_.Add({{"proxy", proxy}, {"error", e}});
    bytes_.Add({{"proxy", proxy}, {"direction", "upstream"}});
    bytes_.Add({{"proxy", proxy}, {"direction", "downstream"}});
    duration_.Add({{"proxy", proxy}}, kDurationBuckets);
}

void Metrics::declare_rules(const std::string& proxy, const std::vector<RuleLabels>& rules) {
    std::set<RuleKey> now;
    for (const auto& [rule, fault] : rules) {
        RuleKey k{proxy, rule, fault};
        faults_.Add({{"proxy", proxy}, {"rule", rule}, {"fault", fault}});
        suppressed_.Add({{"proxy", proxy}, {"rule", rule}, {"fault", fault}});
        rule_active_.Add({{"proxy", proxy}, {"rule", rule}});
        if (retired_rules_.erase(k) != 0) std::erase(retired_order_, k);  // back: series go on
        live_rules_.insert(k);
        now.insert(std::move(k));
    }
    std::vector<RuleKey> gone;
    for (auto it = live_rules_.lower_bound(RuleKey{proxy, {}, {}});
         it != live_rules_.end() && it->proxy == proxy; ++it)
        if (now.count(*it) == 0) gone.push_back(*it);
    for (const auto& k : gone) retire(k, now);
}

void Metrics::retire_proxy(const std::string& proxy) {
    declare_rules(proxy, {});
    active_.Remove(&active_.Add({{"proxy", proxy}}));
    unretire_proxy(proxy);
    retired_proxies_.push_back(proxy);
    trim_retired_proxies();
}

void Metrics::unretire_proxy(const std::string& proxy) {
    std::erase(retired_proxies_, proxy);
}

void Metrics::trim_retired_proxies() {
    for (auto it = retired_proxies_.begin();
         retired_proxies_.size() > kMaxRetiredProxies && it != retired_proxies_.end();) {
        const std::string& p = *it;
        if (series_users_.count(p) != 0) {  // a server still counts into them (draining)
            ++it;
            continue;
        }
        connections_.Remove(&connections_.Add({{"proxy", p}}));
        for (const char* r : kRejectReasons)
            rejected_.Remove(&rejected_.Add({{"proxy", p}, {"reason", r}}));
        for (const char* e : kUpstreamErrors)
            upstream_errors_.Remove(&upstream_errors_.Add({{"proxy", p}, {"error", e}}));
        for (const char* d : {"upstream", "downstream"})
            bytes_.Remove(&bytes_.Add({{"proxy", p}, {"direction", d}}));
        duration_.Remove(&duration_.Add({{"proxy", p}}, kDurationBuckets));
        if (auto f = proxy_faults_.find(p); f != proxy_faults_.end()) {
            for (const auto& [rule, fault] : f->second)
                faults_.Remove(&faults_.Add({{"proxy", p}, {"rule", rule}, {"fault", fault}}));
            proxy_faults_.erase(f);
        }
        it = retired_proxies_.erase(it);
    }
}

void Metrics::retire(const RuleKey& k, const std::set<RuleKey>& live_now) {
    live_rules_.erase(k);
    // The rule is gone unless it lives on under another fault type.
    auto same_name = live_now.lower_bound(RuleKey{k.proxy, k.rule, {}});
    if (same_name == live_now.end() || same_name->rule != k.rule)
        rule_active_.Remove(&rule_active_.Add({{"proxy", k.proxy}, {"rule", k.rule}}));
    if (!retired_rules_.insert(k).second) return;
    retired_order_.push_back(k);
    while (retired_order_.size() > kMaxRetiredRules) {
        const RuleKey& old = retired_order_.front();
        prometheus::Labels labels{{"proxy", old.proxy}, {"rule", old.rule}, {"fault", old.fault}};
        faults_.Remove(&faults_.Add(labels));
        suppressed_.Remove(&suppressed_.Add(labels));
        retired_rules_.erase(old);
        retired_order_.pop_front();
    }
}

void Metrics::declare_fault(const std::string& proxy, const std::string& rule, const char* fault) {
    faults_.Add({{"proxy", proxy}, {"rule", rule}, {"fault", fault}});
    proxy_faults_[proxy].emplace(rule, fault);
}

Metrics::ProxySeries Metrics::proxy_series(const std::string& proxy) {
    // Not removed while counted here, so the pointers stay valid until released.
    ++series_users_[proxy];
    return ProxySeries{&connections_.Add({{"proxy", proxy}}),
                       &duration_.Add({{"proxy", proxy}}, kDurationBuckets)};
}

void Metrics::release_proxy_series(const std::string& proxy) {
    auto it = series_users_.find(proxy);
    if (it == series_users_.end()) return;
    if (--it->second == 0) series_users_.erase(it);
    trim_retired_proxies();
}

void Metrics::rejected(const std::string& proxy, const char* reason) {
    rejected_.Add({{"proxy", proxy}, {"reason", reason}}).Increment();
}

void Metrics::upstream_error(const std::string& proxy, const std::string& kind) {
    upstream_errors_.Add({{"proxy", proxy}, {"error", kind}}).Increment();
}

void Metrics::fault(const std::string& proxy, const std::string& rule, const char* fault) {
    faults_.Add({{"proxy", proxy}, {"rule", rule}, {"fault", fault}}).Increment();
}

void Metrics::fault_suppressed(const std::string& proxy, const std::string& rule,
                               const char* fault) {
    suppressed_.Add({{"proxy", proxy}, {"rule", rule}, {"fault", fault}}).Increment();
}

void Metrics::bytes(const std::string& proxy, const char* direction, uint64_t delta) {
    if (delta > 0)
        bytes_.Add({{"proxy", proxy}, {"direction", direction}})
            .Increment(static_cast<double>(delta));
}

void Metrics::set_active(const std::string& proxy, double n) {
    active_.Add({{"proxy", proxy}}).Set(n);
}

void Metrics::set_rule_active(const std::string& proxy, const std::string& rule, bool active) {
    rule_active_.Add({{"proxy", proxy}, {"rule", rule}}).Set(active ? 1 : 0);
}

void Metrics::reload(bool ok) {
    reloads_.Add({{"result", ok ? "ok" : "error"}}).Increment();
}

std::string Metrics::render() const {
    std::ostringstream out;
    prometheus::TextSerializer{}.Serialize(out, registry_->Collect());
    return out.str();
}

}  // namespace tcpfault

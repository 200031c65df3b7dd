// Prometheus metrics (docs/metrics.md) on prometheus-cpp's registry, rendered as text on the
// event loop by the admin HTTP server. Hot counters (bytes) stay plain integers in
// ProxyServer and are folded in at scrape time; rare events increment directly.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace tcpfault {

class Metrics {
  public:
    Metrics();

    // Series every proxy shows from its start, so a scrape lists all labels with 0 values.
    void declare_proxy(const std::string& proxy);
    // A proxy's rules now, as (name, fault type): their series are declared, and those of the
    // proxy's rules that are gone (deleted, or replaced by another fault type) are retired.
    // A retired rule's tcpfault_rule_active series goes at once; its fault counters stay, so a
    // scrape after the deletion still sees what it injected, until kMaxRetiredRules rules
    // retired later push them out, oldest first. A rule declared again continues its series.
    // Called on the main loop only.
    using RuleLabels = std::pair<std::string, const char*>;
    void declare_rules(const std::string& proxy, const std::vector<RuleLabels>& rules);
    // The proxy is gone (deleted, or no longer in the config): its rules are retired and its
    // tcpfault_connections_active series goes. Its counters stay, so a scrape after the
    // deletion still sees its last counts, until kMaxRetiredProxies proxies that went later
    // push them out, oldest first, once no server holds them (release_proxy_series). A proxy
    // declared again under the same name continues its series.
    void retire_proxy(const std::string& proxy);
    static constexpr size_t kMaxRetiredRules = 1000;
    static constexpr size_t kMaxRetiredProxies = 100;
    // One tcpfault_faults_total series without a rule behind it (the admin API's label); it
    // goes with the proxy's other series.
    void declare_fault(const std::string& proxy, const std::string& rule, const char* fault);

    // A proxy's per-connection series, looked up once: Family::Add builds a label map,
    // hashes it and takes the family's lock, too much for every accept.
    struct ProxySeries {
        prometheus::Counter* connections = nullptr;
        prometheus::Histogram* duration = nullptr;
    };
    // Counted: each call is matched by one release_proxy_series() when the server holding the
    // pointers (and its replicas) is gone; only then can the series be removed.
    ProxySeries proxy_series(const std::string& proxy);
    void release_proxy_series(const std::string& proxy);
    void rejected(const std::string& proxy, const char* reason);
    void upstream_error(const std::string& proxy, const std::string& kind);
    void fault(const std::string& proxy, const std::string& rule, const char* fault);
    void fault_suppressed(const std::string& proxy, const std::string& rule, const char* fault);
    void bytes(const std::string& proxy, const char* direction, uint64_t delta);
    void set_active(const std::string& proxy, double n);
    void set_rule_active(const std::string& proxy, const std::string& rule, bool active);
    void reload(bool ok);

    std::string render() const;

    static constexpr const char* kRejectReasons[] = {"cap", "refuse", "upstream_error",
                                                     "accept_error"};
    static constexpr const char* kUpstreamErrors[] = {"refused", "timeout", "reset", "dns",
                                                      "other"};

  private:
    // (proxy, rule, fault): one rule's series.
    struct RuleKey {
        std::string proxy, rule, fault;
        auto operator<=>(const RuleKey&) const = default;
    };
    void retire(const RuleKey& k, const std::set<RuleKey>& live_now);
    // Removes the series of the oldest retired proxies no server holds, down to the bound.
    void trim_retired_proxies();
    void unretire_proxy(const std::string& proxy);

    std::shared_ptr<prometheus::Registry> registry_;
    prometheus::Family<prometheus::Counter>& connections_;
    prometheus::Family<prometheus::Gauge>& active_;
    prometheus::Family<prometheus::Counter>& rejected_;
    prometheus::Family<prometheus::Counter>& upstream_errors_;
    prometheus::Family<prometheus::Counter>& bytes_;
    prometheus::Family<prometheus::Counter>& faults_;
    prometheus::Family<prometheus::Counter>& suppressed_;
    prometheus::Family<prometheus::Gauge>& rule_active_;
    prometheus::Family<prometheus::Histogram>& duration_;
    prometheus::Family<prometheus::Counter>& reloads_;
    std::set<RuleKey> live_rules_;
    std::set<RuleKey> retired_rules_;    // kept series of rules that went
    std::deque<RuleKey> retired_order_;  // the same, oldest first: at most kMaxRetiredRules
    std::map<std::string, size_t> series_users_;  // proxy_series() calls not yet released
    std::deque<std::string> retired_proxies_;     // kept series of proxies that went, oldest first
    // declare_fault()'s (rule, fault) per proxy.
    std::map<std::string, std::set<std::pair<std::string, std::string>>> proxy_faults_;
};

}  // namespace tcpfault

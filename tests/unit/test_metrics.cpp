// Rule series when rules and proxies go: the active gauge goes at once, fault counters stay for
// a bounded number of later retirements, and nothing grows without bound.
#include <doctest/doctest.h>

#include <string>

#include "observe/metrics.hpp"

using tcpfault::Metrics;

namespace {
bool has(const std::string& text, const std::string& series) {
    return text.find(series) != std::string::npos;
}
std::string faults(const std::string& rule, const std::string& fault = "reset") {
    return "tcpfault_faults_total{fault=\"" + fault + "\",proxy=\"web\",rule=\"" + rule + "\"}";
}
std::string active(const std::string& rule) {
    return "tcpfault_rule_active{proxy=\"web\",rule=\"" + rule + "\"}";
}
size_t count(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}
}  // namespace

TEST_CASE("metrics: a deleted rule loses its active gauge at once and keeps its count") {
    Metrics m;
    m.declare_proxy("web");
    m.declare_rules("web", {{"cut", "reset"}, {"slow", "latency"}});
    m.set_rule_active("web", "cut", true);
    m.fault("web", "cut", "reset");
    std::string before = m.render();
    CHECK(has(before, active("cut") + " 1"));
    CHECK(has(before, faults("cut") + " 1"));

    m.declare_rules("web", {{"slow", "latency"}});  // "cut" deleted
    std::string after = m.render();
    CHECK_FALSE(has(after, active("cut")));
    CHECK(has(after, faults("cut") + " 1"));  // what it injected, still there to scrape
    CHECK(has(after, active("slow")));

    // Back under the same name: its count goes on.
    m.declare_rules("web", {{"slow", "latency"}, {"cut", "reset"}});
    m.fault("web", "cut", "reset");
    CHECK(has(m.render(), faults("cut") + " 2"));
}

TEST_CASE("metrics: a rule replaced by another fault type keeps one active gauge") {
    Metrics m;
    m.declare_proxy("web");
    m.declare_rules("web", {{"r", "reset"}});
    m.declare_rules("web", {{"r", "latency"}});
    std::string text = m.render();
    CHECK(has(text, active("r")));
    CHECK(has(text, faults("r", "reset")));  // the old type's count, retired
    CHECK(has(text, faults("r", "latency")));
}

TEST_CASE("metrics: retired rules' series are bounded, oldest out first") {
    Metrics m;
    m.declare_proxy("web");
    const size_t n = Metrics::kMaxRetiredRules + 500;
    for (size_t i = 0; i < n; ++i) {
        std::string rule = "r" + std::to_string(i);
        m.declare_rules("web", {{rule, "reset"}});  // the one before it is deleted
    }
    std::string text = m.render();
    // The live rule plus kMaxRetiredRules retired ones, each in both fault counters.
    CHECK(count(text, "tcpfault_faults_total{fault=\"reset\",proxy=\"web\"") ==
          Metrics::kMaxRetiredRules + 1);
    CHECK(count(text, "tcpfault_faults_suppressed_total{fault=\"reset\",proxy=\"web\"") ==
          Metrics::kMaxRetiredRules + 1);
    CHECK(count(text, "tcpfault_rule_active{") == 1);
    // r0 .. r(n-2) were retired; the first n-1-kMaxRetiredRules of them are out.
    CHECK_FALSE(has(text, faults("r0")));
    CHECK_FALSE(has(text, faults("r498")));
    CHECK(has(text, faults("r499")));
    CHECK(has(text, faults("r" + std::to_string(n - 1))));
}

TEST_CASE("metrics: a retired proxy loses its rules' gauges and its active gauge") {
    Metrics m;
    m.declare_proxy("web");
    m.declare_rules("web", {{"cut", "reset"}});
    m.set_active("web", 3);
    m.retire_proxy("web");
    std::string text = m.render();
    CHECK_FALSE(has(text, "tcpfault_connections_active{proxy=\"web\"}"));
    CHECK_FALSE(has(text, active("cut")));
    CHECK(has(text, faults("cut")));
    CHECK(has(text, "tcpfault_connections_total{proxy=\"web\"}"));
}

TEST_CASE("metrics: gone proxies' counters are bounded, oldest out first, never while held") {
    Metrics m;
    auto conns = [](const std::string& p) {
        return "tcpfault_connections_total{proxy=\"" + p + "\"}";
    };
    const size_t kept = Metrics::kMaxRetiredProxies;
    // The first to go, but a server still holds its series (draining connections).
    m.declare_proxy("held");
    Metrics::ProxySeries held = m.proxy_series("held");
    m.retire_proxy("held");
    const size_t n = kept + 50;
    for (size_t i = 0; i < n; ++i) {
        std::string p = "p" + std::to_string(i);
        m.declare_proxy(p);
        Metrics::ProxySeries s = m.proxy_series(p);
        s.connections->Increment();
        s.duration->Observe(0.5);
        m.rejected(p, "cap");
        m.declare_fault(p, "@api", "latency");
        m.retire_proxy(p);
        m.release_proxy_series(p);  // its server is gone
    }
    held.connections->Increment();  // still valid: never removed while held
    // "held" and the newest kept - 1: p0 .. p50 are out.
    std::string text = m.render();
    CHECK(count(text, "tcpfault_connections_total{") == kept);
    CHECK(count(text, "tcpfault_connection_duration_seconds_count{") == kept);
    CHECK(count(text, "tcpfault_connections_rejected_total{") ==
          kept * std::size(Metrics::kRejectReasons));
    CHECK(count(text, "tcpfault_upstream_errors_total{") ==
          kept * std::size(Metrics::kUpstreamErrors));
    CHECK(count(text, "tcpfault_bytes_total{") == kept * 2);
    CHECK(count(text, "tcpfault_faults_total{") == kept - 1);  // "held" declared none
    CHECK(has(text, conns("held") + " 1"));
    CHECK_FALSE(has(text, conns("p0")));
    CHECK_FALSE(has(text, conns("p50")));
    CHECK(has(text, conns("p51") + " 1"));
    CHECK(has(text, conns("p" + std::to_string(n - 1)) + " 1"));

    // Released, "held" is the oldest: the next proxy to go pushes it out.
    m.release_proxy_series("held");
    CHECK(has(m.render(), conns("held")));
    m.declare_proxy("next");
    m.retire_proxy("next");
    text = m.render();
    CHECK_FALSE(has(text, conns("held")));
    CHECK(has(text, conns("p51")));
    CHECK(count(text, "tcpfault_connections_total{") == kept);

    // A proxy made again under a kept name continues its counts, and is no longer retired.
    m.declare_proxy("p51");
    Metrics::ProxySeries again = m.proxy_series("p51");
    again.connections->Increment();
    CHECK(has(m.render(), conns("p51") + " 2"));
    for (size_t i = 0; i < kept; ++i) {
        std::string p = "q" + std::to_string(i);
        m.declare_proxy(p);
        m.retire_proxy(p);
    }
    text = m.render();
    CHECK(has(text, conns("p51") + " 2"));
    CHECK(count(text, "tcpfault_connections_total{") == kept + 1);
    m.release_proxy_series("p51");
}

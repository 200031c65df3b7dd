// Toxiproxy's HTTP API (SPEC section 7), so test suites written against Toxiproxy's clients run
// unchanged against tcpfault. Runs on the event loop like AdminApi (the HTTP server calls it
// there).
//
// Proxies made here are ordinary tcpfault proxies and every toxic becomes an ordinary rule on
// its proxy, so both show in /api and in the metrics. This class keeps what only Toxiproxy
// knows in a side table: the names as the client gave them (tcpfault names must match
// [a-z0-9_-]+, Toxiproxy names need not), the upstream text as given, and each toxic's type,
// stream, toxicity and attributes, so GET returns exactly what Toxiproxy would. Proxies from
// the config file are listed too (with no toxics: their own rules have no Toxiproxy form);
// /reset re-enables them but never touches their rules.
//
// Taking a proxy down (`enabled: false`) is the rule `toxiproxy-disabled`, of type refuse,
// switched on: the listener is closed (ECONNREFUSED) and every open connection is closed, as
// Toxiproxy does. Switching `enabled` back on switches that rule off.
//
// Toxic -> rule (ms = milliseconds, as Toxiproxy's attributes are; `stream` gives the
// direction, default downstream; `toxicity` < 1 becomes match.probability; every rule has
// match.existing, so it also hits connections already open, as toxics do):
//   latency    {latency, jitter}             latency {delay, jitter}
//   bandwidth  {rate} KB/s (1 KB = 1000 B)   bandwidth {rate: rate*1000 B/s}; rate <= 0: stall
//                                            (hold, forever), as Toxiproxy then passes nothing
//   slow_close {delay}                       slow_close {delay}
//   timeout    {timeout}                     stall {mode: drop, duration: timeout, then: close};
//                                            timeout 0: stall (drop) forever
//   reset_peer {timeout}                     reset {to: both, flush: false}, when: the stream's
//                                            first data (held, not passed on), after: timeout
//   slicer     {average_size, size_variation, delay (µs)}
//                                            slice {size: max(1,avg-var)-(avg+var), delay}
//   limit_data {bytes}                       close {to: both}, when.after_bytes: bytes, counted
//                                            from the stream's first data after it was added
//   noop       {}                            latency 0 (a rule that does nothing)
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "api/http_parser.hpp"
#include "api/http_server.hpp"
#include "proxy/proxy_server.hpp"

namespace tcpfault {

class ToxiproxyApi {
  public:
    struct Hooks {
        std::function<std::vector<ProxyServer*>()> servers;          // live proxies
        std::function<ProxyServer*(const std::string&)> find;        // by tcpfault name
        std::function<std::string(const config::Proxy&)> add_proxy;  // "" or the error
        std::function<bool(const std::string&)> remove_proxy;        // false: no such proxy
    };

    // The Toxiproxy release whose API this emulates (GET /version).
    static constexpr const char* kVersion = "2.9.0";
    // The refuse rule that takes a proxy down.
    static constexpr const char* kDisabledRule = "toxiproxy-disabled";

    // One toxic as Toxiproxy shows it, and the rule it became.
    struct Toxic {
        std::string name;    // as the client gave it (or `<type>_<stream>`)
        std::string rule;    // the tcpfault rule name
        std::string type;    // latency, bandwidth, ...
        std::string stream;  // as given ("downstream", "Upstream", ...)
        bool upstream = false;
        float toxicity = 1.0f;
        // Toxiproxy's attribute fields of this type, in its order, with their values.
        std::vector<std::pair<std::string, int64_t>> attributes;
    };

    explicit ToxiproxyApi(Hooks hooks) : hooks_(std::move(hooks)) {}
    HttpResponse handle(const HttpRequest& req);

    // The rule a toxic becomes (named t.rule). Public for tests.
    static config::Rule to_rule(const Toxic& t);
    // Toxiproxy's JSON for a toxic: {"attributes":{...},"name":..,"type":..,"stream":..,
    // "toxicity":..}.
    static std::string toxic_json(const Toxic& t);
    // A name valid for tcpfault ([a-z0-9_-]+) made from any Toxiproxy name.
    static std::string sanitize(const std::string& name);

  private:
    struct ProxyState {
        std::string toxi_name;      // the name Toxiproxy clients use
        std::string upstream;       // as given
        std::vector<Toxic> toxics;  // in creation order
    };

    HttpResponse route(const HttpRequest& req);
    HttpResponse list_proxies();
    HttpResponse create_proxy(const std::string& body);
    HttpResponse populate(const std::string& body);
    HttpResponse update_proxy(ProxyServer& p, const std::string& body);
    HttpResponse delete_proxy(ProxyServer& p);
    HttpResponse list_toxics(ProxyServer& p);
    HttpResponse create_toxic(ProxyServer& p, const std::string& body);
    HttpResponse update_toxic(ProxyServer& p, const std::string& name, const std::string& body);
    HttpResponse delete_toxic(ProxyServer& p, const std::string& name);
    HttpResponse reset();

    // The proxy clients call `name` (their name, or a tcpfault name), or null.
    ProxyServer* lookup(const std::string& name);
    std::string toxi_name(const ProxyServer& p) const;
    std::string upstream_text(const ProxyServer& p) const;
    static bool enabled(const ProxyServer& p);
    // The toxics of p whose rules still exist (a reload may have replaced the rules).
    std::vector<Toxic>& toxics(const ProxyServer& p);
    std::string proxy_json(ProxyServer& p);
    // A tcpfault proxy name for a new Toxiproxy proxy, unused by any live proxy.
    std::string unique_proxy_name(const std::string& toxi_name);
    // Starts a proxy; "" or the error. Disabled ones are bound, then taken down at once.
    std::string start(config::Proxy cfg, bool enabled, const std::string& toxi_name,
                      const std::string& upstream, std::vector<Toxic> toxics);
    // Switches the refuse rule; taking down also closes every open connection.
    void set_enabled(ProxyServer& p, bool on);
    // Closes p's open connections (FIN, as Toxiproxy's Close) and removes it.
    void stop(ProxyServer& p);

    Hooks hooks_;
    std::map<std::string, ProxyState> state_;  // by tcpfault proxy name
};

}  // namespace tcpfault

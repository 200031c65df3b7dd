// Toxiproxy's HTTP API (docs/toxiproxy.md): its routes, status codes, JSON
// shapes and headers, so test suites written against Toxiproxy's clients run unchanged against
// tcpfault. Runs on the event loop like AdminApi (the HTTP server calls it there).
//
// The jobs are split by file: this one routes requests and turns JSON into calls on the proxy
// table and back; toxiproxy_state.* is Toxiproxy's view of the proxies and every change to
// them; toxiproxy_toxics.* maps each toxic type to tcpfault rules; toxiproxy_policy.* is what
// the API may do (allowlists, config-file proxies); toxiproxy_json.* reads and writes JSON the
// way Toxiproxy's clients expect; toxiproxy_metrics.* renders -proxy-metrics and
// -runtime-metrics series.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "api/http_parser.hpp"
#include "api/http_server.hpp"
#include "api/toxiproxy_json.hpp"
#include "api/toxiproxy_state.hpp"
#include "config/config.hpp"

namespace tcpfault {

class ToxiproxyApi {
  public:
    struct Hooks {
        toxiproxy::Hooks proxies;
        // tcpfault's own series for /metrics (null: none).
        std::function<std::string()> metrics;
    };

    // The Toxiproxy release whose API this follows (GET /version, toxiproxy-server -version).
    static constexpr const char* kVersion = "2.12.0";

    ToxiproxyApi(Hooks hooks, const config::ToxiproxyConfig& cfg);
    HttpResponse handle(const HttpRequest& req);

    // Toxiproxy's -config file: a JSON list of proxies, as POST /populate takes, whose
    // `toxics` (Toxiproxy's toxic objects) are applied too. "" or the error.
    std::string load_config(const std::string& text);
    // The same file checked without starting anything: "" or the error.
    static std::string check_config(const std::string& text);

    toxiproxy::ProxyTable& table() { return table_; }

  private:
    HttpResponse route(const HttpRequest& req);
    HttpResponse list_proxies();
    HttpResponse create_proxy(const std::string& body);
    HttpResponse populate(const std::string& body);
    HttpResponse update_proxy(ProxyServer& p, const std::string& body);
    HttpResponse list_toxics(ProxyServer& p);
    HttpResponse create_toxic(ProxyServer& p, const std::string& body);
    HttpResponse update_toxic(ProxyServer& p, const std::string& name, const std::string& body);
    HttpResponse metrics();
    toxiproxy::Json proxy_json(ProxyServer& p);
    toxiproxy::Json toxics_json(ProxyServer& p);
    // X-Toxiproxy-Request-Id: a new id per request, as Toxiproxy's (rs/xid: 20 characters).
    std::string request_id();

    Hooks hooks_;
    config::ToxiproxyConfig cfg_;
    toxiproxy::ProxyTable table_;
    uint32_t id_counter_;
    uint32_t id_machine_;
};

}  // namespace tcpfault

// The admin HTTP API (docs/admin-api.md): routes to JSON responses. Runs on the event loop (the
// HTTP server calls it there), so rule changes never race the data path. Rule bodies are
// validated by the same code, with the same messages, as rules in the file.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "api/http_parser.hpp"
#include "api/http_server.hpp"
#include "observe/events.hpp"
#include "observe/metrics.hpp"
#include "proxy/proxy_server.hpp"

namespace tcpfault {

class AdminApi {
  public:
    struct Hooks {
        std::function<std::vector<ProxyServer*>()> servers;      // live proxies, config order
        std::function<std::vector<ProxyServer*>()> all_servers;  // live and retiring (metrics)
        std::function<std::string()> reload;                     // "" or the error
        Metrics* metrics = nullptr;
        EventLog* events = nullptr;  // GET /api/events; null: always empty
        std::string token;           // empty: no auth
    };

    explicit AdminApi(Hooks hooks) : hooks_(std::move(hooks)) {}
    HttpResponse handle(const HttpRequest& req);

  private:
    HttpResponse route(const HttpRequest& req, const std::vector<std::string>& parts);
    HttpResponse list_proxies();
    HttpResponse list_connections(ProxyServer& p, const HttpRequest& req);
    HttpResponse connection_route(const HttpRequest& req, ProxyServer& p,
                                  const std::vector<std::string>& parts);
    // Runs `act` on the open connection `id` on its own loop; answers with the connection
    // (200), or 404 (no such connection), 409 (already ending, still connecting) or 400.
    HttpResponse act_on_connection(ProxyServer& p, uint64_t id,
                                   const std::function<Session::ApiResult(Session&)>& act);
    HttpResponse list_events(const HttpRequest& req);
    HttpResponse status_page(const std::string& name);
    HttpResponse add_rule(ProxyServer& p, const std::string& body);
    HttpResponse replace_rule(ProxyServer& p, const std::string& name, const std::string& body);
    HttpResponse delete_rule(ProxyServer& p, const std::string& name);
    HttpResponse switch_rule(ProxyServer& p, const std::string& name, bool enabled);
    HttpResponse restart(ProxyServer& p, const std::string& body);
    HttpResponse metrics();
    ProxyServer* find(const std::string& name);
    // p, then earlier instances of it a reload re-bound that still finish connections: a
    // proxy's connections are listed and reached wherever they run.
    std::vector<ProxyServer*> instances(ProxyServer& p);
    size_t open_connections(ProxyServer& p);  // over instances(p)
    // A rule change: p gets config `c`, its earlier instances the same rules.
    void commit(ProxyServer& p, const std::shared_ptr<config::Proxy>& c,
                const std::string& replaced = "");
    bool authorized(const HttpRequest& req) const;

    Hooks hooks_;
};

}  // namespace tcpfault

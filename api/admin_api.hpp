// The admin HTTP API of SPEC section 4: routes to JSON responses. Runs on the event loop (the
// HTTP server calls it there), so rule changes never race the data path. Rule bodies are
// validated by the same code, with the same messages, as rules in the file.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "api/http_parser.hpp"
#include "api/http_server.hpp"
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
        std::string token;  // empty: no auth
    };

    explicit AdminApi(Hooks hooks) : hooks_(std::move(hooks)) {}
    HttpResponse handle(const HttpRequest& req);

  private:
    HttpResponse route(const HttpRequest& req, const std::vector<std::string>& parts);
    HttpResponse list_proxies();
    HttpResponse list_connections(ProxyServer& p);
    HttpResponse add_rule(ProxyServer& p, const std::string& body);
    HttpResponse replace_rule(ProxyServer& p, const std::string& name, const std::string& body);
    HttpResponse delete_rule(ProxyServer& p, const std::string& name);
    HttpResponse switch_rule(ProxyServer& p, const std::string& name, bool enabled);
    HttpResponse restart(ProxyServer& p, const std::string& body);
    HttpResponse metrics();
    ProxyServer* find(const std::string& name);
    bool authorized(const HttpRequest& req) const;

    Hooks hooks_;
};

}  // namespace tcpfault

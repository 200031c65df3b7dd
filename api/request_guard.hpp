// Browser protections of the HTTP APIs, in front of their routes (App puts one before the
// admin API and one before the Toxiproxy API). A web page the operator visits can make the
// browser send requests to a port on localhost; these rules refuse what only a browser, on
// behalf of another site, would send. Clients that are not browsers (curl, test code, the
// Toxiproxy client libraries) send none of the refused headers.
//
// State-changing requests (every method but GET, HEAD and OPTIONS) are refused with 403 when
//  - `Sec-Fetch-Site` is `cross-site` or `same-site` (sent by every current browser), or
//  - `Origin` is present and is `null` or names another host or port than `Host`;
// and, with require_body_type, with 415 when
//  - `Content-Type` is present and is neither JSON nor YAML (`text/plain`, form and multipart
//    bodies are what a page may send to any site without the browser asking the server), or
//  - a body comes without a `Content-Type`.
// With local_hosts_only (for a listener on a loopback address), every request whose `Host` is
// not `localhost`, a name under `.localhost` or an IP literal is refused with 403: a page on
// a name its owner re-points at 127.0.0.1 (DNS rebinding) reaches the port as same-origin,
// and only its Host gives it away. A request without Host (HTTP/1.0) passes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "api/http_parser.hpp"
#include "api/http_server.hpp"

namespace tcpfault {

struct GuardRefusal {
    int status = 403;    // 403 or 415
    std::string reason;  // one line, printable ASCII

    // {"error": reason} (the admin API's error body), with `"status": N` when toxiproxy_style.
    HttpResponse response(bool toxiproxy_style) const;
};

class RequestGuard {
  public:
    struct Policy {
        std::string api = "HTTP API";    // for log lines: "admin API", "Toxiproxy API"
        bool local_hosts_only = false;   // refuse a Host that is not local (DNS rebinding)
        bool require_body_type = false;  // JSON or YAML bodies on state-changing requests
    };

    RequestGuard() = default;
    explicit RequestGuard(Policy policy) : policy_(std::move(policy)) {}
    void set_policy(Policy policy) { policy_ = std::move(policy); }
    const Policy& policy() const { return policy_; }

    // nullopt to let the request through. Refusals are logged (warn) at the 1st, 2nd, 4th,
    // 8th... one, so a flood of them cannot flood the log.
    std::optional<GuardRefusal> check(const HttpRequest& req);
    uint64_t refusals() const { return refusals_; }

  private:
    std::optional<GuardRefusal> evaluate(const HttpRequest& req) const;

    Policy policy_;
    uint64_t refusals_ = 0;
};

// True for GET, HEAD and OPTIONS.
bool is_safe_method(std::string_view method);
// A Host header value that no DNS rebinding can produce: "localhost", "x.localhost", an IPv4
// literal or a bracketed IPv6 literal, each with an optional port; "" too (no authority).
bool is_local_host_header(std::string_view host);
// application/json, application/yaml and their kin (x-yaml, text/yaml, +json, +yaml
// suffixes); parameters such as `; charset=utf-8` are ignored.
bool is_json_or_yaml_type(std::string_view content_type);
// True when `origin` ("http://host:port") names the same host and port as `host` ("host:port").
bool origin_matches_host(std::string_view origin, std::string_view host);

}  // namespace tcpfault

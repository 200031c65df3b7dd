// RequestGuard: the browser protections in front of the HTTP APIs (no sockets).
#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "api/http_parser.hpp"
#include "api/request_guard.hpp"

using tcpfault::GuardRefusal;
using tcpfault::HttpRequest;
using tcpfault::RequestGuard;

namespace {

HttpRequest request(std::string method, std::vector<std::pair<std::string, std::string>> headers,
                    std::string body = "") {
    HttpRequest r;
    r.method = std::move(method);
    r.target = r.path = "/api/proxies/p/rules";
    r.headers = std::move(headers);
    r.body = std::move(body);
    return r;
}

RequestGuard admin_guard(bool loopback) {
    RequestGuard::Policy p;
    p.api = "admin API";
    p.local_hosts_only = loopback;
    p.require_body_type = true;
    return RequestGuard(p);
}

// Status of the refusal, 0 if the request passes.
int refused(RequestGuard& g, const HttpRequest& r) {
    auto x = g.check(r);
    return x ? x->status : 0;
}

}  // namespace

TEST_CASE("guard: Host values a DNS rebinding cannot produce") {
    using tcpfault::is_local_host_header;
    for (const char* ok : {"localhost", "localhost:9474", "LOCALHOST", "localhost.", "a.localhost",
                           "x.y.localhost:1", "127.0.0.1", "127.0.0.1:9474", "10.1.2.3:80", "[::1]",
                           "[::1]:9474", "[2001:db8::1]:1", "", "0.0.0.0:9474"}) {
        INFO(ok);
        CHECK(is_local_host_header(ok));
    }
    for (const char* bad :
         {"evil.example", "evil.example:9474", "localhost.evil.example", "evil-localhost",
          ".localhost", "x", "tcpfault:9474", "127.1", "2130706433", "::1", "[::1", "[::1]x",
          "[not-ip]:1", "localhost:", "localhost:99999", "localhost:1:2", ":9474", "localhost:94a",
          "127.0.0.1.evil.example"}) {
        INFO(bad);
        CHECK_FALSE(is_local_host_header(bad));
    }
}

TEST_CASE("guard: JSON and YAML content types") {
    using tcpfault::is_json_or_yaml_type;
    for (const char* ok :
         {"application/json", "application/json; charset=utf-8", "Application/JSON",
          " application/yaml ", "application/x-yaml", "text/yaml", "text/x-yaml;charset=utf-8",
          "application/merge-patch+json", "application/vnd.x+yaml"}) {
        INFO(ok);
        CHECK(is_json_or_yaml_type(ok));
    }
    for (const char* bad :
         {"text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
          "multipart/form-data; boundary=x", "", "json", "text/json", "application/jsonx",
          "text/html+json", "application/octet-stream"}) {
        INFO(bad);
        CHECK_FALSE(is_json_or_yaml_type(bad));
    }
}

TEST_CASE("guard: Origin against Host") {
    using tcpfault::origin_matches_host;
    CHECK(origin_matches_host("http://localhost:9474", "localhost:9474"));
    CHECK(origin_matches_host("http://LocalHost:9474", "localhost:9474"));
    CHECK(origin_matches_host("http://127.0.0.1:80", "127.0.0.1"));
    CHECK(origin_matches_host("http://127.0.0.1", "127.0.0.1:80"));
    CHECK(origin_matches_host("https://admin.example", "admin.example"));  // TLS proxy in front
    CHECK(origin_matches_host("https://admin.example", "admin.example:443"));
    CHECK(origin_matches_host("http://[::1]:9474", "[::1]:9474"));
    CHECK_FALSE(origin_matches_host("http://localhost:3000", "localhost:9474"));
    CHECK_FALSE(origin_matches_host("http://evil.example", "localhost"));
    CHECK_FALSE(origin_matches_host("http://evil.example:9474", "localhost:9474"));
    CHECK_FALSE(origin_matches_host("https://localhost", "localhost:80"));
    CHECK(origin_matches_host("http://localhost:80", "localhost"));
    CHECK_FALSE(origin_matches_host("http://localhost:8080", "localhost"));
    CHECK_FALSE(origin_matches_host("null", "localhost"));
    CHECK_FALSE(origin_matches_host("file://", "localhost"));
    CHECK_FALSE(origin_matches_host("ftp://localhost", "localhost"));
    CHECK_FALSE(origin_matches_host("http://localhost/path", "localhost"));
    CHECK_FALSE(origin_matches_host("http://user@localhost", "localhost"));
    CHECK_FALSE(origin_matches_host("http://localhost:9474", ""));
}

TEST_CASE("guard: what curl, client libraries and test code send passes") {
    RequestGuard g = admin_guard(true);
    // curl -X POST .../enable
    CHECK(refused(g, request("POST", {{"host", "127.0.0.1:9474"},
                                      {"user-agent", "curl/7.88.1"},
                                      {"accept", "*/*"}})) == 0);
    // curl --json / -H 'Content-Type: application/json' -d ...
    CHECK(refused(
              g, request("POST", {{"host", "localhost:9474"}, {"content-type", "application/json"}},
                         R"({"name":"r","fault":{"type":"reset"}})")) == 0);
    // a YAML body
    CHECK(refused(g, request("PUT", {{"host", "[::1]:9474"}, {"content-type", "application/yaml"}},
                             "name: r\nfault: {type: reset}\n")) == 0);
    // DELETE without a body, HTTP/1.0 without Host
    CHECK(refused(g, request("DELETE", {})) == 0);
    // reads are never refused for their content type or origin
    CHECK(refused(g, request("GET", {{"host", "localhost"},
                                     {"origin", "http://evil.example"},
                                     {"sec-fetch-site", "cross-site"}})) == 0);
    CHECK(refused(g, request("HEAD", {{"content-type", "text/plain"}})) == 0);
    // a same-origin browser request (a page served through this very host and port)
    CHECK(refused(g, request("POST",
                             {{"host", "localhost:9474"},
                              {"origin", "http://localhost:9474"},
                              {"sec-fetch-site", "same-origin"},
                              {"content-type", "application/json"}},
                             "{}")) == 0);
    // typed into the address bar / a bookmark
    CHECK(refused(g, request("POST", {{"sec-fetch-site", "none"}})) == 0);
    CHECK(g.refusals() == 0);
}

TEST_CASE("guard: cross-site browser requests are refused") {
    RequestGuard g = admin_guard(true);
    // The CSRF of issue 12: a form or fetch() with text/plain from another site.
    auto r = g.check(request("POST",
                             {{"host", "localhost:9474"},
                              {"origin", "http://evil.example"},
                              {"sec-fetch-site", "cross-site"},
                              {"content-type", "text/plain"}},
                             R"({"name":"r","fault":{"type":"reset"}})"));
    REQUIRE(r.has_value());
    CHECK(r->status == 403);
    CHECK(r->reason.find("Sec-Fetch-Site: cross-site") != std::string::npos);

    // An older browser without Sec-Fetch-*: the Origin gives it away.
    r = g.check(request("POST", {{"host", "localhost:9474"}, {"origin", "http://evil.example"}}));
    REQUIRE(r.has_value());
    CHECK(r->status == 403);
    CHECK(r->reason.find("Origin \"http://evil.example\" does not match Host") !=
          std::string::npos);
    // Another port on the same host is another origin (and `same-site`).
    CHECK(refused(g, request("POST", {{"host", "localhost:9474"},
                                      {"origin", "http://localhost:3000"}})) == 403);
    CHECK(refused(g, request("DELETE", {{"host", "localhost:9474"},
                                        {"sec-fetch-site", "same-site"}})) == 403);
    CHECK(refused(g, request("POST", {{"host", "localhost:9474"}, {"origin", "null"}})) == 403);
    CHECK(refused(g, request("POST", {{"origin", "http://localhost:9474"}})) == 403);  // no Host

    // No browser headers at all, but a body type a page could send anywhere.
    for (const char* type :
         {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"}) {
        r = g.check(request("POST", {{"host", "127.0.0.1:9474"}, {"content-type", type}}, "x"));
        REQUIRE(r.has_value());
        CHECK(r->status == 415);
        CHECK(r->reason.find("application/json or application/yaml") != std::string::npos);
    }
    // ... even with an empty body (a form without fields).
    CHECK(refused(g, request("POST", {{"content-type", "application/x-www-form-urlencoded"}})) ==
          415);
    // A body must say what it is.
    r = g.check(request("POST", {{"host", "127.0.0.1:9474"}}, "{}"));
    REQUIRE(r.has_value());
    CHECK(r->status == 415);
    CHECK(r->reason == "a request body needs Content-Type: application/json or application/yaml");
    CHECK(g.refusals() == 11);
}

TEST_CASE("guard: a loopback-bound API refuses a foreign Host, on every method") {
    RequestGuard g = admin_guard(true);
    for (const char* method : {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"}) {
        auto r = g.check(request(method, {{"host", "rebind.evil.example:9474"}}));
        REQUIRE(r.has_value());
        CHECK(r->status == 403);
        CHECK(r->reason.find("Host \"rebind.evil.example:9474\" refused") == 0);
        CHECK(r->reason.find("DNS rebinding") != std::string::npos);
    }
    // A non-loopback listener cannot know its names: Host is not checked there.
    RequestGuard open = admin_guard(false);
    CHECK(refused(open, request("GET", {{"host", "tcpfault.internal:9474"}})) == 0);
    CHECK(refused(open, request("POST", {{"host", "tcpfault.internal:9474"}})) == 0);
    // ... but the browser rules still hold.
    CHECK(refused(open, request("POST", {{"host", "tcpfault.internal:9474"},
                                         {"origin", "http://evil.example"}})) == 403);
}

TEST_CASE("guard: without require_body_type (the Toxiproxy API) any body type passes") {
    RequestGuard::Policy p;
    p.local_hosts_only = true;
    RequestGuard g(p);
    // Toxiproxy's documentation uses curl -d, which sends a form type.
    CHECK(refused(g, request("POST",
                             {{"host", "localhost:8474"},
                              {"content-type", "application/x-www-form-urlencoded"}},
                             R"({"name":"x"})")) == 0);
    CHECK(refused(g, request("POST", {{"host", "localhost:8474"}}, "{}")) == 0);
    CHECK(refused(g, request("POST", {{"host", "localhost:8474"},
                                      {"sec-fetch-site", "cross-site"}})) == 403);
    CHECK(refused(g, request("GET", {{"host", "evil.example:8474"}})) == 403);
}

TEST_CASE("guard: refusal bodies are JSON, quoted values bounded and printable") {
    RequestGuard g = admin_guard(true);
    std::string huge(20000, 'h');
    huge += "\x01\xff\"";
    auto r = g.check(request("GET", {{"host", huge}}));
    REQUIRE(r.has_value());
    CHECK(r->reason.size() < 300);
    CHECK(r->reason.find("hhh...\"") != std::string::npos);
    for (char c : r->reason) CHECK((c >= 0x20 && c < 0x7f));
    auto admin = r->response(false);
    CHECK(admin.status == 403);
    CHECK(admin.content_type == "application/json");
    CHECK(admin.body.rfind("{\"error\":\"Host \\\"hhh", 0) == 0);
    CHECK(admin.body.back() == '\n');
    auto toxi = GuardRefusal{415, "no"}.response(true);
    CHECK(toxi.body == "{\"error\":\"no\",\"status\":415}\n");
    // A quote inside a quoted value is escaped in the JSON.
    r = g.check(request("POST", {{"content-type", "text/\"plain"}}));
    REQUIRE(r.has_value());
    CHECK(r->response(false).body.find(R"(Content-Type \"text/\"plain\" refused)") !=
          std::string::npos);
}

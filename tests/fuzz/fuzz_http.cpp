// fuzz_http: the admin API's HTTP/1.x request parser (api/http_parser.hpp) on arbitrary
// bytes split at fuzzer-chosen points, and the request guard (api/request_guard.hpp),
// AdminApi::handle and ToxiproxyApi::handle on every request it yields, with hooks that have no
// proxies (no sockets, no event loop; creating one fails as if its port were taken).
// Invariants beyond "no crash / no sanitizer report":
//  - the requests and the final error do not depend on how the bytes were split;
//  - an error is final and has a status in {400, 413, 431, 501, 505} and a UTF-8 reason;
//  - a request never carries more body than max_body_bytes;
//  - every AdminApi response has a status in 200..599 and a body that is well-formed UTF-8
//    (RFC 3629: no overlong forms, surrogates or code points above U+10FFFF), whatever bytes
//    the request carried (error messages quote the request's path and body);
//  - a JSON response's body is well-formed JSON (the Toxiproxy API's error bodies too: JSON and
//    a newline, as Go's http.Error writes them).
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/admin_api.hpp"
#include "api/http_parser.hpp"
#include "api/request_guard.hpp"
#include "api/toxiproxy_api.hpp"
#include "config/config.hpp"
#include "fuzz_common.hpp"
#include "observe/log.hpp"
#include "observe/metrics.hpp"

using namespace tcpfault;

namespace {

// --- a small JSON checker (RFC 8259 grammar; depth-bounded) --------------------------------
struct Json {
    std::string_view s;
    size_t i = 0;
    void ws() {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
    }
    bool lit(std::string_view w) {
        if (s.substr(i, w.size()) != w) return false;
        i += w.size();
        return true;
    }
    bool str() {
        if (i >= s.size() || s[i] != '"') return false;
        ++i;
        while (i < s.size()) {
            auto c = static_cast<unsigned char>(s[i]);
            if (c == '"') {
                ++i;
                return true;
            }
            if (c < 0x20) return false;
            if (c == '\\') {
                ++i;
                if (i >= s.size()) return false;
                char e = s[i];
                if (e == 'u') {
                    for (int k = 1; k <= 4; ++k)
                        if (i + k >= s.size() ||
                            !std::isxdigit(static_cast<unsigned char>(s[i + k])))
                            return false;
                    i += 5;
                    continue;
                }
                if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos) return false;
                ++i;
                continue;
            }
            ++i;
        }
        return false;
    }
    bool num() {
        size_t b = i;
        if (i < s.size() && s[i] == '-') ++i;
        while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.' ||
                                s[i] == 'e' || s[i] == 'E' || s[i] == '+' || s[i] == '-'))
            ++i;
        return i > b;
    }
    bool value(int depth) {
        if (depth > 32) return false;
        ws();
        if (i >= s.size()) return false;
        char c = s[i];
        bool ok;
        if (c == '{') {
            ++i;
            ws();
            if (i < s.size() && s[i] == '}') {
                ++i;
                ok = true;
            } else {
                for (;;) {
                    ws();
                    if (!str()) return false;
                    ws();
                    if (!lit(":")) return false;
                    if (!value(depth + 1)) return false;
                    ws();
                    if (lit(",")) continue;
                    if (lit("}")) break;
                    return false;
                }
                ok = true;
            }
        } else if (c == '[') {
            ++i;
            ws();
            if (i < s.size() && s[i] == ']') {
                ++i;
                ok = true;
            } else {
                for (;;) {
                    if (!value(depth + 1)) return false;
                    ws();
                    if (lit(",")) continue;
                    if (lit("]")) break;
                    return false;
                }
                ok = true;
            }
        } else if (c == '"') {
            ok = str();
        } else if (c == 't') {
            ok = lit("true");
        } else if (c == 'f') {
            ok = lit("false");
        } else if (c == 'n') {
            ok = lit("null");
        } else {
            ok = num();
        }
        ws();
        return ok;
    }
};

bool valid_json(std::string_view s) {
    Json j{s};
    return j.value(0) && j.i == s.size();
}

// RFC 3629 (Table 3-7 of the Unicode standard): the second byte's range depends on the first.
bool valid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        size_t n = 0;
        unsigned char lo = 0x80;
        unsigned char hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            if (c == 0xE0) lo = 0xA0;  // overlong
            if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            if (c == 0xF0) lo = 0x90;  // overlong
            if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
        } else {
            return false;  // continuation byte, C0/C1 (overlong) or F5..FF
        }
        if (s.size() - i <= n) return false;
        auto b1 = static_cast<unsigned char>(s[i + 1]);
        if (b1 < lo || b1 > hi) return false;
        for (size_t k = 2; k <= n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        i += n + 1;
    }
    return true;
}

// --- the parser under different splits -----------------------------------------------------
struct Seen {
    std::vector<HttpRequest> requests;
    int error = 0;
};

bool same(const HttpRequest& a, const HttpRequest& b) {
    return a.method == b.method && a.target == b.target && a.path == b.path && a.query == b.query &&
           a.headers == b.headers && a.body == b.body && a.version_minor == b.version_minor &&
           a.keep_alive == b.keep_alive && a.expect_continue == b.expect_continue;
}

Seen parse(std::string_view bytes, const std::vector<size_t>& cuts,
           HttpRequestParser::Limits limits) {
    Seen seen;
    HttpRequestParser p(limits);
    for (std::string_view chunk : fuzz::split(bytes, cuts)) {
        p.feed(chunk);
        for (;;) {
            HttpRequest req;
            auto st = p.next(req);
            if (st == HttpRequestParser::Status::need_more) break;
            if (st == HttpRequestParser::Status::error) {
                int e = p.error_status();
                FUZZ_CHECK(e == 400 || e == 413 || e == 431 || e == 501 || e == 505);
                FUZZ_CHECK(!p.error_reason().empty());
                FUZZ_CHECK(valid_utf8(p.error_reason()));  // it becomes an error body
                HttpRequest again;
                FUZZ_CHECK(p.next(again) == HttpRequestParser::Status::error);  // final
                seen.error = e;
                return seen;
            }
            FUZZ_CHECK(req.body.size() <= limits.max_body_bytes);
            seen.requests.push_back(std::move(req));
        }
    }
    return seen;
}

Metrics& metrics() {
    static Metrics* m = [] {
        auto* x = new Metrics();
        x->declare_proxy("web");
        x->declare_rules("web", {{"slow", "latency"}});
        return x;
    }();
    return *m;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // AdminApi logs every successful state change; keep the fuzzer's output to its stats.
    log::configure(config::LogLevel::error, config::LogFormat::json);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 64 * 1024) return 0;
    fuzz::Input in(data, size);
    uint8_t flags = in.byte();
    std::vector<size_t> cuts = fuzz::read_cuts(in, /*allow_empty=*/true);
    std::string_view bytes = in.rest();

    HttpRequestParser::Limits limits;
    if (flags & 1) {  // small limits, so 413/431 paths are reachable from small inputs
        limits.max_header_bytes = 64 + (flags >> 4) * 16;
        limits.max_body_bytes = 32 + (flags >> 4) * 8;
    }
    Seen whole = parse(bytes, {}, limits);
    Seen pieces = parse(bytes, cuts, limits);
    FUZZ_CHECK(whole.error == pieces.error);
    FUZZ_CHECK(whole.requests.size() == pieces.requests.size());
    for (size_t i = 0; i < whole.requests.size(); ++i)
        FUZZ_CHECK(same(whole.requests[i], pieces.requests[i]));

    AdminApi::Hooks hooks;
    hooks.servers = [] { return std::vector<ProxyServer*>{}; };
    hooks.all_servers = [] { return std::vector<ProxyServer*>{}; };
    hooks.reload = [flags] {
        return (flags & 2) ? std::string("fuzz.yaml:1:1: bad") : std::string();
    };
    hooks.metrics = &metrics();
    if (flags & 4) hooks.token = "s3cret";
    AdminApi api(std::move(hooks));
    // The request guard App puts in front: the admin API's policy (loopback or not, by flag)
    // and the Toxiproxy API's; a refusal is a bounded, printable 403/415 with a JSON body.
    RequestGuard admin_guard({"admin API", (flags & 8) != 0, true});
    RequestGuard toxi_guard({"Toxiproxy API", true, false});
    for (const HttpRequest& req : whole.requests) {
        for (RequestGuard* g : {&admin_guard, &toxi_guard}) {
            std::optional<GuardRefusal> refusal = g->check(req);
            if (!refusal) continue;
            FUZZ_CHECK(refusal->status == 403 || refusal->status == 415);
            FUZZ_CHECK(!refusal->reason.empty() && refusal->reason.size() < 600);
            for (char c : refusal->reason) FUZZ_CHECK(c >= 0x20 && c < 0x7f);
            HttpResponse rr = refusal->response(g == &toxi_guard);
            FUZZ_CHECK(valid_json(rr.body));
            // Reads are refused only for their Host.
            if (is_safe_method(req.method)) FUZZ_CHECK(refusal->reason.rfind("Host ", 0) == 0);
        }
        HttpResponse r = api.handle(req);
        FUZZ_CHECK(r.status >= 200 && r.status <= 599);
        FUZZ_CHECK(valid_utf8(r.body));
        if (r.content_type == "application/json") FUZZ_CHECK(valid_json(r.body));
    }

    ToxiproxyApi::Hooks th;
    th.proxies.servers = [] { return std::vector<ProxyServer*>{}; };
    th.proxies.find = [](const std::string&) { return static_cast<ProxyServer*>(nullptr); };
    th.proxies.add_proxy = [flags](const config::Proxy&, int* listen_error) {
        *listen_error = (flags & 8) ? UV_EADDRINUSE : UV_EACCES;
        return std::string("fuzz: no sockets");
    };
    th.proxies.remove_proxy = [](const std::string&) { return false; };
    config::ToxiproxyConfig tcfg;
    if (flags & 2) {
        config::AddressPattern loopback;
        loopback.host_kind = config::AddressPattern::Host::name;
        loopback.name = "localhost";
        tcfg.allow_upstream = std::vector<config::AddressPattern>{loopback};
        tcfg.allow_listen = std::vector<config::AddressPattern>{};
    }
    ToxiproxyApi toxi(std::move(th), tcfg);
    for (const HttpRequest& req : whole.requests) {
        HttpResponse r = toxi.handle(req);
        FUZZ_CHECK(r.status >= 200 && r.status <= 599);
        FUZZ_CHECK(valid_utf8(r.body));
        std::string_view body = r.body;
        if (!body.empty() && body.back() == '\n' && body.front() == '{') body.remove_suffix(1);
        if (r.content_type == "application/json" || (r.status >= 400 && body.starts_with("{")))
            FUZZ_CHECK(valid_json(body));
    }
    return 0;
}

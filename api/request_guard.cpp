#include "api/request_guard.hpp"

#include <arpa/inet.h>

#include <array>

#include "observe/log.hpp"

namespace tcpfault {

namespace {

constexpr size_t kShown = 80;

char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string to_lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = lower(c);
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A header value as quoted in a message: printable ASCII, at most kShown bytes.
std::string shown(std::string_view v) {
    std::string out;
    for (size_t i = 0; i < v.size() && i < kShown; ++i) {
        auto c = static_cast<unsigned char>(v[i]);
        out += (c < 0x20 || c >= 0x7f) ? '?' : static_cast<char>(c);
    }
    if (v.size() > kShown) out += "...";
    return out;
}

// 1 to 5 digits, at most 65535.
bool valid_port(std::string_view p) {
    if (p.empty() || p.size() > 5) return false;
    unsigned v = 0;
    for (char c : p) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    return v <= 65535;
}

// "host", "host:port", "[v6]" or "[v6]:port" -> host (brackets kept) and port ("" if none).
bool split_authority(std::string_view hp, std::string_view* host, std::string_view* port) {
    *host = {};
    *port = {};
    if (hp.empty()) return true;
    if (hp.front() == '[') {
        size_t close = hp.find(']');
        if (close == std::string_view::npos) return false;
        *host = hp.substr(0, close + 1);
        std::string_view rest = hp.substr(close + 1);
        if (rest.empty()) return true;
        if (rest.front() != ':') return false;
        *port = rest.substr(1);
        return valid_port(*port);
    }
    size_t colon = hp.find(':');
    if (colon == std::string_view::npos) {
        *host = hp;
        return true;
    }
    if (hp.find(':', colon + 1) != std::string_view::npos) return false;  // bare IPv6
    *host = hp.substr(0, colon);
    *port = hp.substr(colon + 1);
    return !host->empty() && valid_port(*port);
}

bool ip_literal(std::string_view host) {
    std::array<unsigned char, 16> buf{};
    if (host.size() > 64) return false;
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        std::string inner(host.substr(1, host.size() - 2));
        return inet_pton(AF_INET6, inner.c_str(), buf.data()) == 1;
    }
    std::string h(host);
    return inet_pton(AF_INET, h.c_str(), buf.data()) == 1;
}

unsigned port_number(std::string_view p) {
    unsigned v = 0;
    for (char c : p) v = v * 10 + static_cast<unsigned>(c - '0');
    return v;
}

std::string canonical_host(std::string_view host) {
    std::string h = to_lower(host);
    if (!h.empty() && h.back() == '.') h.pop_back();
    return h;
}

}  // namespace

HttpResponse GuardRefusal::response(bool toxiproxy_style) const {
    HttpResponse r;
    r.status = status;
    r.body = "{\"error\":\"" + log::json_escape(reason) + "\"";
    if (toxiproxy_style) r.body += ",\"status\":" + std::to_string(status);
    r.body += "}\n";
    return r;
}

bool is_safe_method(std::string_view method) {
    return method == "GET" || method == "HEAD" || method == "OPTIONS";
}

bool is_local_host_header(std::string_view value) {
    std::string_view host, port;
    if (!split_authority(value, &host, &port)) return false;
    if (host.empty()) return port.empty();
    if (ip_literal(host)) return true;
    std::string h = canonical_host(host);
    return h == "localhost" || (h.size() > 10 && ends_with(h, ".localhost"));
}

bool is_json_or_yaml_type(std::string_view content_type) {
    std::string media = to_lower(trim(content_type.substr(0, content_type.find(';'))));
    if (media == "application/json" || media == "application/yaml" ||
        media == "application/x-yaml" || media == "text/yaml" || media == "text/x-yaml")
        return true;
    return media.rfind("application/", 0) == 0 &&
           (ends_with(media, "+json") || ends_with(media, "+yaml"));
}

bool origin_matches_host(std::string_view origin, std::string_view host_header) {
    size_t sep = origin.find("://");
    if (sep == std::string_view::npos) return false;
    std::string scheme = to_lower(origin.substr(0, sep));
    if (scheme != "http" && scheme != "https") return false;
    std::string_view authority = origin.substr(sep + 3);
    if (authority.find_first_of("/?#@") != std::string_view::npos) return false;
    std::string_view ohost, oport, hhost, hport;
    if (!split_authority(authority, &ohost, &oport) || ohost.empty()) return false;
    if (!split_authority(host_header, &hhost, &hport) || hhost.empty()) return false;
    if (canonical_host(ohost) != canonical_host(hhost)) return false;
    // A Host without a port stands for the default port of whatever scheme the client used
    // (a TLS-terminating proxy may sit in front): the Origin's port must be its scheme's.
    unsigned scheme_port = scheme == "https" ? 443u : 80u;
    unsigned o = oport.empty() ? scheme_port : port_number(oport);
    if (hport.empty()) return o == scheme_port;
    return o == port_number(hport);
}

std::optional<GuardRefusal> RequestGuard::evaluate(const HttpRequest& req) const {
    const std::string* host = req.header("host");
    if (policy_.local_hosts_only && host != nullptr && !is_local_host_header(*host)) {
        return GuardRefusal{403, "Host \"" + shown(*host) +
                                     "\" refused: this API listens on a loopback address and "
                                     "answers only to localhost, *.localhost or an IP address "
                                     "(protection against DNS rebinding)"};
    }
    if (is_safe_method(req.method)) return std::nullopt;

    if (const std::string* site = req.header("sec-fetch-site")) {
        std::string s = to_lower(trim(*site));
        if (s == "cross-site" || s == "same-site")
            return GuardRefusal{403, "request from a web page refused (Sec-Fetch-Site: " + s +
                                         "): pages of other sites may not change state "
                                         "through this API; call it from curl or a client"};
    }
    if (const std::string* origin = req.header("origin")) {
        std::string_view o = trim(*origin);
        if (o == "null")
            return GuardRefusal{403,
                                "request from a web page refused (Origin: null): sandboxed and "
                                "local pages may not change state through this API"};
        if (host == nullptr || !origin_matches_host(o, *host))
            return GuardRefusal{403, "cross-origin request refused: Origin \"" + shown(o) +
                                         "\" does not match Host \"" +
                                         shown(host ? *host : std::string()) +
                                         "\"; pages of other sites may not change state "
                                         "through this API"};
    }
    if (policy_.require_body_type) {
        if (const std::string* ct = req.header("content-type")) {
            if (!is_json_or_yaml_type(*ct))
                return GuardRefusal{415, "Content-Type \"" + shown(*ct) +
                                             "\" refused: send the body as application/json or "
                                             "application/yaml (web pages can send text/plain, "
                                             "form and multipart bodies to any site)"};
        } else if (!req.body.empty()) {
            return GuardRefusal{415,
                                "a request body needs Content-Type: application/json or "
                                "application/yaml"};
        }
    }
    return std::nullopt;
}

std::optional<GuardRefusal> RequestGuard::check(const HttpRequest& req) {
    std::optional<GuardRefusal> r = evaluate(req);
    if (!r) return r;
    ++refusals_;
    if ((refusals_ & (refusals_ - 1)) == 0) {
        log::warn(policy_.api + " refused a request", {{"method", shown(req.method)},
                                                       {"path", shown(req.path)},
                                                       {"status", r->status},
                                                       {"reason", r->reason},
                                                       {"refused_so_far", refusals_}});
    }
    return r;
}

}  // namespace tcpfault

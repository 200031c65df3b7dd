// The config file (docs/config.md): top level, admin, log, proxies, and the entry points.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "config/env_expand.hpp"
#include "config/parse_internal.hpp"
#include "config/units.hpp"
#include "config/yaml_guard.hpp"

namespace tcpfault::config::detail {

namespace {

const std::vector<std::string_view> kTopKeys = {"admin",   "log",       "seed",    "shutdown_grace",
                                                "workers", "toxiproxy", "proxies", "watch"};
const std::vector<std::string_view> kProxyKeys = {
    "name", "listen", "upstream", "protocol", "connect_timeout", "on_upstream_error", "rules"};

constexpr uint64_t kMaxWorkers = 1024;

// `listen: off`. YAML 1.1 readers turn `off` into false, so both spellings mean the same.
bool is_off(const Entry& e) {
    if (!e.value.IsScalar()) return false;
    const std::string& s = e.value.Scalar();
    return s == "off" || s == "Off" || s == "OFF" || s == "false" || s == "False" || s == "FALSE";
}

bool same_host(const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    }
    return true;
}

struct ListenUse {
    std::string owner;  // "admin.listen", "proxy \"smtp\""
    HostPort addr;
    Position pos;
};

struct ProxyRead {
    std::optional<Proxy> proxy;
    std::optional<std::string> name;
    Position name_pos;
    Position pos;
    std::optional<ListenUse> listen;
};

ProxyRead read_proxy(Reader& r, const YAML::Node& node, Position where) {
    ProxyRead out;
    out.pos = where;
    size_t before = r.error_count();
    auto f = Fields::read(r, node, where, {"proxy", "in proxy", "", kProxyKeys});
    if (!f) return out;
    out.pos = f->pos();

    Proxy p;
    p.pos = f->pos();
    f->require(r, "name");
    f->require(r, "listen");
    f->require(r, "upstream");
    if (const Entry* e = f->get("name")) {
        out.name = get_name(r, *e);
        out.name_pos = e->value_pos;
        if (out.name) p.name = *out.name;
    }
    if (const Entry* e = f->get("listen")) {
        if (auto v = get_host_port(r, *e, true)) {
            p.listen = *v;
            out.listen = ListenUse{"proxy " + quote(p.name), *v, e->value_pos};
        }
    }
    if (const Entry* e = f->get("upstream")) {
        if (auto v = get_host_port(r, *e, false)) p.upstream = *v;
        p.upstream_pos = e->value_pos;
    }
    // Unknown until proven: an invalid protocol must not also make every `channel` an error.
    std::optional<Protocol> protocol = Protocol::tcp;
    if (const Entry* e = f->get("protocol")) {
        protocol = get_enum<Protocol>(r, *e, {{"tcp", Protocol::tcp}, {"ftp", Protocol::ftp}});
        if (protocol) p.protocol = *protocol;
    }
    if (const Entry* e = f->get("connect_timeout")) {
        if (auto v = get_duration(r, *e, true)) p.connect_timeout = *v;
    }
    if (const Entry* e = f->get("on_upstream_error")) {
        if (auto v = get_enum<OnUpstreamError>(
                r, *e, {{"reset", OnUpstreamError::reset}, {"close", OnUpstreamError::close}}))
            p.on_upstream_error = *v;
    }
    if (const Entry* e = f->get("rules"); e != nullptr && !e->is_null()) {
        if (!e->value.IsSequence()) {
            r.error(e->value_pos, "rules: expected a sequence, found " + describe(e->value));
        } else {
            std::vector<std::pair<std::string, Position>> seen;
            for (const auto& item : e->value) {
                Position ip = r.pos(item);
                auto rr = read_rule(r, item, ip.line > 0 ? ip : e->value_pos, protocol);
                if (rr.name) {
                    auto dup = std::find_if(seen.begin(), seen.end(),
                                            [&](const auto& s) { return s.first == *rr.name; });
                    if (dup != seen.end()) {
                        std::string in = out.name ? " in proxy " + quote(*out.name) : "";
                        r.error(rr.name_pos, "duplicate rule name " + quote(*rr.name) + in +
                                                 " (first defined at " + position_str(dup->second) +
                                                 ")");
                    } else {
                        seen.emplace_back(*rr.name, rr.pos);
                    }
                }
                if (rr.rule) p.rules.push_back(std::move(*rr.rule));
            }
        }
    }
    if (r.error_count() == before) out.proxy = std::move(p);
    return out;
}

void read_admin(Reader& r, const Entry& e, AdminConfig& admin, std::vector<ListenUse>& listens) {
    auto f =
        Fields::read(r, e.value, e.value_pos, {"admin", "in admin", "admin.", {"listen", "token"}});
    if (!f) return;
    if (const Entry* l = f->get("listen")) {
        if (is_off(*l)) {
            admin.enabled = false;
        } else if (auto v = get_host_port(r, *l, true)) {
            admin.listen = *v;
            listens.push_back({"admin.listen", *v, l->value_pos});
        }
    }
    if (const Entry* t = f->get("token")) {
        if (auto v = get_string(r, *t, true)) admin.token = *v;
    }
}

bool valid_pattern_name(std::string_view s) {
    if (s.empty() || s.size() > 253) return false;
    size_t label = 0;
    for (char c : s) {
        if (c == '.') {
            if (label == 0) return false;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (!ok || ++label > 63) return false;
    }
    return label > 0;
}

// One allow_listen / allow_upstream entry (see AddressPattern); "" or what is wrong with it.
std::string parse_address_pattern(std::string_view text, AddressPattern& out) {
    out.text = std::string(text);
    std::string_view host = text;
    std::optional<std::string_view> port;
    if (text == "*") return "";
    if (!text.empty() && text.front() == '[') {
        size_t close = text.find(']');
        if (close == std::string_view::npos) return "missing \"]\"";
        host = text.substr(1, close - 1);
        std::string_view rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') return "expected :PORT after \"]\"";
            port = rest.substr(1);
        }
    } else if (size_t slash = text.find('/'); slash != std::string_view::npos) {
        // 10.0.0.0/8 or 10.0.0.0/8:5432 (an IPv6 network with a port needs brackets).
        if (size_t colon = text.find(':', slash); colon != std::string_view::npos) {
            host = text.substr(0, colon);
            port = text.substr(colon + 1);
        }
    } else if (size_t colon = text.find(':'); colon != std::string_view::npos &&
                                              text.find(':', colon + 1) == std::string_view::npos) {
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    // (Two or more colons without brackets: a bare IPv6 address, any port.)
    if (host.empty()) return "missing host (use * for any host)";
    if (host == "*") {
        out.host_kind = AddressPattern::Host::any;
    } else if (host.starts_with("*.")) {
        if (!valid_pattern_name(host.substr(2))) return "not a valid *.domain pattern";
        out.host_kind = AddressPattern::Host::suffix;
        out.name = std::string(host.substr(1));
    } else if (host.find('/') != std::string_view::npos ||
               host.find(':') != std::string_view::npos ||
               std::all_of(host.begin(), host.end(),
                           [](char c) { return (c >= '0' && c <= '9') || c == '.'; })) {
        auto net = parse_cidr(host);
        if (!net) return net.error;
        out.host_kind = AddressPattern::Host::network;
        out.network = *net;
    } else {
        if (!valid_pattern_name(host)) return "not a valid host name, IP address or CIDR";
        out.host_kind = AddressPattern::Host::name;
        out.name = std::string(host);
    }
    if (out.host_kind == AddressPattern::Host::name ||
        out.host_kind == AddressPattern::Host::suffix) {
        for (char& c : out.name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        if (out.name.ends_with('.')) out.name.pop_back();
    }
    if (!port || *port == "*") return "";
    auto number = [](std::string_view d, uint16_t& v) {
        if (d.empty() || d.size() > 5) return false;
        uint32_t n = 0;
        for (char c : d) {
            if (c < '0' || c > '9') return false;
            n = n * 10 + static_cast<uint32_t>(c - '0');
        }
        if (n > 65535) return false;
        v = static_cast<uint16_t>(n);
        return true;
    };
    size_t dash = port->find('-');
    std::string_view lo = port->substr(0, dash);
    std::string_view hi = dash == std::string_view::npos ? lo : port->substr(dash + 1);
    if (!number(lo, out.port_min) || !number(hi, out.port_max))
        return "the port must be a number 0-65535, a range like 8000-8999, or *";
    if (out.port_min > out.port_max) return "the port range is reversed";
    return "";
}

std::optional<std::vector<AddressPattern>> read_patterns(Reader& r, const Entry& e) {
    if (!e.value.IsSequence()) {
        r.error(e.value_pos, e.label + ": expected a sequence of addresses like 127.0.0.0/8, " +
                                 "db.internal:5432 or \"[::1]:*\", found " + describe(e.value));
        return std::nullopt;
    }
    std::vector<AddressPattern> out;
    bool ok = true;
    for (const auto& item : e.value) {
        r.visit();
        Position p = r.pos(item);
        if (p.line == 0) p = e.value_pos;
        if (!item.IsScalar()) {
            r.error(p, e.label + ": expected an address pattern, found " + describe(item));
            ok = false;
            continue;
        }
        AddressPattern pat;
        std::string err = parse_address_pattern(item.Scalar(), pat);
        if (!err.empty()) {
            r.error(p, "invalid " + e.label + " entry " + quote(item.Scalar()) + ": " + err);
            ok = false;
            continue;
        }
        out.push_back(std::move(pat));
    }
    if (!ok) return std::nullopt;
    return out;
}

void read_toxiproxy(Reader& r, const Entry& e, ToxiproxyConfig& tp,
                    std::vector<ListenUse>& listens) {
    auto f = Fields::read(r, e.value, e.value_pos,
                          {"toxiproxy",
                           "in toxiproxy",
                           "toxiproxy.",
                           {"listen", "allow_unauthenticated", "manage_config_proxies",
                            "allow_listen", "allow_upstream", "proxy_metrics", "runtime_metrics"}});
    if (!f) return;
    // Writing the section at all asks for the API; `listen: off` is the way to keep it off.
    tp.enabled = true;
    tp.pos = e.key_pos;
    if (const Entry* l = f->get("listen")) {
        if (is_off(*l)) {
            tp.enabled = false;
        } else if (auto v = get_host_port(r, *l, true)) {
            tp.listen = *v;
            listens.push_back({"toxiproxy.listen", *v, l->value_pos});
        }
    }
    auto flag = [&](const char* key, bool& out) {
        if (const Entry* b = f->get(key)) {
            if (auto v = get_bool(r, *b)) out = *v;
        }
    };
    flag("allow_unauthenticated", tp.allow_unauthenticated);
    flag("manage_config_proxies", tp.manage_config_proxies);
    flag("proxy_metrics", tp.proxy_metrics);
    flag("runtime_metrics", tp.runtime_metrics);
    if (const Entry* a = f->get("allow_listen")) tp.allow_listen = read_patterns(r, *a);
    if (const Entry* a = f->get("allow_upstream")) tp.allow_upstream = read_patterns(r, *a);
}

void read_log(Reader& r, const Entry& e, LogConfig& log) {
    auto f = Fields::read(r, e.value, e.value_pos, {"log", "in log", "log.", {"level", "format"}});
    if (!f) return;
    if (const Entry* l = f->get("level")) {
        if (auto v = get_enum<LogLevel>(r, *l,
                                        {{"error", LogLevel::error},
                                         {"warn", LogLevel::warn},
                                         {"info", LogLevel::info},
                                         {"debug", LogLevel::debug}}))
            log.level = *v;
    }
    if (const Entry* l = f->get("format")) {
        if (auto v =
                get_enum<LogFormat>(r, *l, {{"text", LogFormat::text}, {"json", LogFormat::json}}))
            log.format = *v;
    }
}

std::optional<unsigned> read_workers(Reader& r, const Entry& e) {
    if (e.value.IsScalar()) {
        const std::string& s = e.value.Scalar();
        if (s == "auto") return 0u;
        bool digits = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
            return (c >= '0' && c <= '9') || c == '-';
        });
        if (!digits) {
            r.error(e.value_pos,
                    "workers: expected an integer >= 1 or \"auto\", found " + quote(s));
            return std::nullopt;
        }
    }
    auto v = get_uint(r, e, 1, kMaxWorkers);
    if (!v) return std::nullopt;
    return static_cast<unsigned>(*v);
}

void check_listen_conflicts(Reader& r, const std::vector<ListenUse>& listens) {
    for (size_t i = 0; i < listens.size(); ++i) {
        if (listens[i].addr.port == 0) continue;
        for (size_t j = 0; j < i; ++j) {
            if (listens[j].addr.port == listens[i].addr.port &&
                same_host(listens[j].addr.host, listens[i].addr.host)) {
                std::string at =
                    listens[j].pos.line > 0 ? " (at " + position_str(listens[j].pos) + ")" : "";
                r.error(listens[i].pos, "listen address " + listens[i].addr.str() +
                                            " is already used by " + listens[j].owner + at);
                break;
            }
        }
    }
}

Config read_config(Reader& r, const YAML::Node& root) {
    Config c;
    if (root.IsNull()) return c;
    if (!root.IsMap()) {
        Position p = r.pos(root);
        r.error(p.line > 0 ? p : Position{1, 1},
                "expected a mapping at the top level, found " + describe(root));
        return c;
    }
    auto top =
        Fields::read(r, root, Position{1, 1}, {"configuration", "at top level", "", kTopKeys});
    if (!top) return c;

    std::vector<ListenUse> listens;
    // Only addresses written in the file are compared: defaults may be overridden on the
    // command line, and a conflict the user cannot see in the file would only confuse.
    if (const Entry* e = top->get("admin")) read_admin(r, *e, c.admin, listens);
    if (const Entry* e = top->get("log")) read_log(r, *e, c.log);
    if (const Entry* e = top->get("seed"); e != nullptr && !e->is_null()) {
        c.seed = get_uint(r, *e, 0, UINT64_MAX);
    }
    if (const Entry* e = top->get("shutdown_grace")) {
        if (auto v = get_duration(r, *e, false)) c.shutdown_grace = *v;
    }
    if (const Entry* e = top->get("workers")) {
        if (auto v = read_workers(r, *e)) c.workers = *v;
    }
    if (const Entry* e = top->get("toxiproxy")) read_toxiproxy(r, *e, c.toxiproxy, listens);
    if (const Entry* e = top->get("watch")) {
        if (auto v = get_bool(r, *e)) c.watch = *v;
    }

    if (const Entry* e = top->get("proxies"); e != nullptr && !e->is_null()) {
        if (!e->value.IsSequence()) {
            r.error(e->value_pos, "proxies: expected a sequence, found " + describe(e->value));
        } else {
            std::vector<std::pair<std::string, Position>> seen;
            for (const auto& item : e->value) {
                Position ip = r.pos(item);
                auto pr = read_proxy(r, item, ip.line > 0 ? ip : e->value_pos);
                if (pr.name) {
                    auto dup = std::find_if(seen.begin(), seen.end(),
                                            [&](const auto& s) { return s.first == *pr.name; });
                    if (dup != seen.end()) {
                        r.error(pr.name_pos, "duplicate proxy name " + quote(*pr.name) +
                                                 " (first defined at " + position_str(dup->second) +
                                                 ")");
                    } else {
                        seen.emplace_back(*pr.name, pr.pos);
                    }
                }
                if (pr.listen) listens.push_back(*pr.listen);
                if (pr.proxy) c.proxies.push_back(std::move(*pr.proxy));
            }
        }
    }
    check_listen_conflicts(r, listens);
    for (size_t i = 0; i < c.proxies.size(); ++i) {
        std::string loop = upstream_loop(c.proxies, i);
        if (!loop.empty())
            r.error(c.proxies[i].upstream_pos, "proxy " + quote(c.proxies[i].name) + ": " + loop);
    }
    // Toxiproxy clients cannot send a bearer token: the token would protect the admin API
    // while anyone reaching the Toxiproxy port could still change every proxy.
    if (c.toxiproxy.enabled && !c.admin.token.empty() && !c.toxiproxy.allow_unauthenticated) {
        r.error(c.toxiproxy.pos,
                "toxiproxy: the Toxiproxy API cannot check admin.token (Toxiproxy clients send "
                "no credentials), so anyone who reaches toxiproxy.listen could change every "
                "proxy; set toxiproxy.allow_unauthenticated: true to run it anyway");
    }
    return c;
}

// The token yaml-cpp stopped at, for a message: one punctuation character, or a word.
std::string token_at(const std::string& text, int pos) {
    if (pos < 0 || static_cast<size_t>(pos) >= text.size()) return "";
    auto p = static_cast<size_t>(pos);
    auto word = [](char c) {
        return c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != ',' && c != '[' &&
               c != ']' && c != '{' && c != '}';
    };
    size_t end = p + 1;
    if (word(text[p])) {
        while (end < text.size() && end - p < 32 && word(text[end])) ++end;
    }
    return text.substr(p, end - p);
}

}  // namespace

std::string position_str(Position p) {
    return std::to_string(p.line) + ":" + std::to_string(p.col);
}

std::optional<YAML::Node> parse_document(Reader& r, const std::string& text) {
    if (auto m = flow_too_deep(text)) {
        r.error(r.pos(*m), "invalid YAML: nesting deeper than " + std::to_string(kMaxFlowDepth) +
                               " levels of [ ] or { }");
        return std::nullopt;
    }
    if (auto many = too_many_documents(text)) {
        r.error(r.pos(many->second), "expected one YAML document, found " +
                                         std::to_string(many->markers) + " document markers (---)");
        return std::nullopt;
    }
    // Not YAML::LoadAll: it never returns on a stray `,` (see scan_documents). The stream is
    // scanned without building anything, then only the first document is built.
    DocumentScan scan;
    YAML::Node doc;
    try {
        scan = scan_documents(text);
        if (scan.stray) {
            r.error(
                r.pos(*scan.stray),
                "invalid YAML: expected " +
                    std::string(scan.stray_after_value ? "the end of the document" : "a value") +
                    ", found " + quote(token_at(text, scan.stray->pos)));
            return std::nullopt;
        }
        if (scan.documents > 1) {
            r.error(r.pos(scan.second),
                    "expected one YAML document, found " + std::to_string(scan.documents));
            return std::nullopt;
        }
        if (scan.documents == 0) return YAML::Node();
        doc = YAML::Load(text);
    } catch (const YAML::Exception& e) {
        // DeepRecursion (absurd nesting) is a ParserException too, so it lands here.
        r.error(r.pos(e.mark), "invalid YAML: " + e.msg);
        return std::nullopt;
    }
    return doc;
}

}  // namespace tcpfault::config::detail

namespace tcpfault::config {

LoadResult load_string(const std::string& input, const std::string& source_name, EnvLookup env) {
    LoadResult res;
    auto too_large = [&] {
        res.errors.push_back({source_name, Position{}, "config too large (the limit is 4 MiB)"});
        return res;
    };
    if (input.size() > detail::kMaxInputBytes) return too_large();
    std::string_view text = input;
    // yaml-cpp would skip a BOM too, but then its offsets would no longer match ours.
    if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);

    LineIndex index(text);
    EnvExpansion expanded = expand_env(text, env);
    if (!expanded.errors.empty()) {
        for (const auto& e : expanded.errors) {
            if (res.errors.size() == detail::kMaxErrors) {
                res.errors.push_back(
                    {source_name, Position{},
                     "too many errors; stopped after " + std::to_string(detail::kMaxErrors)});
                break;
            }
            res.errors.push_back({source_name, index.at(e.offset), e.message});
        }
        return res;
    }
    if (expanded.text.size() > detail::kMaxInputBytes) return too_large();

    detail::Reader r(source_name, [&](const YAML::Mark& m) {
        return index.at(expanded.original_offset(static_cast<size_t>(m.pos)));
    });
    Config config;
    try {
        if (auto doc = detail::parse_document(r, expanded.text))
            config = detail::read_config(r, *doc);
    } catch (const detail::Abort&) {
    }
    res.errors = r.take_errors();
    if (!res.errors.empty()) return res;
    res.warnings = r.take_warnings();
    // Valid (a Toxiproxy-style setup creates its proxies at runtime), but often a mistake.
    if (config.proxies.empty()) {
        res.warnings.push_back(
            {source_name, Position{},
             "no proxies defined: nothing is forwarded until proxies are created over the "
             "Toxiproxy API (toxiproxy.listen or --toxiproxy-api)"});
    }
    res.config = std::move(config);
    return res;
}

LoadResult load_file(const std::string& path, EnvLookup env) {
    auto fail = [&](int err) {
        LoadResult res;
        res.errors.push_back(
            {path, Position{}, std::string("cannot read file: ") + std::strerror(err)});
        return res;
    };
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) return fail(errno);
    std::string text;
    char buf[65536];
    while (true) {
        size_t n = std::fread(buf, 1, sizeof buf, f.get());
        text.append(buf, n);
        if (text.size() > detail::kMaxInputBytes) break;  // load_string reports it
        if (n < sizeof buf) {
            if (std::ferror(f.get())) return fail(errno != 0 ? errno : EIO);
            break;
        }
    }
    return load_string(text, path, env);
}

}  // namespace tcpfault::config

#include "api/admin_api.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <ctime>
#include <nlohmann/json.hpp>

#include "api/status_page.hpp"
#include "config/units.hpp"
#include "config/yaml_guard.hpp"
#include "faults/fault_list.hpp"
#include "faults/rule_matcher.hpp"
#include "observe/clock.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {

// Objects keep their keys in the order they were set, so responses read like the docs.
using Json = nlohmann::ordered_json;

// One JSON document and a newline; names and messages that are not UTF-8 (a request path) get
// U+FFFD, so the body is always valid JSON.
HttpResponse json(int status, const Json& body) {
    HttpResponse r;
    r.status = status;
    r.body = body.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
    return r;
}

HttpResponse error(int status, std::string_view message) {
    return json(status, Json{{"error", message}});
}

std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    size_t i = 0;
    while (i < path.size()) {
        size_t j = path.find('/', i);
        if (j == std::string::npos) j = path.size();
        if (j > i) parts.push_back(path.substr(i, j - i));
        i = j + 1;
    }
    return parts;
}

Json rule_json(const config::Rule& r, ProxyServer& p) {
    uint64_t fired = p.fired(r.name);
    bool active = faults::rule_active(r, since_start(), fired);
    return Json{{"name", r.name},
                {"fault", config::fault_name(r.fault)},
                {"enabled", r.enabled},
                {"active", active},
                {"fired", fired}};
}

// `open`: its open connections, with those of earlier instances a reload re-bound.
Json proxy_json(ProxyServer& p, size_t open) {
    const config::Proxy& c = p.config();
    Json rules = Json::array();
    for (const auto& r : c.rules) rules.push_back(rule_json(r, p));
    return Json{{"name", c.name},
                {"listen", p.listen_addr()},
                {"upstream", c.upstream.str()},
                {"protocol", c.protocol == config::Protocol::ftp ? "ftp" : "tcp"},
                {"active_connections", open},
                {"connections_total", p.connections_total()},
                {"bytes_upstream", p.bytes_total(config::Direction::upstream)},
                {"bytes_downstream", p.bytes_total(config::Direction::downstream)},
                {"rules", std::move(rules)}};
}

// One open connection, as listed; built on the connection's own loop.
Json connection_json(const Session& s, unsigned worker) {
    Json rules = Json::array();
    for (const std::string& r : s.rule_names()) rules.push_back(r);
    Json faults = Json::array();
    for (const auto& f : s.faults_applied())
        faults.push_back(Json{{"rule", f.rule}, {"fault", f.fault}});
    uint64_t now = uv_now(s.loop());
    uint64_t age = now > s.started_ms() ? now - s.started_ms() : 0;
    return Json{{"id", s.id()},
                {"client", s.client_addr()},
                {"age_seconds", static_cast<double>(age) / 1000.0},
                {"bytes_upstream", s.bytes_up()},
                {"bytes_downstream", s.bytes_down()},
                {"worker", worker},
                {"rules", std::move(rules)},
                {"state", s.state()},
                {"faults", std::move(faults)},
                {"blackholed", s.blackholed()}};
}

// "2026-12-07T02:44:19.908Z"
std::string iso_time(uint64_t unix_ms) {
    std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[40];
    size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(buf + n, sizeof buf - n, ".%03uZ", static_cast<unsigned>(unix_ms % 1000));
    return buf;
}

Json event_json(const Event& e) {
    return Json{{"seq", e.seq},
                {"time", iso_time(e.unix_ms)},
                {"kind", e.kind},
                {"proxy", e.proxy},
                {"conn", e.conn},
                {"client", e.client},
                {"rule", e.rule},
                {"fault", e.fault},
                {"detail", e.detail},
                {"bytes_upstream", e.bytes_up},
                {"bytes_downstream", e.bytes_down}};
}

// A query parameter the caller reads: its name, bounds, and where the value goes.
struct QueryParam {
    std::string_view name;
    uint64_t min;
    uint64_t max;
    std::optional<uint64_t>* out;
};

// Reads `a=1&b=2` into the named parameters (decimal numbers within their bounds); "" or the
// error. Unknown names are errors, so a typo is not silently a full listing.
std::string read_query(std::string_view query, std::initializer_list<QueryParam> params) {
    auto shown = [](std::string_view v) {
        return "\"" + std::string(v.substr(0, 64)) + (v.size() > 64 ? "...\"" : "\"");
    };
    while (!query.empty()) {
        size_t amp = query.find('&');
        std::string_view part = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        if (part.empty()) continue;
        size_t eq = part.find('=');
        std::string_view key = part.substr(0, eq);
        std::string_view value = eq == std::string_view::npos ? "" : part.substr(eq + 1);
        const QueryParam* p = nullptr;
        std::string names;
        for (const QueryParam& q : params) {
            if (q.name == key) p = &q;
            names += (names.empty() ? "" : ", ") + std::string(q.name);
        }
        if (p == nullptr)
            return "unknown query parameter " + shown(key) + " (expected one of: " + names + ")";
        uint64_t v = 0;
        auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
        if (value.empty() || ec != std::errc() || end != value.data() + value.size() ||
            v < p->min || v > p->max)
            return std::string(key) + ": expected a whole number from " + std::to_string(p->min) +
                   " to " + std::to_string(p->max) + ", found " + shown(value);
        *p->out = v;
    }
    return "";
}

std::optional<uint64_t> parse_id(const std::string& s) {
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return v;
}

constexpr uint64_t kMaxConnectionPage = 10000;
constexpr uint64_t kDefaultEventPage = 100;
constexpr uint64_t kMaxEventPage = 1000;

// Validates a rule body exactly as the file loader would, plus what only the proxy knows.
std::optional<config::Rule> parse_body(ProxyServer& p, const std::string& body, std::string* err) {
    config::RuleResult r = config::parse_rule(body, "request body");
    if (!r.rule) {
        for (const auto& d : r.errors) *err += (err->empty() ? "" : "; ") + d.str();
        return std::nullopt;
    }
    if (r.rule->match.channel != config::Channel::any &&
        p.config().protocol != config::Protocol::ftp) {
        *err = "match.channel applies only to proxies with protocol: ftp";
        return std::nullopt;
    }
    return r.rule;
}

std::shared_ptr<config::Proxy> copy_of(ProxyServer& p) {
    return std::make_shared<config::Proxy>(p.config());
}

config::Rule* find_rule(config::Proxy& c, const std::string& name) {
    auto it = std::find_if(c.rules.begin(), c.rules.end(),
                           [&](const config::Rule& r) { return r.name == name; });
    return it == c.rules.end() ? nullptr : &*it;
}

}  // namespace

bool AdminApi::authorized(const HttpRequest& req) const {
    if (hooks_.token.empty()) return true;
    const std::string* h = req.header("authorization");
    if (h == nullptr) return false;
    std::string expected = "Bearer " + hooks_.token;
    // Constant time in the token's length: the API may be reachable from other containers.
    if (h->size() != expected.size()) return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < expected.size(); ++i)
        diff |= static_cast<unsigned char>((*h)[i] ^ expected[i]);
    return diff == 0;
}

ProxyServer* AdminApi::find(const std::string& name) {
    for (ProxyServer* p : hooks_.servers())
        if (p->name() == name) return p;
    return nullptr;
}

void AdminApi::commit(ProxyServer& p, const std::shared_ptr<config::Proxy>& c,
                      const std::string& replaced) {
    p.update_config(c, replaced);
    // Earlier instances a reload re-bound keep their own addresses and take the same rules.
    for (ProxyServer* q : instances(p))
        if (q != &p) q->take_rules(c->rules, replaced);
}

size_t AdminApi::open_connections(ProxyServer& p) {
    size_t n = 0;
    for (ProxyServer* q : instances(p)) n += q->active();
    return n;
}

std::vector<ProxyServer*> AdminApi::instances(ProxyServer& p) {
    std::vector<ProxyServer*> out{&p};
    for (ProxyServer* q : hooks_.all_servers())
        if (q != &p && q->retired() && q->name() == p.name()) out.push_back(q);
    return out;
}

HttpResponse AdminApi::handle(const HttpRequest& req) {
    std::vector<std::string> parts = split_path(req.path);
    bool changes_state = req.method != "GET" && req.method != "HEAD";
    if (changes_state && !parts.empty() && parts[0] == "api" && !authorized(req))
        return error(401, "missing or invalid bearer token (Authorization: Bearer <token>)");
    HttpResponse r = route(req, parts);
    if (changes_state && r.status < 300)
        log::info("admin api", {{"method", req.method}, {"path", req.path}, {"status", r.status}});
    return r;
}

HttpResponse AdminApi::route(const HttpRequest& req, const std::vector<std::string>& parts) {
    const std::string& m = req.method;
    auto only = [&](const char* method) {
        return m == method || (m == "HEAD" && std::string(method) == "GET");
    };
    size_t n = parts.size();
    if (n == 1 && parts[0] == "healthz") {
        if (!only("GET")) return error(405, "method not allowed");
        HttpResponse r;
        r.content_type = "text/plain; charset=utf-8";
        r.body = "ok\n";
        return r;
    }
    if (n == 1 && parts[0] == "metrics") {
        if (!only("GET")) return error(405, "method not allowed");
        return metrics();
    }
    // The status page: `/` and the files it loads (api/status/).
    if (n == 0 || (n == 1 && find_status_file(parts[0]) != nullptr)) {
        if (!only("GET")) return error(405, "method not allowed");
        return status_page(n == 0 ? "" : parts[0]);
    }
    if (n == 2 && parts[0] == "api" && parts[1] == "events") {
        if (!only("GET")) return error(405, "method not allowed");
        return list_events(req);
    }
    if (n < 2 || parts[0] != "api") return error(404, "no such path: " + req.path);
    if (n == 2 && parts[1] == "reload") {
        if (m != "POST") return error(405, "method not allowed (use POST)");
        std::string err = hooks_.reload();
        if (!err.empty()) return error(400, "reload failed, running config kept: " + err);
        return json(200, Json{{"reloaded", true}});
    }
    if (parts[1] != "proxies") return error(404, "no such path: " + req.path);
    if (n == 2) {
        if (!only("GET")) return error(405, "method not allowed");
        return list_proxies();
    }
    ProxyServer* p = find(parts[2]);
    if (p == nullptr) return error(404, "no such proxy: " + parts[2]);
    if (n == 3) {
        if (!only("GET")) return error(405, "method not allowed");
        return json(200, proxy_json(*p, open_connections(*p)));
    }
    if (n == 4 && parts[3] == "connections") {
        if (!only("GET")) return error(405, "method not allowed");
        return list_connections(*p, req);
    }
    if (n >= 5 && parts[3] == "connections") return connection_route(req, *p, parts);
    if (n == 4 && parts[3] == "restart") {
        if (m != "POST") return error(405, "method not allowed (use POST)");
        return restart(*p, req.body);
    }
    if (parts[3] != "rules") return error(404, "no such path: " + req.path);
    if (n == 4) {
        if (m == "POST") return add_rule(*p, req.body);
        if (only("GET")) {
            Json out = Json::array();
            for (const auto& r : p->config().rules) out.push_back(rule_json(r, *p));
            return json(200, out);
        }
        return error(405, "method not allowed");
    }
    const std::string& rule = parts[4];
    if (n == 5) {
        if (m == "PUT") return replace_rule(*p, rule, req.body);
        if (m == "DELETE") return delete_rule(*p, rule);
        if (only("GET")) {
            config::Proxy c = p->config();
            config::Rule* r = find_rule(c, rule);
            if (r == nullptr) return error(404, "no such rule: " + rule);
            return json(200, rule_json(*r, *p));
        }
        return error(405, "method not allowed");
    }
    if (n == 6 && (parts[5] == "enable" || parts[5] == "disable")) {
        if (m != "POST") return error(405, "method not allowed (use POST)");
        return switch_rule(*p, rule, parts[5] == "enable");
    }
    return error(404, "no such path: " + req.path);
}

HttpResponse AdminApi::list_proxies() {
    Json out = Json::array();
    for (ProxyServer* p : hooks_.servers()) out.push_back(proxy_json(*p, open_connections(*p)));
    return json(200, out);
}

HttpResponse AdminApi::list_connections(ProxyServer& p, const HttpRequest& req) {
    std::optional<uint64_t> limit, after;
    std::string err = read_query(
        req.query, {{"limit", 1, kMaxConnectionPage, &limit}, {"after", 0, UINT64_MAX, &after}});
    if (!err.empty()) return error(400, err);
    if (!limit && !after) {
        // The whole listing, in no particular order (as before paging existed).
        Json out = Json::array();
        for (ProxyServer* q : instances(p))
            q->for_each_session([&](const Session& s, unsigned worker) {
                out.push_back(connection_json(s, worker));
            });
        HttpResponse r = json(200, out);
        r.headers.emplace_back("X-Total-Count", std::to_string(out.size()));
        return r;
    }
    // A page in id order: each loop hands over its lowest ids above the cursor, built on its
    // own loop; the merge keeps the lowest `limit` of them.
    size_t want = static_cast<size_t>(limit.value_or(kMaxConnectionPage));
    std::vector<std::pair<uint64_t, Json>> rows;
    // One more than asked for tells whether another page follows.
    size_t total = 0;
    for (ProxyServer* q : instances(p))
        total += q->for_each_session_page(after.value_or(0), want + 1,
                                          [&](const Session& s, unsigned worker) {
                                              rows.emplace_back(s.id(), connection_json(s, worker));
                                          });
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    bool more = rows.size() > want;
    if (more) rows.resize(want);
    Json out = Json::array();
    for (auto& [id, row] : rows) out.push_back(std::move(row));
    HttpResponse r = json(200, out);
    r.headers.emplace_back("X-Total-Count", std::to_string(total));
    if (more)
        r.headers.emplace_back("Link", "</api/proxies/" + p.name() + "/connections?after=" +
                                           std::to_string(rows.back().first) +
                                           "&limit=" + std::to_string(want) + ">; rel=\"next\"");
    return r;
}

HttpResponse AdminApi::connection_route(const HttpRequest& req, ProxyServer& p,
                                        const std::vector<std::string>& parts) {
    const std::string& m = req.method;
    size_t n = parts.size();
    if (n > 6 || (n == 6 && parts[5] != "fault")) return error(404, "no such path: " + req.path);
    std::optional<uint64_t> id = parse_id(parts[4]);
    if (!id) return error(404, "no such connection: " + parts[4]);
    if (n == 5) {
        if (m == "GET" || m == "HEAD") return act_on_connection(p, *id, nullptr);
        if (m == "DELETE") {
            // Both sides reset at once, bytes not yet sent dropped: "kill this connection".
            static const config::FaultSpec kill = [] {
                faults::ResetFault f;
                f.flush = false;
                return config::FaultSpec{f};
            }();
            return act_on_connection(
                p, *id, [](Session& s) { return s.apply_api_fault(kill, kApiRule, true); });
        }
        return error(405, "method not allowed (use GET or DELETE)");
    }
    if (m == "POST") {
        config::FaultBodyResult body = config::parse_fault_body(req.body, "request body");
        if (!body.fault) {
            std::string msg;
            for (const auto& d : body.errors) msg += (msg.empty() ? "" : "; ") + d.str();
            return error(400, msg);
        }
        if (faults::fault_scope(*body.fault) == faults::Scope::proxy)
            return error(400, "fault type \"" + std::string(config::fault_name(*body.fault)) +
                                  "\" acts on the proxy, not on one connection (use a rule, or "
                                  "POST /api/proxies/" +
                                  p.name() + "/restart)");
        const config::FaultSpec& f = *body.fault;
        return act_on_connection(p, *id,
                                 [&f](Session& s) { return s.apply_api_fault(f, kApiRule); });
    }
    if (m == "DELETE")
        return act_on_connection(p, *id, [](Session& s) { return s.lift_api_faults(kApiRule); });
    return error(405, "method not allowed (use POST or DELETE)");
}

HttpResponse AdminApi::act_on_connection(ProxyServer& p, uint64_t id,
                                         const std::function<Session::ApiResult(Session&)>& act) {
    Session::ApiResult result = Session::ApiResult::applied;
    Json conn;
    bool found = false;
    for (ProxyServer* q : instances(p)) {
        found = q->with_session(id, [&](Session& s, unsigned worker) {
            if (act) result = act(s);
            conn = connection_json(s, worker);
        });
        if (found) break;
    }
    std::string which = "connection " + std::to_string(id);
    if (!found)
        return error(404, "no such connection: " + std::to_string(id) + " in proxy " + p.name() +
                              " (never opened, or closed since)");
    switch (result) {
        case Session::ApiResult::applied:
            return json(200, conn);
        case Session::ApiResult::ending:
            return error(409, which + " is already ending: " + conn["state"].get<std::string>());
        case Session::ApiResult::connecting:
            return error(409, which +
                                  " is not connected to its upstream yet: faults act once it is "
                                  "(DELETE resets it now)");
        case Session::ApiResult::proxy_scope:
            break;
    }
    return error(400, "that fault acts on the proxy, not on one connection");
}

HttpResponse AdminApi::list_events(const HttpRequest& req) {
    std::optional<uint64_t> after, limit;
    std::string err = read_query(
        req.query, {{"after", 0, UINT64_MAX, &after}, {"limit", 1, kMaxEventPage, &limit}});
    if (!err.empty()) return error(400, err);
    size_t want = static_cast<size_t>(limit.value_or(kDefaultEventPage));
    EventLog::Page page;
    if (hooks_.events != nullptr)
        page = after ? hooks_.events->after(*after, want) : hooks_.events->newest(want);
    Json events = Json::array();
    for (const Event& e : page.events) events.push_back(event_json(e));
    uint64_t next = !page.events.empty() ? page.events.back().seq
                    : after              ? std::min(*after, page.latest)
                                         : page.latest;
    return json(200, Json{{"events", std::move(events)},
                          {"next", next},
                          {"latest", page.latest},
                          {"dropped", page.dropped},
                          {"more", page.more},
                          {"capacity", hooks_.events != nullptr ? hooks_.events->capacity() : 0}});
}

HttpResponse AdminApi::status_page(const std::string& name) {
    const StatusFile* f = find_status_file(name);
    if (f == nullptr) return error(404, "no such path: /" + name);
    HttpResponse r;
    r.content_type = std::string(f->content_type);
    r.body = std::string(f->body);
    // The page and its files come from this binary: a new binary's page is fetched afresh,
    // nothing else may frame or script it.
    r.headers.emplace_back("Cache-Control", "no-cache");
    r.headers.emplace_back("X-Content-Type-Options", "nosniff");
    r.headers.emplace_back("Content-Security-Policy",
                           "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                           "base-uri 'none'; form-action 'none'");
    r.headers.emplace_back("Referrer-Policy", "no-referrer");
    return r;
}

HttpResponse AdminApi::add_rule(ProxyServer& p, const std::string& body) {
    std::string err;
    auto rule = parse_body(p, body, &err);
    if (!rule) return error(400, err);
    auto c = copy_of(p);
    if (find_rule(*c, rule->name) != nullptr)
        return error(409, "rule " + rule->name + " already exists in proxy " + c->name);
    c->rules.push_back(std::move(*rule));
    commit(p, c);
    return json(201, rule_json(c->rules.back(), p));
}

HttpResponse AdminApi::replace_rule(ProxyServer& p, const std::string& name,
                                    const std::string& body) {
    std::string err;
    auto rule = parse_body(p, body, &err);
    if (!rule) return error(400, err);
    if (rule->name != name)
        return error(400, "rule name \"" + rule->name + "\" in the body does not match \"" + name +
                              "\" in the path");
    auto c = copy_of(p);
    config::Rule* r = find_rule(*c, name);
    if (r == nullptr) return error(404, "no such rule: " + name);
    *r = std::move(*rule);
    commit(p, c, name);
    return json(200, rule_json(*find_rule(*c, name), p));
}

HttpResponse AdminApi::delete_rule(ProxyServer& p, const std::string& name) {
    auto c = copy_of(p);
    auto it = std::find_if(c->rules.begin(), c->rules.end(),
                           [&](const config::Rule& r) { return r.name == name; });
    if (it == c->rules.end()) return error(404, "no such rule: " + name);
    c->rules.erase(it);
    commit(p, c);
    return json(200, Json{{"deleted", name}});
}

HttpResponse AdminApi::switch_rule(ProxyServer& p, const std::string& name, bool enabled) {
    auto c = copy_of(p);
    config::Rule* r = find_rule(*c, name);
    if (r == nullptr) return error(404, "no such rule: " + name);
    r->enabled = enabled;
    commit(p, c);
    return json(200, rule_json(*find_rule(*c, name), p));
}

HttpResponse AdminApi::restart(ProxyServer& p, const std::string& body) {
    config::Duration downtime{0};
    if (body.find_first_not_of(" \t\r\n") != std::string::npos) {
        if (config::flow_too_deep(body))
            return error(400, "body nests too deeply; expected {\"downtime\": \"5s\"}");
        try {
            YAML::Node n = YAML::Load(body);
            if (!n.IsMap())
                return error(400, "body must be a JSON object like {\"downtime\": \"5s\"}");
            for (const auto& kv : n) {
                std::string key = kv.first.as<std::string>();
                if (key != "downtime")
                    return error(400, "unknown key \"" + key + "\" (expected one of: downtime)");
                auto d = config::parse_duration(kv.second.Scalar());
                if (!d) return error(400, "downtime: " + d.error);
                downtime = *d;
            }
        } catch (const YAML::Exception& e) {
            return error(400, std::string("malformed body: ") + e.what());
        }
    }
    size_t open = open_connections(p);
    p.restart(downtime);
    // The crashed server's connections include those of earlier instances still finishing.
    for (ProxyServer* q : instances(p))
        if (q != &p) q->abort_sessions(true);
    if (hooks_.events != nullptr) {
        Event e;
        e.kind = "restart";
        e.proxy = p.name();
        e.rule = kApiRule;
        e.fault = "restart";
        e.detail = std::to_string(open) + " open connections reset, downtime " +
                   config::format_duration(downtime);
        hooks_.events->add(std::move(e));
    }
    return json(200, Json{{"reset", open}, {"downtime", config::format_duration(downtime)}});
}

HttpResponse AdminApi::metrics() {
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    if (hooks_.metrics == nullptr) return r;
    sync_all_metrics(hooks_.all_servers());
    r.body = hooks_.metrics->render();
    return r;
}

}  // namespace tcpfault

#include "api/admin_api.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "config/units.hpp"
#include "config/yaml_guard.hpp"
#include "faults/rule_matcher.hpp"
#include "observe/clock.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {

// Objects keep their keys in the order they were set, so responses read like the SPEC.
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

Json proxy_json(ProxyServer& p) {
    const config::Proxy& c = p.config();
    Json rules = Json::array();
    for (const auto& r : c.rules) rules.push_back(rule_json(r, p));
    return Json{{"name", c.name},
                {"listen", p.listen_addr()},
                {"upstream", c.upstream.str()},
                {"protocol", c.protocol == config::Protocol::ftp ? "ftp" : "tcp"},
                {"active_connections", p.active()},
                {"rules", std::move(rules)}};
}

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
        return json(200, proxy_json(*p));
    }
    if (n == 4 && parts[3] == "connections") {
        if (!only("GET")) return error(405, "method not allowed");
        return list_connections(*p);
    }
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
    for (ProxyServer* p : hooks_.servers()) out.push_back(proxy_json(*p));
    return json(200, out);
}

HttpResponse AdminApi::list_connections(ProxyServer& p) {
    Json out = Json::array();
    uint64_t now = uv_now(p.loop());
    p.for_each_session([&](const Session& s, unsigned worker) {
        Json rules = Json::array();
        for (const std::string& r : s.rule_names()) rules.push_back(r);
        out.push_back(Json{{"id", s.id()},
                           {"client", s.client_addr()},
                           {"age_seconds", static_cast<double>(now - s.started_ms()) / 1000.0},
                           {"bytes_upstream", s.bytes_up()},
                           {"bytes_downstream", s.bytes_down()},
                           {"worker", worker},
                           {"rules", std::move(rules)},
                           {"blackholed", s.blackholed()}});
    });
    return json(200, out);
}

HttpResponse AdminApi::add_rule(ProxyServer& p, const std::string& body) {
    std::string err;
    auto rule = parse_body(p, body, &err);
    if (!rule) return error(400, err);
    auto c = copy_of(p);
    if (find_rule(*c, rule->name) != nullptr)
        return error(409, "rule " + rule->name + " already exists in proxy " + c->name);
    c->rules.push_back(std::move(*rule));
    p.update_config(c);
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
    p.update_config(c, name);
    return json(200, rule_json(*find_rule(*c, name), p));
}

HttpResponse AdminApi::delete_rule(ProxyServer& p, const std::string& name) {
    auto c = copy_of(p);
    auto it = std::find_if(c->rules.begin(), c->rules.end(),
                           [&](const config::Rule& r) { return r.name == name; });
    if (it == c->rules.end()) return error(404, "no such rule: " + name);
    c->rules.erase(it);
    p.update_config(c);
    return json(200, Json{{"deleted", name}});
}

HttpResponse AdminApi::switch_rule(ProxyServer& p, const std::string& name, bool enabled) {
    auto c = copy_of(p);
    config::Rule* r = find_rule(*c, name);
    if (r == nullptr) return error(404, "no such rule: " + name);
    r->enabled = enabled;
    p.update_config(c);
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
    size_t open = p.active();
    p.restart(downtime);
    return json(200, Json{{"reset", open}, {"downtime", config::format_duration(downtime)}});
}

HttpResponse AdminApi::metrics() {
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    if (hooks_.metrics == nullptr) return r;
    for (ProxyServer* p : hooks_.all_servers()) p->sync_metrics();
    r.body = hooks_.metrics->render();
    return r;
}

}  // namespace tcpfault

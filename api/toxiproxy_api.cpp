#include "api/toxiproxy_api.hpp"

#include <uv.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>

#include "api/toxiproxy_metrics.hpp"
#include "api/toxiproxy_toxics.hpp"
#include "observe/log.hpp"

namespace tcpfault {

using toxiproxy::Error;
using toxiproxy::Json;
using toxiproxy::ProxySpec;
using toxiproxy::ProxyTable;
using toxiproxy::Toxic;

namespace {

// ---------------------------------------------------------------------------------------------
// Responses, as Toxiproxy's Go server writes them.

HttpResponse json_response(int status, const Json& body) {
    HttpResponse r;
    r.status = status;
    r.content_type = "application/json";
    r.body = toxiproxy::dump(body);
    return r;
}

// Go's http.Error: text/plain, nosniff, the JSON {"error","status"} and a newline.
HttpResponse api_error(int status, const std::string& message) {
    HttpResponse r;
    r.status = status;
    r.content_type = "text/plain; charset=utf-8";
    r.headers.emplace_back("X-Content-Type-Options", "nosniff");
    r.body = toxiproxy::dump(Json{{"error", message}, {"status", status}}) + "\n";
    return r;
}

HttpResponse api_error(const Error& e) {
    return api_error(e.status, e.message);
}

HttpResponse bad_body(const std::string& reason) {
    return api_error(400, "bad request body: " + reason);
}

HttpResponse no_content() {
    HttpResponse r;
    r.status = 204;
    r.content_type.clear();
    return r;
}

HttpResponse not_found_page() {
    HttpResponse r;
    r.status = 404;
    r.content_type = "text/plain; charset=utf-8";
    r.headers.emplace_back("X-Content-Type-Options", "nosniff");
    r.body = "404 page not found\n";
    return r;
}

std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    if (path.empty() || path[0] != '/') return parts;
    size_t i = 1;
    while (true) {
        size_t j = path.find('/', i);
        if (j == std::string::npos) {
            parts.push_back(path.substr(i));
            return parts;
        }
        parts.push_back(path.substr(i, j - i));
        i = j + 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies

// A proxy object of POST /proxies or /populate: "" or the reason (a 400, "bad request body").
std::string decode_proxy(const Json& v, ProxySpec& spec) {
    if (!v.is_object() && !v.is_null())
        return "expected a proxy object, found " + toxiproxy::kind_of(v);
    for (std::string e : {toxiproxy::read_string(v, "name", spec.name),
                          toxiproxy::read_string(v, "listen", spec.listen),
                          toxiproxy::read_string(v, "upstream", spec.upstream),
                          toxiproxy::read_bool(v, "enabled", spec.enabled)}) {
        if (!e.empty()) return e;
    }
    return "";
}

// A toxic of a -config or /populate entry, checked as POST .../toxics would check it.
Error decode_full_toxic(const Json& v, Toxic& t) {
    std::string e = toxiproxy::decode_toxic(v, t);
    if (e.empty()) e = toxiproxy::decode_attributes(toxiproxy::field(v, "attributes"), t);
    if (e.empty()) e = toxiproxy::check_toxic(t);
    if (e.empty()) e = toxiproxy::check_name(t.name, "toxic name");
    if (!e.empty()) return {400, e};
    return {};
}

struct PopulateEntry {
    ProxySpec spec;
    const Json* toxics = nullptr;
};

// Populate's first phase, as Toxiproxy's: the body's shape and every entry's required fields,
// before anything changes. The entries, or the 400.
Error read_entries(const Json& v, std::vector<PopulateEntry>& out) {
    if (!v.is_array() && !v.is_null())
        return {400,
                "bad request body: expected an array of proxies, found " + toxiproxy::kind_of(v)};
    if (v.is_null()) return {};
    // Each entry may bind a socket: one request's work stays bounded.
    constexpr size_t kMaxEntries = 1000;
    if (v.size() > kMaxEntries)
        return {400, "too many proxies in one request: " + std::to_string(v.size()) + " (at most " +
                         std::to_string(kMaxEntries) + ")"};
    for (size_t i = 0; i < v.size(); ++i) {
        std::string at = " at proxy " + std::to_string(i + 1);
        PopulateEntry e;
        if (std::string err = decode_proxy(v[i], e.spec); !err.empty())
            return {400, "bad request body: " + err + at};
        if (e.spec.name.empty()) return {400, "missing required field: name" + at};
        if (e.spec.upstream.empty()) return {400, "missing required field: upstream" + at};
        if (std::string err = toxiproxy::check_name(e.spec.name, "proxy name"); !err.empty())
            return {400, err + at};
        if (const Json* t = toxiproxy::field(v[i], "toxics")) {
            if (!t->is_array())
                return {400, "bad request body: toxics: expected an array, found " +
                                 toxiproxy::kind_of(*t) + at};
            e.toxics = t;
        }
        out.push_back(std::move(e));
    }
    return {};
}

Error read_toxics(const PopulateEntry& e, size_t index, std::vector<Toxic>& out) {
    if (e.toxics == nullptr) return {};
    for (const Json& item : *e.toxics) {
        Toxic t;
        if (Error err = decode_full_toxic(item, t)) {
            err.message += " at proxy " + std::to_string(index + 1);
            return err;
        }
        out.push_back(std::move(t));
    }
    return {};
}

struct PopulateResult {
    Error error;
    std::vector<std::string> done;  // tcpfault names, in request order
};

// Toxiproxy's populate: after the first phase, each entry in turn is left alone (same
// addresses), replaced or created; the first failure stops there, and what was done before it
// stays done.
PopulateResult run_populate(ProxyTable& table, const Json& v) {
    PopulateResult res;
    std::vector<PopulateEntry> entries;
    res.error = read_entries(v, entries);
    if (res.error) return res;
    for (size_t i = 0; i < entries.size(); ++i) {
        const ProxySpec& spec = entries[i].spec;
        std::vector<Toxic> toxics;
        if ((res.error = read_toxics(entries[i], i, toxics))) return res;
        ProxyServer* existing = table.find(spec.name);
        if (existing != nullptr && table.same_addresses(*existing, spec)) {
            res.done.push_back(existing->name());  // untouched, toxics and all
            continue;
        }
        if (existing != nullptr) {
            if ((res.error = table.may_change(*existing))) return res;
            table.remove(*existing);
        }
        ProxyServer* p = nullptr;
        if ((res.error = table.create(spec, std::move(toxics), &p))) return res;
        res.done.push_back(p->name());
    }
    return res;
}

}  // namespace

ToxiproxyApi::ToxiproxyApi(Hooks hooks, const config::ToxiproxyConfig& cfg)
    : hooks_(std::move(hooks)), cfg_(cfg), table_(hooks_.proxies, cfg) {
    std::random_device rd;
    id_counter_ = rd();
    id_machine_ = rd();
}

// ---------------------------------------------------------------------------------------------
// JSON out

Json ToxiproxyApi::toxics_json(ProxyServer& p) {
    // Toxiproxy walks its upstream chain, then the downstream one.
    Json out = Json::array();
    for (bool upstream : {true, false})
        for (const Toxic& t : table_.toxics(p))
            if (t.upstream == upstream) out.push_back(toxiproxy::toxic_json(t));
    return out;
}

Json ToxiproxyApi::proxy_json(ProxyServer& p) {
    return Json{{"name", table_.name_of(p)},
                {"listen", table_.listen_of(p)},
                {"upstream", table_.upstream_of(p)},
                {"enabled", ProxyTable::enabled(p)},
                {"toxics", toxics_json(p)}};
}

std::string ToxiproxyApi::request_id() {
    // rs/xid's layout: 4 bytes of seconds, 3 of machine id, 2 of pid, 3 of counter, in
    // base32hex (0-9a-v), 20 characters.
    uint8_t raw[12];
    auto secs = static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
    uint32_t pid = static_cast<uint32_t>(uv_os_getpid());
    uint32_t n = ++id_counter_;
    raw[0] = static_cast<uint8_t>(secs >> 24);
    raw[1] = static_cast<uint8_t>(secs >> 16);
    raw[2] = static_cast<uint8_t>(secs >> 8);
    raw[3] = static_cast<uint8_t>(secs);
    raw[4] = static_cast<uint8_t>(id_machine_ >> 16);
    raw[5] = static_cast<uint8_t>(id_machine_ >> 8);
    raw[6] = static_cast<uint8_t>(id_machine_);
    raw[7] = static_cast<uint8_t>(pid >> 8);
    raw[8] = static_cast<uint8_t>(pid);
    raw[9] = static_cast<uint8_t>(n >> 16);
    raw[10] = static_cast<uint8_t>(n >> 8);
    raw[11] = static_cast<uint8_t>(n);
    static const char digits[] = "0123456789abcdefghijklmnopqrstuv";
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    for (uint8_t b : raw) {
        acc = (acc << 8) | b;
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out += digits[(acc >> bits) & 31];
        }
    }
    if (bits > 0) out += digits[(acc << (5 - bits)) & 31];
    return out;
}

// ---------------------------------------------------------------------------------------------
// Routes

HttpResponse ToxiproxyApi::handle(const HttpRequest& req) {
    HttpResponse r = route(req);
    if (req.method != "GET" && r.status < 300)
        log::info("toxiproxy api",
                  {{"method", req.method}, {"path", req.path}, {"status", r.status}});
    return r;
}

HttpResponse ToxiproxyApi::route(const HttpRequest& req) {
    table_.sync();
    std::vector<std::string> parts = split_path(req.path);
    for (const auto& s : parts)
        if (s.empty()) return not_found_page();
    size_t n = parts.size();
    const std::string& m = req.method;

    // gorilla/mux: an unknown path is 404, a known path with another method 405 (empty body);
    // neither passes through the middlewares (no request id).
    std::vector<const char*> methods;
    if (n == 1 && parts[0] == "version")
        methods = {"GET"};
    else if (n == 1 && (parts[0] == "reset" || parts[0] == "populate"))
        methods = {"POST"};
    else if (n == 1 && parts[0] == "proxies")
        methods = {"GET", "POST"};
    else if (n == 1 && parts[0] == "metrics")
        methods = {};  // any method, as Toxiproxy's promhttp handler
    else if (n == 2 && parts[0] == "proxies")
        methods = {"GET", "POST", "PATCH", "DELETE"};
    else if (n == 3 && parts[0] == "proxies" && parts[2] == "toxics")
        methods = {"GET", "POST"};
    else if (n == 4 && parts[0] == "proxies" && parts[2] == "toxics")
        methods = {"GET", "POST", "PATCH", "DELETE"};
    else
        return not_found_page();
    if (!methods.empty() && std::find(methods.begin(), methods.end(), m) == methods.end()) {
        HttpResponse r;
        r.status = 405;
        r.content_type.clear();
        return r;
    }

    HttpResponse r;
    // Toxiproxy refuses browsers, so a web page cannot drive it (CSRF).
    if (const std::string* ua = req.header("user-agent"); ua && ua->rfind("Mozilla/", 0) == 0) {
        r.status = 403;
        r.content_type = "text/plain; charset=utf-8";
        r.headers.emplace_back("X-Content-Type-Options", "nosniff");
        r.body = "User agent not allowed\n";
    } else if (parts[0] == "version") {
        // Toxiproxy's text byte for byte (printf-made, with its space): a constant, no escaping.
        r.content_type = "application/json;charset=utf-8";
        r.body = std::string("{\"version\": \"") + kVersion + "\"}\n";
    } else if (parts[0] == "metrics") {
        r = metrics();
    } else if (parts[0] == "reset") {
        Error e = table_.reset();
        r = e ? api_error(e) : no_content();
    } else if (parts[0] == "populate") {
        r = populate(req.body);
    } else if (n == 1) {
        r = m == "GET" ? list_proxies() : create_proxy(req.body);
    } else if (ProxyServer* p = table_.find(parts[1]); p == nullptr) {
        r = api_error(404, "proxy not found");
    } else if (Error denied = m == "GET" ? Error{} : table_.may_change(*p)) {
        r = api_error(denied);
    } else if (n == 2) {
        if (m == "GET") {
            r = json_response(200, proxy_json(*p));
        } else if (m == "DELETE") {
            table_.remove(*p);
            r = no_content();
        } else {
            r = update_proxy(*p, req.body);
        }
    } else if (n == 3) {
        r = m == "GET" ? json_response(200, toxics_json(*p)) : create_toxic(*p, req.body);
    } else {
        const std::string& name = parts[3];
        if (m == "GET") {
            r = api_error(404, "toxic not found");
            for (const Toxic& t : table_.toxics(*p))
                if (t.name == name) r = json_response(200, toxiproxy::toxic_json(t));
        } else if (m == "DELETE") {
            Error e = table_.remove_toxic(*p, name);
            r = e ? api_error(e) : no_content();
        } else {
            r = update_toxic(*p, name, req.body);
        }
    }
    r.headers.emplace_back("X-Toxiproxy-Request-Id", request_id());
    return r;
}

HttpResponse ToxiproxyApi::list_proxies() {
    // A JSON object keyed by name; Go writes map keys sorted (bytewise, as std::map).
    std::map<std::string, ProxyServer*> by_name;
    for (ProxyServer* p : table_.all()) by_name[table_.name_of(*p)] = p;
    Json out = Json::object();
    for (const auto& [name, p] : by_name) out[name] = proxy_json(*p);
    return json_response(200, out);
}

HttpResponse ToxiproxyApi::create_proxy(const std::string& body) {
    Json v;
    std::string err;
    if (!toxiproxy::parse_json(body, v, &err)) return bad_body(err);
    ProxySpec spec;
    if (err = decode_proxy(v, spec); !err.empty()) return bad_body(err);
    if (spec.name.empty()) return api_error(400, "missing required field: name");
    if (spec.upstream.empty()) return api_error(400, "missing required field: upstream");
    if (err = toxiproxy::check_name(spec.name, "proxy name"); !err.empty())
        return api_error(400, err);
    ProxyServer* p = nullptr;
    if (Error e = table_.create(spec, {}, &p)) return api_error(e);
    return json_response(201, proxy_json(*p));
}

HttpResponse ToxiproxyApi::populate(const std::string& body) {
    // Populate answers {"error":..,"status":..,"proxies":[...]} with the proxies done so far
    // (null when none: Go marshals an empty slice so), as application/json.
    Json v;
    std::string err;
    PopulateResult res;
    if (!toxiproxy::parse_json(body, v, &err))
        res.error = {400, "bad request body: " + err};
    else
        res = run_populate(table_, v);
    Json proxies = nullptr;
    for (const auto& name : res.done) {
        if (ProxyServer* p = hooks_.proxies.find(name)) {
            if (proxies.is_null()) proxies = Json::array();
            proxies.push_back(proxy_json(*p));
        }
    }
    if (!res.error) return json_response(201, Json{{"proxies", std::move(proxies)}});
    return json_response(res.error.status, Json{{"error", res.error.message},
                                                {"status", res.error.status},
                                                {"proxies", std::move(proxies)}});
}

HttpResponse ToxiproxyApi::update_proxy(ProxyServer& p, const std::string& body) {
    Json v;
    std::string err;
    if (!toxiproxy::parse_json(body, v, &err)) return bad_body(err);
    // Fields not given keep their values; a proxy keeps its name.
    ProxySpec want{table_.name_of(p), table_.listen_of(p), table_.upstream_of(p),
                   ProxyTable::enabled(p)};
    if (err = decode_proxy(v, want); !err.empty()) return bad_body(err);
    want.name = table_.name_of(p);
    ProxyServer* now = &p;
    if (Error e = table_.update(now, want)) return api_error(e);
    if (now == nullptr) return api_error(404, "proxy not found");
    return json_response(200, proxy_json(*now));
}

HttpResponse ToxiproxyApi::create_toxic(ProxyServer& p, const std::string& body) {
    Json v;
    std::string err;
    if (!toxiproxy::parse_json(body, v, &err)) return bad_body(err);
    Toxic t;
    if (err = toxiproxy::decode_toxic(v, t); !err.empty()) return api_error(400, err);
    for (const Toxic& other : table_.toxics(p))
        if (other.name == t.name) return api_error(409, "toxic already exists");
    if (err = toxiproxy::decode_attributes(toxiproxy::field(v, "attributes"), t); !err.empty())
        return api_error(400, err);
    if (err = toxiproxy::check_toxic(t); !err.empty()) return api_error(400, err);
    if (err = toxiproxy::check_name(t.name, "toxic name"); !err.empty()) return api_error(400, err);
    Json shown = toxiproxy::toxic_json(t);
    if (Error e = table_.add_toxic(p, std::move(t))) return api_error(e);
    return json_response(200, shown);
}

HttpResponse ToxiproxyApi::update_toxic(ProxyServer& p, const std::string& name,
                                        const std::string& body) {
    const std::vector<Toxic>& list = table_.toxics(p);
    auto it =
        std::find_if(list.begin(), list.end(), [&](const Toxic& t) { return t.name == name; });
    if (it == list.end()) return api_error(404, "toxic not found");
    Json v;
    std::string err;
    if (!toxiproxy::parse_json(body, v, &err)) return bad_body(err);
    if (!v.is_object() && !v.is_null())
        return bad_body("expected an object with attributes and toxicity, found " +
                        toxiproxy::kind_of(v));
    Toxic t = *it;
    if (err = toxiproxy::decode_attributes(toxiproxy::field(v, "attributes"), t); !err.empty())
        return api_error(400, err);
    if (err = toxiproxy::read_number(v, "toxicity", t.toxicity); !err.empty()) return bad_body(err);
    if (err = toxiproxy::check_toxic(t); !err.empty()) return api_error(400, err);
    if (Error e = table_.update_toxic(p, t)) return api_error(e);
    return json_response(200, toxiproxy::toxic_json(t));
}

HttpResponse ToxiproxyApi::metrics() {
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    if (hooks_.metrics) r.body = hooks_.metrics();
    if (cfg_.proxy_metrics) {
        std::vector<toxiproxy::ProxyBytes> bytes;
        for (ProxyServer* p : table_.all()) {
            bytes.push_back({table_.name_of(*p), table_.listen_of(*p), table_.upstream_of(*p),
                             p->bytes_total(config::Direction::upstream),
                             p->bytes_total(config::Direction::downstream)});
        }
        r.body += toxiproxy::proxy_metrics_text(bytes);
    }
    if (cfg_.runtime_metrics) r.body += toxiproxy::runtime_metrics_text();
    return r;
}

// ---------------------------------------------------------------------------------------------
// -config

std::string ToxiproxyApi::check_config(const std::string& text) {
    Json v;
    std::string err;
    if (!toxiproxy::parse_json(text, v, &err)) return err;
    std::vector<PopulateEntry> entries;
    if (Error e = read_entries(v, entries)) return e.message;
    for (size_t i = 0; i < entries.size(); ++i) {
        std::vector<Toxic> toxics;
        if (Error e = read_toxics(entries[i], i, toxics)) return e.message;
    }
    return "";
}

std::string ToxiproxyApi::load_config(const std::string& text) {
    Json v;
    std::string err;
    if (!toxiproxy::parse_json(text, v, &err)) return err;
    table_.sync();
    PopulateResult res = run_populate(table_, v);
    return res.error ? res.error.message : "";
}

}  // namespace tcpfault

// The Toxiproxy API: routes, status codes, headers, JSON shapes, the toxic -> rule mapping and
// the API's own bounds and policy. Requests go straight to handle(); the proxies are real
// ProxyServers on a private loop (listening on 127.0.0.1:0), managed by hooks that stand in for
// App.
#include <doctest/doctest.h>
#include <uv.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "api/toxiproxy_api.hpp"
#include "api/toxiproxy_policy.hpp"
#include "config/units.hpp"
#include "observe/log.hpp"

using namespace tcpfault;
using namespace std::chrono_literals;
using toxiproxy::ProxyTable;
using toxiproxy::Toxic;

namespace {

struct Rig {
    uv_loop_t loop{};
    std::vector<std::unique_ptr<ProxyServer>> servers;
    std::vector<std::unique_ptr<ProxyServer>> retired;
    std::unique_ptr<ToxiproxyApi> api;

    explicit Rig(config::ToxiproxyConfig cfg = {}) {
        log::configure(config::LogLevel::error, config::LogFormat::text);
        uv_loop_init(&loop);
        ToxiproxyApi::Hooks h;
        h.proxies.servers = [this] {
            std::vector<ProxyServer*> out;
            for (auto& s : servers) out.push_back(s.get());
            return out;
        };
        h.proxies.find = [this](const std::string& name) { return server(name); };
        h.proxies.add_proxy = [this](const config::Proxy& p, int* listen_error) {
            return add(p, true, listen_error);
        };
        h.proxies.remove_proxy = [this](const std::string& name) {
            for (auto it = servers.begin(); it != servers.end(); ++it) {
                if ((*it)->name() != name) continue;
                (*it)->stop_accepting();
                (*it)->abort_sessions(true);
                retired.push_back(std::move(*it));
                servers.erase(it);
                return true;
            }
            return false;
        };
        h.metrics = [] { return std::string("tcpfault_up 1\n"); };
        api = std::make_unique<ToxiproxyApi>(std::move(h), cfg);
    }

    ~Rig() {
        for (auto& s : servers) {
            s->stop_accepting();
            retired.push_back(std::move(s));
        }
        servers.clear();
        uv_run(&loop, UV_RUN_DEFAULT);
        retired.clear();
        uv_loop_close(&loop);
        log::configure(config::LogLevel::info, config::LogFormat::text);
    }

    // A proxy as App starts one; runtime: made over an API (not from the config file).
    std::string add(const config::Proxy& p, bool runtime = false, int* listen_error = nullptr) {
        if (server(p.name) != nullptr) return "proxy " + p.name + " already exists";
        auto s = std::make_unique<ProxyServer>(&loop, std::make_shared<config::Proxy>(p));
        if (runtime) s->set_created_at_runtime();
        int e = s->listen();
        if (e != 0) {
            s->stop_accepting();
            retired.push_back(std::move(s));
            if (listen_error != nullptr) *listen_error = e;
            return "cannot listen on " + p.listen.str() + ": " + uv_strerror(e);
        }
        servers.push_back(std::move(s));
        return "";
    }

    // A config-file proxy named `name` to 127.0.0.1:1, with one rule of its own.
    ProxyServer* file_proxy(const std::string& name) {
        config::Proxy file;
        file.name = name;
        file.listen = {"127.0.0.1", 0};
        file.upstream = {"127.0.0.1", 1};
        config::Rule own;
        own.name = "own";
        own.enabled = false;
        own.fault = config::ResetFault{};
        file.rules.push_back(own);
        REQUIRE(add(file).empty());
        return server(name);
    }

    ProxyServer* server(const std::string& name) {
        for (auto& s : servers)
            if (s->name() == name) return s.get();
        return nullptr;
    }

    HttpResponse call(const std::string& method, const std::string& path,
                      const std::string& body = "") {
        HttpRequest r;
        r.method = method;
        r.target = path;
        r.path = path;
        r.body = body;
        HttpResponse resp = api->handle(r);
        uv_run(&loop, UV_RUN_NOWAIT);
        return resp;
    }

    // Creates proxy `name` to 127.0.0.1:6379 on a free port; returns its listen address.
    std::string create(const std::string& name, const std::string& extra = "") {
        HttpResponse r =
            call("POST", "/proxies",
                 "{\"name\":\"" + name +
                     "\",\"listen\":\"127.0.0.1:0\",\"upstream\":\"127.0.0.1:6379\"" + extra + "}");
        REQUIRE(r.status == 201);
        return nlohmann::json::parse(r.body)["listen"].get<std::string>();
    }
};

const config::Rule* rule(ProxyServer* p, const std::string& name) {
    for (const auto& r : p->config().rules)
        if (r.name == name) return &r;
    return nullptr;
}

std::string err(int status, const std::string& message) {
    return "{\"error\":\"" + message + "\",\"status\":" + std::to_string(status) + "}\n";
}

const std::string* header(const HttpResponse& r, const std::string& name) {
    for (const auto& [k, v] : r.headers)
        if (k == name) return &v;
    return nullptr;
}

Toxic toxic(const std::string& type, std::vector<std::pair<std::string, int64_t>> attrs,
            bool upstream = false, double toxicity = 1.0) {
    Toxic t;
    t.name = t.rule = type;
    t.type = type;
    t.stream = upstream ? "upstream" : "downstream";
    t.upstream = upstream;
    t.toxicity = toxicity;
    t.attributes = std::move(attrs);
    return t;
}

config::Rule one_rule(const Toxic& t) {
    auto rules = toxiproxy::to_rules(t);
    REQUIRE(rules.size() == 1);
    return rules[0];
}

config::ToxiproxyConfig with_yaml(const std::string& toxiproxy_section) {
    auto r = config::load_string("toxiproxy: " + toxiproxy_section + "\nproxies: []\n", "t.yaml");
    for (const auto& d : r.errors) INFO(d.str());
    REQUIRE(r.config.has_value());
    return r.config->toxiproxy;
}

}  // namespace

TEST_CASE("toxiproxy: version, unknown paths, methods, browsers and the request id") {
    Rig rig;
    HttpResponse v = rig.call("GET", "/version");
    CHECK(v.status == 200);
    CHECK(v.body == "{\"version\": \"2.12.0\"}\n");
    CHECK(v.content_type == "application/json;charset=utf-8");
    // Every routed response carries a fresh request id, as Toxiproxy's middleware gives it.
    const std::string* id = header(v, "X-Toxiproxy-Request-Id");
    REQUIRE(id != nullptr);
    CHECK(id->size() == 20);
    CHECK(id->find_first_not_of("0123456789abcdefghijklmnopqrstuv") == std::string::npos);
    HttpResponse second = rig.call("GET", "/proxies");
    const std::string* id2 = header(second, "X-Toxiproxy-Request-Id");
    REQUIRE(id2 != nullptr);
    CHECK(*id2 != *id);

    HttpResponse nf = rig.call("GET", "/nope");
    CHECK(nf.status == 404);
    CHECK(nf.body == "404 page not found\n");
    CHECK(header(nf, "X-Toxiproxy-Request-Id") == nullptr);  // mux's 404 skips middlewares
    CHECK(rig.call("GET", "/proxies/").status == 404);
    CHECK(rig.call("GET", "/proxies/a/toxics/b/c").status == 404);

    HttpResponse na = rig.call("PUT", "/proxies");
    CHECK(na.status == 405);
    CHECK(na.body.empty());
    CHECK(rig.call("GET", "/reset").status == 405);
    CHECK(rig.call("DELETE", "/version").status == 405);

    HttpRequest browser;
    browser.method = "GET";
    browser.path = browser.target = "/proxies";
    browser.headers = {{"user-agent", "Mozilla/5.0 (X11; Linux x86_64)"}};
    HttpResponse b = rig.api->handle(browser);
    CHECK(b.status == 403);
    CHECK(b.body == "User agent not allowed\n");
    CHECK(header(b, "X-Toxiproxy-Request-Id") != nullptr);
}

TEST_CASE("toxiproxy: create, show, list and delete a proxy") {
    Rig rig;
    HttpResponse r =
        rig.call("POST", "/proxies",
                 R"({"name":"redis","listen":"localhost:0","upstream":"127.0.0.1:6379"})");
    REQUIRE(r.status == 201);
    ProxyServer* p = rig.server("redis");
    REQUIRE(p != nullptr);
    CHECK(p->created_at_runtime());
    // Toxiproxy accepts, then closes (FIN), when the upstream is down.
    CHECK(p->config().on_upstream_error == config::OnUpstreamError::close);
    std::string listen = p->listen_addr();
    CHECK(listen.rfind("127.0.0.1:", 0) == 0);  // localhost is IPv4 first, as in Go
    CHECK(listen != "127.0.0.1:0");
    std::string shown = R"({"name":"redis","listen":")" + listen +
                        R"(","upstream":"127.0.0.1:6379","enabled":true,"toxics":[]})";
    CHECK(r.body == shown);
    CHECK(r.content_type == "application/json");

    CHECK(rig.call("GET", "/proxies/redis").body == shown);
    CHECK(rig.call("GET", "/proxies").body == "{\"redis\":" + shown + "}");

    HttpResponse dup =
        rig.call("POST", "/proxies", R"({"name":"redis","listen":"127.0.0.1:0","upstream":"x:1"})");
    CHECK(dup.status == 409);
    CHECK(dup.body == err(409, "proxy already exists"));
    // Errors are written as Go's http.Error writes them.
    CHECK(dup.content_type == "text/plain; charset=utf-8");
    REQUIRE(header(dup, "X-Content-Type-Options") != nullptr);

    HttpResponse del = rig.call("DELETE", "/proxies/redis");
    CHECK(del.status == 204);
    CHECK(del.body.empty());
    CHECK(rig.server("redis") == nullptr);
    HttpResponse gone = rig.call("DELETE", "/proxies/redis");
    CHECK(gone.status == 404);
    CHECK(gone.body == err(404, "proxy not found"));
    CHECK(rig.call("GET", "/proxies/redis/toxics").status == 404);
    CHECK(rig.call("GET", "/proxies").body == "{}");
}

TEST_CASE("toxiproxy: proxy body errors") {
    Rig rig;
    auto post = [&](const std::string& body) { return rig.call("POST", "/proxies", body); };
    CHECK(post("").body == err(400, "bad request body: empty body"));
    HttpResponse cut = post("{\"name\":");
    CHECK(cut.status == 400);
    CHECK(cut.body.rfind("{\"error\":\"bad request body: parse error at line 1, column 9", 0) == 0);
    CHECK(post("nope").status == 400);
    CHECK(post(R"({"name":1})").body ==
          err(400, "bad request body: name: expected a string, found the number 1"));
    CHECK(post("[]").body == err(400, "bad request body: expected a proxy object, found an array"));
    CHECK(post(R"({"name":"a","upstream":"b:1","enabled":"yes"})").body ==
          err(400, "bad request body: enabled: expected true or false, found a string"));
    CHECK(post(R"({"upstream":"a:1"})").body == err(400, "missing required field: name"));
    CHECK(post(R"({"name":"a"})").body == err(400, "missing required field: upstream"));
    CHECK(post("null").status == 400);
    CHECK(post(std::string(40, '[') + std::string(40, ']')).body ==
          err(400, "bad request body: nesting deeper than 32 levels"));
    // Keys match case-insensitively, as Go's decoder does.
    HttpResponse ok = post(R"({"Name":"a","LISTEN":"127.0.0.1:0","upstream":"127.0.0.1:1"})");
    CHECK(ok.status == 201);
    CHECK(rig.server("a") != nullptr);
    // A port in use: Toxiproxy's 500, word for word.
    std::string used = rig.server("a")->listen_addr();
    HttpResponse busy = post(R"({"name":"b","listen":")" + used + R"(","upstream":"127.0.0.1:1"})");
    CHECK(busy.status == 500);
    CHECK(busy.body == err(500, "listen tcp " + used + ": bind: address already in use"));
    CHECK(rig.server("b") == nullptr);
    std::string port = used.substr(used.rfind(':') + 1);
    HttpResponse busy_local =
        post(R"({"name":"b","listen":"localhost:)" + port + R"(","upstream":"127.0.0.1:1"})");
    CHECK(busy_local.body == err(500, "listen tcp " + used + ": bind: address already in use"));
    HttpResponse bad_up = post(R"({"name":"c","upstream":"nohost"})");
    CHECK(bad_up.status == 400);
    CHECK(bad_up.body.find("invalid upstream address") != std::string::npos);
    CHECK(post(R"({"name":"c","upstream":"a:1","listen":"nocolon"})").body ==
          err(500, "listen tcp nocolon: address nocolon: missing port in address"));
}

TEST_CASE("toxiproxy: names and texts from the network are bounded, JSON out is UTF-8") {
    Rig rig;
    auto post = [&](const std::string& name) {
        return rig.call("POST", "/proxies",
                        R"({"name":")" + name + R"(","listen":"127.0.0.1:0","upstream":"a:1"})");
    };
    CHECK(post(std::string(128, 'n')).status == 201);
    CHECK(post(std::string(129, 'n')).body ==
          err(400, "proxy name too long: 129 bytes (at most 128)"));
    CHECK(post(std::string(1 << 20, 'n')).status == 400);
    CHECK(post("a\\u0007b").body == err(400, "proxy name contains a control character"));
    CHECK(post("a/b").body == err(400, "proxy name contains \\\"/\\\""));
    // Raw bytes that are not UTF-8 are not JSON: refused, never stored.
    HttpResponse raw = post("caf\xe9");
    CHECK(raw.status == 400);
    CHECK(nlohmann::json::accept(raw.body));
    HttpResponse ok = post("caf\xc3\xa9 \xe2\x82\xac");
    CHECK(ok.status == 201);
    HttpResponse all = rig.call("GET", "/proxies");
    CHECK(nlohmann::json::accept(all.body));
    CHECK(nlohmann::json::parse(all.body).contains("caf\xc3\xa9 \xe2\x82\xac"));
    // Over-long addresses are refused before parsing (no echo of a megabyte).
    HttpResponse long_up = rig.call(
        "POST", "/proxies", R"({"name":"u","upstream":")" + std::string(600, 'h') + ":1\"}");
    CHECK(long_up.body == err(400, "upstream too long (at most 512 bytes)"));
    // Toxic names likewise.
    rig.create("p");
    CHECK(rig.call("POST", "/proxies/p/toxics",
                   R"({"type":"noop","name":")" + std::string(129, 't') + "\"}")
              .body == err(400, "toxic name too long: 129 bytes (at most 128)"));
    // tcpfault's own names stay within the config's bounds.
    for (ProxyServer* s : rig.api->table().all()) CHECK(s->name().size() <= 128);
}

TEST_CASE("toxiproxy: Toxiproxy names that tcpfault cannot use are kept aside") {
    Rig rig;
    REQUIRE(rig.call("POST", "/proxies",
                     R"({"name":"Shop.Redis","listen":"127.0.0.1:0","upstream":"127.0.0.1:6379"})")
                .status == 201);
    CHECK(rig.server("shop-redis") != nullptr);
    HttpResponse r = rig.call("GET", "/proxies/Shop.Redis");
    CHECK(r.status == 200);
    CHECK(r.body.rfind(R"({"name":"Shop.Redis",)", 0) == 0);
    CHECK(rig.call("GET", "/proxies").body.rfind(R"({"Shop.Redis":{"name":"Shop.Redis")", 0) == 0);
    // The tcpfault name is not a second name for it.
    CHECK(rig.call("GET", "/proxies/shop-redis").status == 404);
    // A second proxy whose sanitized name is taken gets a suffix.
    REQUIRE(rig.call("POST", "/proxies",
                     R"({"name":"shop-redis","listen":"127.0.0.1:0","upstream":"127.0.0.1:6379"})")
                .status == 201);
    CHECK(rig.server("shop-redis-2") != nullptr);
    CHECK(rig.call("GET", "/proxies/shop-redis").body.find(R"("name":"shop-redis")") !=
          std::string::npos);
}

TEST_CASE("toxiproxy: toxics are created, shown, updated and removed as rules") {
    Rig rig;
    rig.create("redis");
    ProxyServer* p = rig.server("redis");

    HttpResponse r = rig.call("POST", "/proxies/redis/toxics",
                              R"({"type":"latency","attributes":{"latency":100,"jitter":10}})");
    CHECK(r.status == 200);
    const std::string latency =
        R"({"attributes":{"latency":100,"jitter":10},"name":"latency_downstream","type":"latency",)"
        R"("stream":"downstream","toxicity":1})";
    CHECK(r.body == latency);
    const config::Rule* lr = rule(p, "latency_downstream");
    REQUIRE(lr != nullptr);
    const auto& lf = std::get<config::LatencyFault>(lr->fault);
    CHECK(lf.delay == 100ms);
    CHECK(lf.jitter == 10ms);
    CHECK(lf.direction == config::Direction::downstream);
    CHECK(lr->match.existing);
    CHECK_FALSE(lr->match.probability.has_value());

    HttpResponse u = rig.call("POST", "/proxies/redis/toxics",
                              R"({"name":"cut","type":"limit_data","stream":"upstream",)"
                              R"("toxicity":0.5,"attributes":{"bytes":1000}})");
    CHECK(u.status == 200);
    CHECK(u.body == R"({"attributes":{"bytes":1000},"name":"cut","type":"limit_data",)"
                    R"("stream":"upstream","toxicity":0.5})");
    CHECK(rule(p, "cut")->match.probability == 0.5);

    // Upstream toxics are listed first, as Toxiproxy walks its upstream chain first.
    HttpResponse list = rig.call("GET", "/proxies/redis/toxics");
    CHECK(list.body == "[" + u.body + "," + latency + "]");
    CHECK(rig.call("GET", "/proxies/redis")
              .body.find("\"toxics\":[" + u.body + "," + latency + "]") != std::string::npos);
    CHECK(rig.call("GET", "/proxies/redis/toxics/cut").body == u.body);

    // Update merges attributes and keeps what is not given.
    HttpResponse up = rig.call("PATCH", "/proxies/redis/toxics/latency_downstream",
                               R"({"attributes":{"latency":250}})");
    CHECK(up.status == 200);
    CHECK(up.body.find(R"("attributes":{"latency":250,"jitter":10})") != std::string::npos);
    CHECK(std::get<config::LatencyFault>(rule(p, "latency_downstream")->fault).delay == 250ms);
    HttpResponse tox = rig.call("POST", "/proxies/redis/toxics/cut", R"({"toxicity":0.1})");
    CHECK(tox.body.find(R"("toxicity":0.1})") != std::string::npos);
    CHECK(rule(p, "cut")->match.probability.has_value());
    CHECK(rig.call("POST", "/proxies/redis/toxics/cut", R"({"toxicity":2})").body ==
          err(400, "toxicity must be between 0 and 1, found 2"));
    CHECK(rig.call("POST", "/proxies/redis/toxics/cut", "[1]").status == 400);

    // A timeout toxic is two rules; changing its timeout to 0 drops the idle one.
    REQUIRE(rig.call("POST", "/proxies/redis/toxics",
                     R"({"type":"timeout","attributes":{"timeout":500}})")
                .status == 200);
    CHECK(rule(p, "timeout_downstream") != nullptr);
    CHECK(rule(p, "timeout_downstream-idle") != nullptr);
    REQUIRE(rig.call("PATCH", "/proxies/redis/toxics/timeout_downstream",
                     R"({"attributes":{"timeout":0}})")
                .status == 200);
    CHECK(rule(p, "timeout_downstream") != nullptr);
    CHECK(rule(p, "timeout_downstream-idle") == nullptr);
    REQUIRE(rig.call("PATCH", "/proxies/redis/toxics/timeout_downstream",
                     R"({"attributes":{"timeout":20}})")
                .status == 200);
    CHECK(std::get<config::IdleFault>(rule(p, "timeout_downstream-idle")->fault).timeout == 20ms);
    CHECK(rig.call("DELETE", "/proxies/redis/toxics/timeout_downstream").status == 204);
    CHECK(rule(p, "timeout_downstream") == nullptr);
    CHECK(rule(p, "timeout_downstream-idle") == nullptr);

    HttpResponse del = rig.call("DELETE", "/proxies/redis/toxics/cut");
    CHECK(del.status == 204);
    CHECK(rule(p, "cut") == nullptr);
    CHECK(rig.call("DELETE", "/proxies/redis/toxics/cut").body == err(404, "toxic not found"));
    CHECK(rig.call("GET", "/proxies/redis/toxics/cut").body == err(404, "toxic not found"));
    CHECK(rig.call("PATCH", "/proxies/redis/toxics/cut", "{}").body == err(404, "toxic not found"));
}

TEST_CASE("toxiproxy: toxic body errors") {
    Rig rig;
    rig.create("p");
    auto post = [&](const std::string& body) {
        return rig.call("POST", "/proxies/p/toxics", body);
    };
    CHECK(post(R"({"type":"latency","stream":"sideways"})").body ==
          err(400, "stream was invalid, can be either upstream or downstream"));
    CHECK(post(R"({"type":"explode"})").body == err(400, "invalid toxic type"));
    CHECK(post(R"({})").body == err(400, "invalid toxic type"));
    CHECK(post(R"({"type":"latency","attributes":{"latency":"1s"}})").body ==
          err(400,
              "bad request body: attributes.latency: expected an integer (64-bit), found a "
              "string"));
    CHECK(post(R"({"type":"latency","attributes":{"latency":1.5}})").body ==
          err(400,
              "bad request body: attributes.latency: expected an integer (64-bit), found "
              "the number 1.5"));
    CHECK(post(R"({"type":"latency","attributes":{"latency":18446744073709551615}})").status ==
          400);
    CHECK(post(R"({"type":"latency","attributes":[1]})").body ==
          err(400, "bad request body: attributes: expected an object, found an array"));
    CHECK(post(R"({"type":"latency","toxicity":"all"})").status == 400);
    CHECK(post(R"({"type":"latency","toxicity":-0.5})").body ==
          err(400, "toxicity must be between 0 and 1, found -0.5"));
    // Values no network produces are refused (Toxiproxy takes them and misbehaves).
    CHECK(post(R"({"type":"latency","attributes":{"latency":-5}})").body ==
          err(400, "latency toxic: latency must not be negative, found -5"));
    CHECK(post(R"({"type":"bandwidth","attributes":{"rate":-1}})").status == 400);
    CHECK(post(R"({"type":"timeout","attributes":{"timeout":9223372036854775807}})").body ==
          err(400,
              "timeout toxic: timeout is too large: 9223372036854775807 (at most "
              "31622400000 ms)"));
    CHECK(post(R"({"type":"slicer","attributes":{"delay":-1}})").status == 400);
    CHECK(post("{").status == 400);
    CHECK(post(R"({"type":"timeout","attributes":{"timeout":10}})").status == 200);
    CHECK(post(R"({"type":"timeout","attributes":{"timeout":10}})").body ==
          err(409, "toxic already exists"));
    // Stream is case-insensitive and echoed as given; the default name uses it.
    HttpResponse up = post(R"({"type":"timeout","stream":"UPSTREAM"})");
    CHECK(up.status == 200);
    CHECK(up.body.find(R"("name":"timeout_UPSTREAM")") != std::string::npos);
    CHECK(up.body.find(R"("stream":"UPSTREAM")") != std::string::npos);
    CHECK(rule(rig.server("p"), "timeout_upstream") != nullptr);
    CHECK(rig.call("GET", "/proxies/nope/toxics").body == err(404, "proxy not found"));
    CHECK(rig.call("POST", "/proxies/nope/toxics", "{}").body == err(404, "proxy not found"));
}

TEST_CASE("toxiproxy: toxic names become valid, unique rule names") {
    Rig rig;
    rig.create("p");
    ProxyServer* p = rig.server("p");
    HttpResponse r =
        rig.call("POST", "/proxies/p/toxics",
                 R"({"name":"Slow <DB>","type":"latency","attributes":{"latency":5}})");
    CHECK(r.status == 200);
    CHECK(r.body.find(R"("name":"Slow <DB>")") != std::string::npos);
    CHECK(rule(p, "slow--db-") != nullptr);
    CHECK(rig.call("GET", "/proxies/p/toxics/Slow <DB>").status == 200);
    // A sanitized name that is already a rule (or the internal one) gets a suffix.
    CHECK(rig.call("POST", "/proxies/p/toxics", R"({"name":"slow--DB-","type":"noop"})").status ==
          200);
    CHECK(rule(p, "slow--db--2") != nullptr);
    CHECK(rig.call("POST", "/proxies/p/toxics", R"({"name":"toxiproxy-disabled","type":"noop"})")
              .status == 200);
    CHECK(rule(p, "toxiproxy-disabled-2") != nullptr);
    CHECK(rig.call("GET", "/proxies/p").body.find(R"("enabled":true)") != std::string::npos);
    CHECK(rig.call("GET", "/proxies/p/toxics/noop_downstream").status == 404);
    CHECK(
        rig.call("GET", "/proxies/p/toxics/slow--DB-").body ==
        R"({"attributes":{},"name":"slow--DB-","type":"noop","stream":"downstream","toxicity":1})");
    // A long toxic name leaves room for the suffixes within the rule name limit.
    std::string long_name(128, 'x');
    CHECK(rig.call("POST", "/proxies/p/toxics",
                   R"({"name":")" + long_name + R"(","type":"timeout","attributes":{"timeout":5}})")
              .status == 200);
    CHECK(rule(p, std::string(96, 'x') + "-idle") != nullptr);
}

TEST_CASE("toxiproxy: toxic to rule mapping") {
    using config::Direction;
    SUBCASE("latency") {
        auto r = one_rule(toxic("latency", {{"latency", 1000}, {"jitter", 50}}, true));
        auto f = std::get<config::LatencyFault>(r.fault);
        CHECK(f.delay == 1s);
        CHECK(f.jitter == 50ms);
        CHECK(f.direction == Direction::upstream);
        CHECK_FALSE(r.when.has_value());
        CHECK(r.name == "latency");
        CHECK(r.match.existing);
    }
    SUBCASE("bandwidth is KB/s of 1000 bytes; 0 lets nothing through") {
        auto r = one_rule(toxic("bandwidth", {{"rate", 100}}));
        auto f = std::get<config::BandwidthFault>(r.fault);
        CHECK(f.rate == 100000);
        CHECK(f.direction == Direction::downstream);
        auto z = one_rule(toxic("bandwidth", {{"rate", 0}}));
        auto s = std::get<config::StallFault>(z.fault);
        CHECK(s.mode == config::StallFault::Mode::hold);
        CHECK_FALSE(s.duration.has_value());
    }
    SUBCASE("slow_close") {
        auto r = one_rule(toxic("slow_close", {{"delay", 300}}, true));
        auto f = std::get<config::SlowCloseFault>(r.fault);
        CHECK(f.delay == 300ms);
        CHECK(f.direction == Direction::upstream);
    }
    SUBCASE("timeout: dropped data, and an inactivity timeout that closes; 0 drops forever") {
        auto rules = toxiproxy::to_rules(toxic("timeout", {{"timeout", 500}}));
        REQUIRE(rules.size() == 2);
        auto f = std::get<config::StallFault>(rules[0].fault);
        CHECK(rules[0].name == "timeout");
        CHECK(f.mode == config::StallFault::Mode::drop);
        CHECK(f.direction == Direction::downstream);
        CHECK_FALSE(f.duration.has_value());
        CHECK(f.pass_close);
        auto idle = std::get<config::IdleFault>(rules[1].fault);
        CHECK(rules[1].name == "timeout-idle");
        CHECK(idle.timeout == 500ms);
        CHECK(idle.action == config::IdleFault::Action::close);
        CHECK(rules[1].match.existing);
        auto z = toxiproxy::to_rules(toxic("timeout", {{"timeout", 0}}));
        REQUIRE(z.size() == 1);
        CHECK(std::get<config::StallFault>(z[0].fault).mode == config::StallFault::Mode::drop);
    }
    SUBCASE("reset_peer: at the stream's first data, held, after the timeout") {
        auto r = one_rule(toxic("reset_peer", {{"timeout", 0}}, true));
        auto f = std::get<config::ResetFault>(r.fault);
        CHECK(f.to == config::Target::both);
        CHECK_FALSE(f.flush);
        REQUIRE(r.when.has_value());
        CHECK(r.when->direction == Direction::upstream);
        CHECK(r.when->data == std::string());
        CHECK(r.when->after_bytes == 0u);
        CHECK_FALSE(r.when->after.has_value());
        auto later = one_rule(toxic("reset_peer", {{"timeout", 250}}));
        REQUIRE(later.when.has_value());
        CHECK(later.when->direction == Direction::downstream);
        CHECK(later.when->after == config::Duration(250ms));
        CHECK(later.when->data == std::string());
        CHECK(later.when->after_bytes == 0u);
    }
    SUBCASE("slicer sizes and microsecond delay") {
        auto r =
            one_rule(toxic("slicer", {{"average_size", 10}, {"size_variation", 3}, {"delay", 50}}));
        auto f = std::get<config::SliceFault>(r.fault);
        CHECK(f.min_size == 7);
        CHECK(f.max_size == 13);
        CHECK(f.delay == 50us);
        CHECK(f.direction == Direction::downstream);
        auto wide = std::get<config::SliceFault>(
            one_rule(toxic("slicer", {{"average_size", 2}, {"size_variation", 5}, {"delay", 0}}))
                .fault);
        CHECK(wide.min_size == 1);
        CHECK(wide.max_size == 7);
        auto zero = std::get<config::SliceFault>(
            one_rule(toxic("slicer", {{"average_size", 0}, {"size_variation", 0}, {"delay", 0}}))
                .fault);
        CHECK(zero.min_size == 1);
        CHECK(zero.max_size == 1);
    }
    SUBCASE("limit_data closes after exactly N bytes of the stream") {
        auto r = one_rule(toxic("limit_data", {{"bytes", 1000}}, true));
        auto f = std::get<config::CloseFault>(r.fault);
        CHECK(f.to == config::Target::both);
        REQUIRE(r.when.has_value());
        CHECK(r.when->direction == Direction::upstream);
        CHECK(r.when->after_bytes == 1000u);
        CHECK(r.when->data == std::string());  // counted from the first data after adding
    }
    SUBCASE("toxicity becomes probability") {
        CHECK(one_rule(toxic("noop", {}, false, 0.25)).match.probability == 0.25);
        CHECK(one_rule(toxic("noop", {}, false, 0.0)).match.probability == 0.0);
        CHECK_FALSE(one_rule(toxic("noop", {}, false, 1.0)).match.probability);
    }
    SUBCASE("the largest accepted values fit") {
        Toxic t = toxic("latency", {{"latency", 31622400000}, {"jitter", 0}});
        CHECK(toxiproxy::check_toxic(t).empty());
        CHECK(std::get<config::LatencyFault>(one_rule(t).fault).delay == config::kMaxDuration);
        Toxic b = toxic("bandwidth", {{"rate", INT64_MAX / 1000}});
        CHECK(toxiproxy::check_toxic(b).empty());
        CHECK_FALSE(toxiproxy::check_toxic(toxic("bandwidth", {{"rate", INT64_MAX}})).empty());
    }
}

TEST_CASE("toxiproxy: enabled false closes the listener before the answer, true re-opens it") {
    Rig rig;
    rig.create("db");
    ProxyServer* p = rig.server("db");
    std::string listen = p->listen_addr();
    for (int i = 0; i < 20; ++i) {
        HttpResponse off = rig.call("POST", "/proxies/db", R"({"enabled":false})");
        CHECK(off.status == 200);
        CHECK(off.body.find(R"("enabled":false)") != std::string::npos);
        CHECK_FALSE(p->listening());
        HttpResponse on = rig.call("PATCH", "/proxies/db", R"({"enabled":true})");
        CHECK(on.status == 200);
        CHECK(on.body.find(R"("enabled":true)") != std::string::npos);
        CHECK(p->listening());
        CHECK(p->listen_addr() == listen);
    }
    const config::Rule* r = rule(p, ProxyTable::kDisabledRule);
    REQUIRE(r != nullptr);
    CHECK_FALSE(r->enabled);
    CHECK(std::holds_alternative<config::RefuseFault>(r->fault));
    CHECK(rig.call("POST", "/proxies/db", "{").status == 400);
    CHECK(rig.call("POST", "/proxies/db", R"({"enabled":"no"})").status == 400);
    // Disabled ones keep showing their real address.
    REQUIRE(rig.call("POST", "/proxies/db", R"({"enabled":false})").status == 200);
    CHECK(rig.call("GET", "/proxies/db").body.find(R"("listen":")" + listen) != std::string::npos);

    // Created disabled: down before the answer, and its listen shown as given until it starts.
    HttpResponse c = rig.call("POST", "/proxies",
                              R"({"name":"down","listen":"localhost:0","upstream":"127.0.0.1:1",)"
                              R"("enabled":false})");
    CHECK(c.status == 201);
    CHECK(c.body.find(R"("listen":"localhost:0","upstream":"127.0.0.1:1","enabled":false)") !=
          std::string::npos);
    ProxyServer* down = rig.server("down");
    REQUIRE(down != nullptr);
    CHECK_FALSE(down->listening());
    CHECK(rule(down, ProxyTable::kDisabledRule)->enabled);
    HttpResponse started = rig.call("POST", "/proxies/down", R"({"enabled":true})");
    CHECK(started.body.find(R"("listen":")" + down->listen_addr() + "\"") != std::string::npos);
    CHECK(down->listening());

    // The port taken meanwhile: enabling fails as Toxiproxy's does, and the proxy stays down.
    REQUIRE(rig.call("POST", "/proxies/down", R"({"enabled":false})").status == 200);
    std::string addr = down->listen_addr();
    uint16_t port = static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1)));
    config::Proxy squatter;
    squatter.name = "squatter";
    squatter.listen = {"127.0.0.1", port};
    squatter.upstream = {"127.0.0.1", 1};
    REQUIRE(rig.add(squatter).empty());
    HttpResponse fail = rig.call("POST", "/proxies/down", R"({"enabled":true})");
    CHECK(fail.status == 500);
    CHECK(fail.body == err(500, "listen tcp " + addr + ": bind: address already in use"));
    CHECK(rig.call("GET", "/proxies/down").body.find(R"("enabled":false)") != std::string::npos);
}

TEST_CASE("toxiproxy: changing upstream and listen") {
    Rig rig;
    std::string listen = rig.create("svc");
    REQUIRE(rig.call("POST", "/proxies/svc/toxics", R"({"type":"latency"})").status == 200);
    HttpResponse u = rig.call("POST", "/proxies/svc", R"({"upstream":"127.0.0.1:7000"})");
    CHECK(u.status == 200);
    CHECK(u.body.find(R"("upstream":"127.0.0.1:7000")") != std::string::npos);
    CHECK(rig.server("svc")->config().upstream.port == 7000);
    CHECK(rig.server("svc")->listen_addr() == listen);

    // A new listen address re-binds; the toxics stay, as in Toxiproxy.
    HttpResponse l = rig.call("POST", "/proxies/svc", R"({"listen":"127.0.0.1:0"})");
    CHECK(l.status == 200);
    ProxyServer* p = rig.server("svc");
    REQUIRE(p != nullptr);
    CHECK(p->listen_addr() != listen);
    CHECK(l.body.find(R"("listen":")" + p->listen_addr() + "\"") != std::string::npos);
    CHECK(l.body.find(R"("name":"latency_downstream")") != std::string::npos);
    CHECK(rule(p, "latency_downstream") != nullptr);
    CHECK(p->config().upstream.port == 7000);
    CHECK(p->config().on_upstream_error == config::OnUpstreamError::close);

    // An address that cannot be bound: 500, and the proxy stays (down) where it was.
    rig.create("other");
    std::string taken = rig.server("other")->listen_addr();
    std::string before = p->listen_addr();
    HttpResponse bad = rig.call("POST", "/proxies/svc", R"({"listen":")" + taken + "\"}");
    CHECK(bad.status == 500);
    CHECK(bad.body == err(500, "listen tcp " + taken + ": bind: address already in use"));
    ProxyServer* again = rig.server("svc");
    REQUIRE(again != nullptr);
    CHECK(again->listen_addr() == before);
    CHECK(rig.call("GET", "/proxies/svc").body.find(R"("enabled":false)") != std::string::npos);
    CHECK(rule(again, "latency_downstream") != nullptr);
}

TEST_CASE("toxiproxy: config-file proxies are read-only unless manage_config_proxies") {
    SUBCASE("read-only") {
        Rig rig;
        ProxyServer* p = rig.file_proxy("fromfile");
        HttpResponse f = rig.call("GET", "/proxies/fromfile");
        CHECK(f.status == 200);
        CHECK(f.body.find(R"("upstream":"127.0.0.1:1","enabled":true,"toxics":[])") !=
              std::string::npos);
        CHECK(rig.call("GET", "/proxies/fromfile/toxics").body == "[]");
        const std::string denied =
            err(403,
                "proxy fromfile comes from the config file; the Toxiproxy API may change it "
                "only with toxiproxy.manage_config_proxies: true");
        CHECK(rig.call("POST", "/proxies/fromfile/toxics", R"({"type":"noop"})").body == denied);
        CHECK(rig.call("POST", "/proxies/fromfile", R"({"enabled":false})").body == denied);
        CHECK(rig.call("DELETE", "/proxies/fromfile").body == denied);
        CHECK(rig.call("DELETE", "/proxies/fromfile/toxics/x").body == denied);
        CHECK(rig.call("POST", "/populate",
                       R"([{"name":"fromfile","listen":"127.0.0.1:0","upstream":"127.0.0.1:9"}])")
                  .status == 403);
        CHECK(rig.call("POST", "/reset").status == 204);
        CHECK(rig.server("fromfile") == p);
        CHECK(p->config().rules.size() == 1);
        CHECK(p->listening());
    }
    SUBCASE("managed: toxics, down and up; /reset re-enables it and keeps its own rules") {
        config::ToxiproxyConfig cfg;
        cfg.manage_config_proxies = true;
        Rig rig(cfg);
        ProxyServer* p = rig.file_proxy("fromfile");
        REQUIRE(rig.call("POST", "/proxies/fromfile/toxics", R"({"type":"slow_close"})").status ==
                200);
        REQUIRE(rig.call("POST", "/proxies/fromfile", R"({"enabled":false})").status == 200);
        CHECK_FALSE(p->listening());
        // Its listen address belongs to the file.
        CHECK(rig.call("POST", "/proxies/fromfile", R"({"listen":"127.0.0.1:0"})").status == 400);
        rig.create("mine");
        REQUIRE(rig.call("POST", "/proxies/mine/toxics", R"({"type":"bandwidth"})").status == 200);

        HttpResponse r = rig.call("POST", "/reset");
        CHECK(r.status == 204);
        CHECK(r.body.empty());
        CHECK(p->listening());
        CHECK(rule(p, "own") != nullptr);
        CHECK(rule(p, "slow_close_downstream") == nullptr);
        CHECK(rig.call("GET", "/proxies/fromfile").body.find(R"("enabled":true,"toxics":[])") !=
              std::string::npos);
        CHECK(rig.call("GET", "/proxies/mine/toxics").body == "[]");
        CHECK(rule(rig.server("mine"), "bandwidth_downstream") == nullptr);
    }
}

TEST_CASE("toxiproxy: allowlists for listen and upstream addresses") {
    Rig rig(
        with_yaml("{allow_listen: [127.0.0.1], allow_upstream: [127.0.0.0/8, "
                  "\"db.internal:5432\", \"*.svc.local:80-89\"]}"));
    auto post = [&](const std::string& listen, const std::string& upstream) {
        return rig.call(
            "POST", "/proxies",
            R"({"name":"p","listen":")" + listen + R"(","upstream":")" + upstream + "\"}");
    };
    // The cloud metadata address is not a relay target.
    HttpResponse meta = post("127.0.0.1:0", "169.254.169.254:80");
    CHECK(meta.status == 403);
    CHECK(meta.body == err(403,
                           "upstream 169.254.169.254:80 is not allowed by toxiproxy.allow_upstream "
                           "(allowed: 127.0.0.0/8, db.internal:5432, *.svc.local:80-89)"));
    CHECK(rig.server("p") == nullptr);
    CHECK(post("0.0.0.0:0", "127.0.0.1:1").status == 403);
    CHECK(post(":0", "127.0.0.1:1").status == 403);
    CHECK(post("127.0.0.1:0", "db.internal:5433").status == 403);
    CHECK(post("127.0.0.1:0", "svc.local:80").status == 403);
    CHECK(post("127.0.0.1:0", "a.svc.local:90").status == 403);
    // A name matches names only, never a network it might resolve into.
    CHECK(post("127.0.0.1:0", "localhost:1").status == 403);
    CHECK(post("localhost:0", "a.svc.local:85").status == 201);
    REQUIRE(rig.call("DELETE", "/proxies/p").status == 204);
    CHECK(post("127.0.0.1:0", "DB.internal.:5432").status == 201);
    // Moving it: the same checks.
    CHECK(rig.call("POST", "/proxies/p", R"({"upstream":"169.254.169.254:80"})").status == 403);
    CHECK(rig.call("POST", "/proxies/p", R"({"listen":"0.0.0.0:0"})").status == 403);
    CHECK(rig.call("POST", "/populate",
                   R"([{"name":"q","listen":"127.0.0.1:0","upstream":"169.254.169.254:80"}])")
              .status == 403);
    CHECK(rig.server("q") == nullptr);
}

TEST_CASE("toxiproxy: address patterns") {
    auto allowed = [](const std::string& pattern, const std::string& addr) {
        auto cfg = with_yaml("{allow_upstream: [\"" + pattern + "\"]}");
        auto hp = config::parse_host_port(addr, true);
        REQUIRE(hp);
        return toxiproxy::address_allowed(*cfg.allow_upstream, *hp);
    };
    CHECK(allowed("*", "anything:1"));
    CHECK(allowed("*:443", "anything:443"));
    CHECK_FALSE(allowed("*:443", "anything:80"));
    CHECK(allowed("10.0.0.0/8", "10.1.2.3:5"));
    CHECK(allowed("10.0.0.0/8:5432", "10.1.2.3:5432"));
    CHECK_FALSE(allowed("10.0.0.0/8:5432", "10.1.2.3:5433"));
    CHECK(allowed("::1", "[::1]:8"));
    CHECK(allowed("[fd00::/8]:1000-2000", "[fd00::5]:1500"));
    CHECK_FALSE(allowed("[fd00::/8]:1000-2000", "[fe00::5]:1500"));
    CHECK(allowed("127.0.0.1", "[::ffff:127.0.0.1]:9"));
    CHECK_FALSE(allowed("10.0.0.0/8", "ten.example:1"));
    CHECK(allowed("*.example.com", "A.Example.COM:1"));
    CHECK_FALSE(allowed("*.example.com", "example.com:1"));
    for (std::string bad : {"", "10.0.0.0/33", "host:99999", "host:9-1", "*.", "a b", "[::1"}) {
        auto r = config::load_string("toxiproxy: {allow_listen: [\"" + bad + "\"]}\n", "t.yaml");
        INFO(bad);
        REQUIRE_FALSE(r.errors.empty());
        CHECK(r.errors[0].message.find("toxiproxy.allow_listen") != std::string::npos);
    }
}

TEST_CASE("toxiproxy: admin.token needs toxiproxy.allow_unauthenticated") {
    auto r =
        config::load_string("admin: {token: s3cret}\ntoxiproxy: {listen: 127.0.0.1:0}\n", "t.yaml");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].str().rfind("t.yaml:2:1: toxiproxy: the Toxiproxy API cannot check "
                                  "admin.token",
                                  0) == 0);
    CHECK(config::load_string("admin: {token: s3cret}\ntoxiproxy: {listen: 127.0.0.1:0, "
                              "allow_unauthenticated: true}\n",
                              "t.yaml")
              .errors.empty());
    CHECK(config::load_string("admin: {token: s3cret}\ntoxiproxy: {listen: off}\n", "t.yaml")
              .errors.empty());
    // The API turned on by a flag: App asks the same question.
    auto c = config::load_string("admin: {token: s3cret}\n", "t.yaml");
    REQUIRE(c.config);
    c.config->toxiproxy.enabled = true;
    CHECK(toxiproxy::unauthenticated_error(*c.config, "--toxiproxy-api").find("--toxiproxy-api") !=
          std::string::npos);
}

TEST_CASE("toxiproxy: populate, whole and partial") {
    Rig rig;
    const std::string body =
        R"([{"name":"a","listen":"127.0.0.1:0","upstream":"127.0.0.1:6379"},)"
        R"({"name":"b","listen":"127.0.0.1:0","upstream":"127.0.0.1:3306","enabled":false}])";
    HttpResponse r = rig.call("POST", "/populate", body);
    CHECK(r.status == 201);
    CHECK(r.content_type == "application/json");
    REQUIRE(rig.server("a") != nullptr);
    REQUIRE(rig.server("b") != nullptr);
    std::string a_listen = rig.server("a")->listen_addr();
    CHECK(r.body.rfind(R"({"proxies":[{"name":"a","listen":")" + a_listen, 0) == 0);
    CHECK(r.body.find(R"({"name":"b",)") != std::string::npos);
    CHECK(r.body.find(R"("upstream":"127.0.0.1:3306","enabled":false)") != std::string::npos);

    // The same entries again (port 0 matches any port): untouched, toxics and all.
    REQUIRE(rig.call("POST", "/proxies/a/toxics", R"({"type":"latency"})").status == 200);
    HttpResponse same = rig.call("POST", "/populate", body);
    CHECK(same.status == 201);
    CHECK(rig.server("a")->listen_addr() == a_listen);
    CHECK(same.body.find(R"("name":"latency_downstream")") != std::string::npos);

    // A different upstream replaces the proxy: a fresh one, with the toxics the entry lists.
    HttpResponse changed =
        rig.call("POST", "/populate",
                 R"([{"name":"a","listen":"127.0.0.1:0","upstream":"127.0.0.1:1",)"
                 R"("toxics":[{"type":"slow_close","attributes":{"delay":10}}]}])");
    CHECK(changed.status == 201);
    CHECK(changed.body.find(R"("upstream":"127.0.0.1:1","enabled":true,"toxics":[{"attributes":)"
                            R"({"delay":10},"name":"slow_close_downstream")") != std::string::npos);
    CHECK(rule(rig.server("a"), "latency_downstream") == nullptr);
    CHECK(rule(rig.server("a"), "slow_close_downstream") != nullptr);
    CHECK(rig.server("b") != nullptr);  // not in the request: left alone

    // One entry cannot start: those before it stay made, and are returned with the error.
    std::string taken = rig.server("a")->listen_addr();
    HttpResponse partial =
        rig.call("POST", "/populate",
                 R"([{"name":"c","listen":"127.0.0.1:0","upstream":"127.0.0.1:1"},)"
                 R"({"name":"d","listen":")" +
                     taken +
                     R"(","upstream":"127.0.0.1:1"},)"
                     R"({"name":"e","listen":"127.0.0.1:0","upstream":"127.0.0.1:1"}])");
    CHECK(partial.status == 500);
    auto pj = nlohmann::json::parse(partial.body);
    CHECK(pj["error"] == "listen tcp " + taken + ": bind: address already in use");
    CHECK(pj["status"] == 500);
    REQUIRE(pj["proxies"].is_array());
    REQUIRE(pj["proxies"].size() == 1);
    CHECK(pj["proxies"][0]["name"] == "c");
    CHECK(rig.server("c") != nullptr);
    CHECK(rig.server("d") == nullptr);
    CHECK(rig.server("e") == nullptr);
    // A bad toxic in an entry: the same.
    HttpResponse bad_toxic =
        rig.call("POST", "/populate",
                 R"([{"name":"f","listen":"127.0.0.1:0","upstream":"127.0.0.1:1"},)"
                 R"({"name":"g","upstream":"127.0.0.1:1","toxics":[{"type":"nope"}]}])");
    CHECK(bad_toxic.status == 400);
    CHECK(nlohmann::json::parse(bad_toxic.body)["error"] == "invalid toxic type at proxy 2");
    CHECK(rig.server("f") != nullptr);
    CHECK(rig.server("g") == nullptr);

    CHECK(rig.call("POST", "/populate", "[]").body == R"({"proxies":null})");
    // Missing fields are checked for every entry before anything changes, as Toxiproxy does.
    HttpResponse missing =
        rig.call("POST", "/populate",
                 R"([{"name":"h","upstream":"127.0.0.1:1","listen":"127.0.0.1:0"},{"name":"i"}])");
    CHECK(missing.status == 400);
    CHECK(missing.body ==
          R"({"error":"missing required field: upstream at proxy 2","status":400,"proxies":null})");
    CHECK(rig.server("h") == nullptr);
    CHECK(rig.call("POST", "/populate", R"([{"upstream":"x:1"}])").body ==
          R"({"error":"missing required field: name at proxy 1","status":400,"proxies":null})");
    CHECK(rig.call("POST", "/populate", "{}").status == 400);
    std::string many = "[";
    for (int i = 0; i < 1001; ++i) many += std::string(i ? "," : "") + "{}";
    CHECK(nlohmann::json::parse(rig.call("POST", "/populate", many + "]").body)["error"] ==
          "too many proxies in one request: 1001 (at most 1000)");
}

TEST_CASE("toxiproxy: -config files: proxies and their toxics") {
    Rig rig;
    const std::string file =
        R"([{"name":"redis","listen":"127.0.0.1:0","upstream":"127.0.0.1:6379",)"
        R"("toxics":[{"type":"latency","stream":"upstream","attributes":{"latency":20}},)"
        R"({"name":"cut","type":"limit_data","attributes":{"bytes":10}}]},)"
        R"({"name":"off","listen":"127.0.0.1:0","upstream":"127.0.0.1:1","enabled":false}])";
    CHECK(ToxiproxyApi::check_config(file).empty());
    CHECK(rig.api->load_config(file).empty());
    ProxyServer* p = rig.server("redis");
    REQUIRE(p != nullptr);
    CHECK(rule(p, "latency_upstream") != nullptr);
    CHECK(rule(p, "cut") != nullptr);
    CHECK(rig.call("GET", "/proxies/redis/toxics").body.find(R"("name":"latency_upstream")") !=
          std::string::npos);
    CHECK_FALSE(rig.server("off")->listening());

    CHECK(ToxiproxyApi::check_config("{").rfind("parse error", 0) == 0);
    CHECK(ToxiproxyApi::check_config(R"([{"name":"x"}])") ==
          "missing required field: upstream at proxy 1");
    CHECK(
        ToxiproxyApi::check_config(
            R"([{"name":"x","upstream":"a:1","toxics":[{"type":"latency","attributes":{"latency":-1}}]}])") ==
        "latency toxic: latency must not be negative, found -1 at proxy 1");
    CHECK(ToxiproxyApi::check_config(R"([{"name":"x","upstream":"a:1","toxics":{}}])") ==
          "bad request body: toxics: expected an array, found an object at proxy 1");
}

TEST_CASE("toxiproxy: /metrics") {
    config::ToxiproxyConfig cfg;
    Rig plain(cfg);
    HttpResponse m = plain.call("GET", "/metrics");
    CHECK(m.status == 200);
    CHECK(m.body == "tcpfault_up 1\n");
    CHECK(m.content_type.rfind("text/plain; version=0.0.4", 0) == 0);

    cfg.proxy_metrics = true;
    cfg.runtime_metrics = true;
    Rig rig(cfg);
    rig.create("Shop.Cache");
    std::string listen = rig.server("shop-cache")->listen_addr();
    std::string body = rig.call("GET", "/metrics").body;
    for (const char* dir : {"upstream", "downstream"}) {
        for (const char* name :
             {"toxiproxy_proxy_received_bytes_total", "toxiproxy_proxy_sent_bytes_total"}) {
            std::string series = std::string(name) + "{direction=\"" + dir + "\",listener=\"" +
                                 listen + "\",proxy=\"Shop.Cache\",upstream=\"127.0.0.1:6379\"} 0";
            INFO(series);
            CHECK(body.find(series) != std::string::npos);
        }
    }
    CHECK(body.find("\nprocess_open_fds ") != std::string::npos);
    CHECK(body.find("\nprocess_resident_memory_bytes ") != std::string::npos);
}

TEST_CASE("toxiproxy: rules removed behind the API's back drop their toxics") {
    Rig rig;
    rig.create("p");
    REQUIRE(rig.call("POST", "/proxies/p/toxics", R"({"type":"latency"})").status == 200);
    ProxyServer* p = rig.server("p");
    auto c = std::make_shared<config::Proxy>(p->config());
    c->rules.clear();
    p->update_config(c);  // e.g. tcpfault's own API deleted the rule
    CHECK(rig.call("GET", "/proxies/p/toxics").body == "[]");
    CHECK(rig.call("POST", "/proxies/p/toxics", R"({"type":"latency"})").status == 200);
}

// The Toxiproxy API: routes, status codes, JSON shapes and the toxic -> rule mapping. Requests
// go straight to handle(); the proxies are real ProxyServers on a private loop (listening on
// 127.0.0.1:0), managed by hooks that stand in for App.
#include <doctest/doctest.h>
#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "config/units.hpp"
#include "observe/log.hpp"
#include "api/toxiproxy_api.hpp"

using namespace tcpfault;
using namespace std::chrono_literals;

namespace {

struct Rig {
    uv_loop_t loop{};
    std::vector<std::unique_ptr<ProxyServer>> servers;
    std::vector<std::unique_ptr<ProxyServer>> retired;
    std::unique_ptr<ToxiproxyApi> api;
    std::vector<std::string> added;  // names add_proxy was called with

    Rig() {
        log::configure(config::LogLevel::error, config::LogFormat::text);
        uv_loop_init(&loop);
        ToxiproxyApi::Hooks h;
        h.servers = [this] {
            std::vector<ProxyServer*> out;
            for (auto& s : servers) out.push_back(s.get());
            return out;
        };
        h.find = [this](const std::string& name) { return server(name); };
        h.add_proxy = [this](const config::Proxy& p) { return add(p); };
        h.remove_proxy = [this](const std::string& name) {
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
        api = std::make_unique<ToxiproxyApi>(std::move(h));
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

    std::string add(const config::Proxy& p) {
        added.push_back(p.name);
        if (server(p.name) != nullptr) return "proxy " + p.name + " already exists";
        auto s = std::make_unique<ProxyServer>(&loop, std::make_shared<config::Proxy>(p));
        int e = s->listen();
        if (e != 0) {
            s->stop_accepting();
            retired.push_back(std::move(s));
            return "cannot listen on " + p.listen.str() + ": " + uv_strerror(e);
        }
        servers.push_back(std::move(s));
        return "";
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
        return find(name)->listen_addr();
    }

    ProxyServer* find(const std::string& toxi_name) {
        for (auto& s : servers)
            if (s->name() == ToxiproxyApi::sanitize(toxi_name)) return s.get();
        return nullptr;
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

ToxiproxyApi::Toxic toxic(const std::string& type,
                          std::vector<std::pair<std::string, int64_t>> attrs, bool upstream = false,
                          float toxicity = 1.0f) {
    ToxiproxyApi::Toxic t;
    t.name = t.rule = type;
    t.type = type;
    t.stream = upstream ? "upstream" : "downstream";
    t.upstream = upstream;
    t.toxicity = toxicity;
    t.attributes = std::move(attrs);
    return t;
}

}  // namespace

TEST_CASE("toxiproxy: version, unknown paths, methods and browsers") {
    Rig rig;
    HttpResponse v = rig.call("GET", "/version");
    CHECK(v.status == 200);
    CHECK(v.body == "{\"version\": \"2.9.0\"}\n");
    CHECK(v.content_type == "application/json;charset=utf-8");

    HttpResponse nf = rig.call("GET", "/nope");
    CHECK(nf.status == 404);
    CHECK(nf.body == "404 page not found\n");
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
}

TEST_CASE("toxiproxy: create, show, list and delete a proxy") {
    Rig rig;
    HttpResponse r =
        rig.call("POST", "/proxies",
                 R"({"name":"redis","listen":"localhost:0","upstream":"127.0.0.1:6379"})");
    REQUIRE(r.status == 201);
    ProxyServer* p = rig.server("redis");
    REQUIRE(p != nullptr);
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
    CHECK(post("").body == err(400, "bad request body: EOF"));
    CHECK(post("{\"name\":").body == err(400, "bad request body: unexpected EOF"));
    CHECK(post("nope").body ==
          err(400, "bad request body: invalid character 'o' in literal null (expecting 'u')"));
    CHECK(post("x").body ==
          err(400, "bad request body: invalid character 'x' looking for beginning of value"));
    CHECK(post(R"({"name":1})").body ==
          err(400,
              "bad request body: json: cannot unmarshal number into Go struct field "
              "Proxy.name of type string"));
    CHECK(post("[]").body == err(400,
                                 "bad request body: json: cannot unmarshal array into Go "
                                 "value of type toxiproxy.Proxy"));
    CHECK(post(R"({"upstream":"a:1"})").body == err(400, "missing required field: name"));
    CHECK(post(R"({"name":"a"})").body == err(400, "missing required field: upstream"));
    CHECK(post("null").status == 400);
    // Keys match case-insensitively, as Go's decoder does.
    HttpResponse ok = post(R"({"Name":"a","LISTEN":"127.0.0.1:0","upstream":"127.0.0.1:1"})");
    CHECK(ok.status == 201);
    CHECK(rig.server("a") != nullptr);
    // A port in use: Toxiproxy answers 500 with the listen error.
    std::string used = rig.server("a")->listen_addr();
    HttpResponse busy = post(R"({"name":"b","listen":")" + used + R"(","upstream":"127.0.0.1:1"})");
    CHECK(busy.status == 500);
    CHECK(busy.body.find("\"status\":500") != std::string::npos);
    CHECK(rig.server("b") == nullptr);
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
              "bad request body: json: cannot unmarshal string into Go struct field "
              "LatencyToxic.attributes.latency of type int64"));
    CHECK(post(R"({"type":"latency","attributes":{"latency":1.5}})").body ==
          err(400,
              "bad request body: json: cannot unmarshal number 1.5 into Go struct field "
              "LatencyToxic.attributes.latency of type int64"));
    CHECK(post(R"({"type":"latency","toxicity":"all"})").status == 400);
    CHECK(post("{").body == err(400, "bad request body: unexpected EOF"));
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
    CHECK(r.body.find(R"("name":"Slow \u003cDB\u003e")") != std::string::npos);
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
}

TEST_CASE("toxiproxy: toxic to rule mapping") {
    using config::Direction;
    SUBCASE("latency") {
        auto r = ToxiproxyApi::to_rule(toxic("latency", {{"latency", 1000}, {"jitter", 50}}, true));
        auto f = std::get<config::LatencyFault>(r.fault);
        CHECK(f.delay == 1s);
        CHECK(f.jitter == 50ms);
        CHECK(f.direction == Direction::upstream);
        CHECK_FALSE(r.when.has_value());
    }
    SUBCASE("bandwidth is KB/s of 1000 bytes; 0 lets nothing through") {
        auto r = ToxiproxyApi::to_rule(toxic("bandwidth", {{"rate", 100}}));
        auto f = std::get<config::BandwidthFault>(r.fault);
        CHECK(f.rate == 100000);
        CHECK(f.direction == Direction::downstream);
        auto z = ToxiproxyApi::to_rule(toxic("bandwidth", {{"rate", 0}}));
        auto s = std::get<config::StallFault>(z.fault);
        CHECK(s.mode == config::StallFault::Mode::hold);
        CHECK_FALSE(s.duration.has_value());
    }
    SUBCASE("slow_close") {
        auto r = ToxiproxyApi::to_rule(toxic("slow_close", {{"delay", 300}}, true));
        auto f = std::get<config::SlowCloseFault>(r.fault);
        CHECK(f.delay == 300ms);
        CHECK(f.direction == Direction::upstream);
    }
    SUBCASE("timeout drops, then closes; 0 drops forever") {
        auto r = ToxiproxyApi::to_rule(toxic("timeout", {{"timeout", 500}}));
        auto f = std::get<config::StallFault>(r.fault);
        CHECK(f.mode == config::StallFault::Mode::drop);
        CHECK(f.direction == Direction::downstream);
        CHECK(f.duration == config::Duration(500ms));
        CHECK(f.then == config::StallFault::Then::close);
        auto z = std::get<config::StallFault>(
            ToxiproxyApi::to_rule(toxic("timeout", {{"timeout", 0}})).fault);
        CHECK_FALSE(z.duration.has_value());
        CHECK(z.mode == config::StallFault::Mode::drop);
    }
    SUBCASE("reset_peer: at the stream's first data, held, after the timeout") {
        auto r = ToxiproxyApi::to_rule(toxic("reset_peer", {{"timeout", 0}}, true));
        auto f = std::get<config::ResetFault>(r.fault);
        CHECK(f.to == config::Target::both);
        CHECK_FALSE(f.flush);
        REQUIRE(r.when.has_value());
        CHECK(r.when->direction == Direction::upstream);
        CHECK(r.when->data == std::string());
        CHECK(r.when->after_bytes == 0u);
        CHECK_FALSE(r.when->after.has_value());
        auto later = ToxiproxyApi::to_rule(toxic("reset_peer", {{"timeout", 250}}));
        REQUIRE(later.when.has_value());
        CHECK(later.when->direction == Direction::downstream);
        CHECK(later.when->after == config::Duration(250ms));
        CHECK(later.when->data == std::string());
        CHECK(later.when->after_bytes == 0u);
    }
    SUBCASE("slicer sizes and microsecond delay") {
        auto r = ToxiproxyApi::to_rule(
            toxic("slicer", {{"average_size", 10}, {"size_variation", 3}, {"delay", 50}}));
        auto f = std::get<config::SliceFault>(r.fault);
        CHECK(f.min_size == 7);
        CHECK(f.max_size == 13);
        CHECK(f.delay == 50us);
        CHECK(f.direction == Direction::downstream);
        auto wide = std::get<config::SliceFault>(
            ToxiproxyApi::to_rule(
                toxic("slicer", {{"average_size", 2}, {"size_variation", 5}, {"delay", 0}}))
                .fault);
        CHECK(wide.min_size == 1);
        CHECK(wide.max_size == 7);
        auto zero = std::get<config::SliceFault>(
            ToxiproxyApi::to_rule(
                toxic("slicer", {{"average_size", 0}, {"size_variation", 0}, {"delay", 0}}))
                .fault);
        CHECK(zero.min_size == 1);
        CHECK(zero.max_size == 1);
    }
    SUBCASE("limit_data closes after exactly N bytes of the stream") {
        auto r = ToxiproxyApi::to_rule(toxic("limit_data", {{"bytes", 1000}}, true));
        auto f = std::get<config::CloseFault>(r.fault);
        CHECK(f.to == config::Target::both);
        REQUIRE(r.when.has_value());
        CHECK(r.when->direction == Direction::upstream);
        CHECK(r.when->after_bytes == 1000u);
        CHECK(r.when->data == std::string());  // counted from the first data after adding
    }
    SUBCASE("toxicity becomes probability") {
        CHECK(ToxiproxyApi::to_rule(toxic("noop", {}, false, 0.25f)).match.probability == 0.25);
        CHECK(ToxiproxyApi::to_rule(toxic("noop", {}, false, -1.0f)).match.probability == 0.0);
        CHECK_FALSE(ToxiproxyApi::to_rule(toxic("noop", {}, false, 2.0f)).match.probability);
    }
    SUBCASE("huge and negative values are clamped") {
        auto r = ToxiproxyApi::to_rule(toxic("latency", {{"latency", INT64_MAX}, {"jitter", -5}}));
        auto f = std::get<config::LatencyFault>(r.fault);
        CHECK(f.delay == config::kMaxDuration);
        CHECK(f.jitter == 0ms);
    }
}

TEST_CASE("toxiproxy: enabled false takes the proxy down with a refuse rule") {
    Rig rig;
    rig.create("db");
    ProxyServer* p = rig.server("db");
    HttpResponse off = rig.call("POST", "/proxies/db", R"({"enabled":false})");
    CHECK(off.status == 200);
    CHECK(off.body.find(R"("enabled":false)") != std::string::npos);
    const config::Rule* r = rule(p, ToxiproxyApi::kDisabledRule);
    REQUIRE(r != nullptr);
    CHECK(r->enabled);
    CHECK(std::holds_alternative<config::RefuseFault>(r->fault));

    HttpResponse on = rig.call("PATCH", "/proxies/db", R"({"enabled":true})");
    CHECK(on.status == 200);
    CHECK(on.body.find(R"("enabled":true)") != std::string::npos);
    CHECK_FALSE(rule(p, ToxiproxyApi::kDisabledRule)->enabled);
    CHECK(rig.call("POST", "/proxies/db", "{").body ==
          err(400, "bad request body: unexpected EOF"));
    CHECK(rig.call("POST", "/proxies/db", R"({"enabled":"no"})").status == 400);

    // Created disabled.
    HttpResponse c = rig.call("POST", "/proxies",
                              R"({"name":"down","listen":"127.0.0.1:0","upstream":"127.0.0.1:1",)"
                              R"("enabled":false})");
    CHECK(c.status == 201);
    CHECK(c.body.find(R"("enabled":false)") != std::string::npos);
    CHECK(rule(rig.server("down"), ToxiproxyApi::kDisabledRule)->enabled);
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

    // An address that cannot be bound: 500, and the proxy stays (down) where it was.
    rig.create("other");
    std::string taken = rig.server("other")->listen_addr();
    std::string before = p->listen_addr();
    HttpResponse bad = rig.call("POST", "/proxies/svc", R"({"listen":")" + taken + "\"}");
    CHECK(bad.status == 500);
    ProxyServer* again = rig.server("svc");
    REQUIRE(again != nullptr);
    CHECK(again->listen_addr() == before);
    CHECK(rig.call("GET", "/proxies/svc").body.find(R"("enabled":false)") != std::string::npos);
    CHECK(rule(again, "latency_downstream") != nullptr);
}

TEST_CASE("toxiproxy: reset removes toxics, re-enables, and leaves file rules alone") {
    Rig rig;
    config::Proxy file;
    file.name = "fromfile";
    file.listen = {"127.0.0.1", 0};
    file.upstream = {"127.0.0.1", 1};
    config::Rule own;
    own.name = "own";
    own.fault = config::ResetFault{};
    file.rules.push_back(own);
    REQUIRE(rig.add(file).empty());
    // File proxies are listed, without toxics.
    HttpResponse f = rig.call("GET", "/proxies/fromfile");
    CHECK(f.status == 200);
    CHECK(f.body.find(R"("upstream":"127.0.0.1:1","enabled":true,"toxics":[])") !=
          std::string::npos);

    REQUIRE(rig.call("POST", "/proxies/fromfile/toxics", R"({"type":"slow_close"})").status == 200);
    REQUIRE(rig.call("POST", "/proxies/fromfile", R"({"enabled":false})").status == 200);
    rig.create("mine");
    REQUIRE(rig.call("POST", "/proxies/mine/toxics", R"({"type":"bandwidth"})").status == 200);

    HttpResponse r = rig.call("POST", "/reset");
    CHECK(r.status == 204);
    CHECK(r.body.empty());
    ProxyServer* p = rig.server("fromfile");
    CHECK(rule(p, "own") != nullptr);
    CHECK(rule(p, "slow_close_downstream") == nullptr);
    CHECK(rig.call("GET", "/proxies/fromfile").body.find(R"("enabled":true,"toxics":[])") !=
          std::string::npos);
    CHECK(rig.call("GET", "/proxies/mine/toxics").body == "[]");
    CHECK(rule(rig.server("mine"), "bandwidth_downstream") == nullptr);
}

TEST_CASE("toxiproxy: populate") {
    Rig rig;
    const std::string body =
        R"([{"name":"a","listen":"127.0.0.1:0","upstream":"127.0.0.1:6379"},)"
        R"({"name":"b","listen":"127.0.0.1:0","upstream":"127.0.0.1:3306","enabled":false}])";
    HttpResponse r = rig.call("POST", "/populate", body);
    CHECK(r.status == 201);
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

    // A different upstream replaces the proxy: a fresh one, without toxics.
    HttpResponse changed = rig.call(
        "POST", "/populate", R"([{"name":"a","listen":"127.0.0.1:0","upstream":"127.0.0.1:1"}])");
    CHECK(changed.status == 201);
    CHECK(changed.body.find(R"("upstream":"127.0.0.1:1","enabled":true,"toxics":[])") !=
          std::string::npos);
    CHECK(rule(rig.server("a"), "latency_downstream") == nullptr);
    CHECK(rig.server("b") != nullptr);  // not in the request: left alone

    CHECK(rig.call("POST", "/populate", "[]").body == R"({"proxies":null})");
    HttpResponse missing = rig.call("POST", "/populate", R"([{"name":"c"}])");
    CHECK(missing.status == 400);
    CHECK(missing.body ==
          R"({"error":"missing required field: upstream at proxy 1","status":400,"proxies":null})");
    CHECK(rig.call("POST", "/populate", R"([{"upstream":"x:1"}])").body ==
          R"({"error":"missing required field: name at proxy 1","status":400,"proxies":null})");
    CHECK(rig.call("POST", "/populate", "{}").status == 400);
    CHECK(rig.server("c") == nullptr);
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

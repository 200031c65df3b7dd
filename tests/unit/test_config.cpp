// The config loader: schema, defaults, and the exact position and text of every error class.
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <re2/re2.h>
#include <csignal>
#include <functional>
#include <new>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "config/config.hpp"

using namespace tcpfault::config;
using namespace std::chrono_literals;

#if defined(__SANITIZE_ADDRESS__)
#define TCPFAULT_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TCPFAULT_TEST_ASAN 1
#endif
#endif
#ifndef TCPFAULT_TEST_ASAN
#define TCPFAULT_TEST_ASAN 0
#endif

namespace {

std::optional<std::string> no_env(const std::string&) {
    return std::nullopt;
}

std::optional<std::string> test_env(const std::string& name) {
    if (name == "LISTEN") return "0.0.0.0:2525";
    if (name == "UPSTREAM_HOST") return "mail.example.com";
    if (name == "TOKEN") return "s3cret";
    if (name == "EMPTY") return "";
    return std::nullopt;
}

std::vector<std::string> errors_of(const std::string& yaml, EnvLookup env = no_env) {
    auto r = load_string(yaml, "t.yaml", env);
    std::vector<std::string> out;
    for (const auto& d : r.errors) out.push_back(d.str());
    CHECK(r.config.has_value() == r.errors.empty());
    return out;
}

std::string one_error(const std::string& yaml, EnvLookup env = no_env) {
    auto e = errors_of(yaml, env);
    INFO(doctest::toString(e.size()), " errors");
    for (const auto& s : e) INFO(s);
    REQUIRE(e.size() == 1);
    return e[0];
}

Config ok(const std::string& yaml, EnvLookup env = no_env) {
    auto r = load_string(yaml, "t.yaml", env);
    for (const auto& d : r.errors) FAIL_CHECK(d.str());
    REQUIRE(r.config);
    return *r.config;
}

// A proxy skeleton so rule tests only spell out the rule. Rule keys start at column 7,
// fault parameters written as a block at column 9; the first rule line is line 5.
std::string with_rules(const std::string& rules, const std::string& protocol = "tcp") {
    return "proxies:\n"
           "  - name: p\n"
           "    listen: 127.0.0.1:0\n"
           "    upstream: 127.0.0.1:9\n"
           "    protocol: " +
           protocol +
           "\n"
           "    rules:\n" +
           rules;
}

// Runs `f` in a child process killed after `seconds` (and, outside sanitizer builds, limited
// to 1 GiB of address space), so an input that hangs the parser fails the test instead of
// hanging the suite and eating the machine's memory. Returns what f returned, or a line
// saying how the child died.
std::string in_bounded_child(const std::function<std::string()>& f, unsigned seconds = 5) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        alarm(seconds);
#if !TCPFAULT_TEST_ASAN  // ASan reserves terabytes of address space for its shadow
        rlimit lim{1ul << 30, 1ul << 30};
        setrlimit(RLIMIT_AS, &lim);
#endif
        // The child must never return into doctest: that would run the rest of the suite twice.
        std::string out;
        try {
            out = f();
        } catch (const std::bad_alloc&) {
            out = "<out of memory>";
        } catch (...) {
            out = "<exception>";
        }
        const char* p = out.data();
        size_t left = out.size();
        while (left > 0) {
            ssize_t n = write(fds[1], p, left);
            if (n <= 0) _exit(3);
            p += n;
            left -= static_cast<size_t>(n);
        }
        _exit(0);
    }
    close(fds[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
        return WTERMSIG(status) == SIGALRM
                   ? "<no answer within " + std::to_string(seconds) + " s>"
                   : "<killed by signal " + std::to_string(WTERMSIG(status)) + ">";
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return "<child failed>";
    return out;
}

// load_string's diagnostics, one per line, computed in a bounded child process.
std::string bounded_errors(const std::string& yaml) {
    return in_bounded_child([&] {
        auto r = load_string(yaml, "t.yaml", no_env);
        std::string out;
        for (const auto& d : r.errors) out += d.str() + "\n";
        if (r.config.has_value() == !r.errors.empty()) out += "<config and errors disagree>\n";
        return out;
    });
}

// parse_rule's diagnostics (the admin API's path for rule bodies), the same way.
std::string bounded_rule_errors(const std::string& body) {
    return in_bounded_child([&] {
        auto r = parse_rule(body, "body");
        std::string out;
        for (const auto& d : r.errors) out += d.str() + "\n";
        if (r.rule.has_value() == !r.errors.empty()) out += "<rule and errors disagree>\n";
        return out;
    });
}

Rule one_rule(const std::string& rules, const std::string& protocol = "tcp") {
    Config c = ok(with_rules(rules, protocol));
    REQUIRE(c.proxies.size() == 1);
    REQUIRE(c.proxies[0].rules.size() == 1);
    return c.proxies[0].rules[0];
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Valid input and defaults

TEST_CASE("empty input is a config with no proxies and every default") {
    for (const char* text : {"", "# just a comment\n", "proxies: []\n", "proxies:\n", "---\n"}) {
        Config c = ok(text);
        CHECK(c.proxies.empty());
        CHECK(c.admin.enabled);
        CHECK(c.admin.listen.str() == "127.0.0.1:9474");
        CHECK(c.admin.token.empty());
        CHECK(c.log.level == LogLevel::info);
        CHECK(c.log.format == LogFormat::text);
        CHECK_FALSE(c.seed);
        CHECK(c.shutdown_grace == 5s);
        CHECK(c.workers == 1);
        CHECK_FALSE(c.toxiproxy.enabled);
        CHECK(c.toxiproxy.listen.str() == "127.0.0.1:8474");
    }
}

TEST_CASE("top-level settings") {
    Config c = ok(R"Y(admin:
  listen: "[::1]:9000"
  token: abc
log: {level: debug, format: json}
seed: 42
shutdown_grace: 1500ms
workers: auto
toxiproxy: {listen: 127.0.0.1:8475, allow_unauthenticated: true, manage_config_proxies: true,
            allow_listen: [127.0.0.1], allow_upstream: ["10.0.0.0/8:5432", "*"],
            proxy_metrics: true, runtime_metrics: false}
)Y");
    CHECK(c.admin.enabled);
    CHECK(c.admin.listen.host == "::1");
    CHECK(c.admin.listen.port == 9000);
    CHECK(c.admin.token == "abc");
    CHECK(c.log.level == LogLevel::debug);
    CHECK(c.log.format == LogFormat::json);
    CHECK(c.seed == 42u);
    CHECK(c.shutdown_grace == 1500ms);
    CHECK(c.workers == 0);
    CHECK(c.toxiproxy.enabled);
    CHECK(c.toxiproxy.listen.port == 8475);
    CHECK(c.toxiproxy.allow_unauthenticated);
    CHECK(c.toxiproxy.manage_config_proxies);
    CHECK(c.toxiproxy.allow_listen->size() == 1);
    CHECK(c.toxiproxy.allow_upstream->size() == 2);
    CHECK(c.toxiproxy.proxy_metrics);
    CHECK_FALSE(c.toxiproxy.runtime_metrics);
    CHECK_FALSE(ok("toxiproxy: {}\n").toxiproxy.allow_upstream.has_value());

    CHECK(ok("workers: 4\n").workers == 4);
    CHECK(ok("toxiproxy: {}\n").toxiproxy.enabled);
    CHECK_FALSE(ok("toxiproxy: {listen: off}\n").toxiproxy.enabled);
    CHECK(ok("seed: 18446744073709551615\n").seed == UINT64_MAX);
    CHECK_FALSE(ok("seed:\n").seed);
}

TEST_CASE("admin.listen: off disables the admin server, however YAML spells it") {
    for (const char* v : {"off", "Off", "false", "\"off\""}) {
        Config c = ok(std::string("admin:\n  listen: ") + v + "\n");
        CHECK_FALSE(c.admin.enabled);
    }
}

TEST_CASE("proxy and rule defaults") {
    Config c = ok(R"Y(proxies:
  - name: smtp
    listen: 0.0.0.0:2525
    upstream: mail:25
    rules:
      - name: r
        fault: {type: reset}
)Y");
    REQUIRE(c.proxies.size() == 1);
    const Proxy& p = c.proxies[0];
    CHECK(p.name == "smtp");
    CHECK(p.listen.str() == "0.0.0.0:2525");
    CHECK(p.upstream.str() == "mail:25");
    CHECK(p.protocol == Protocol::tcp);
    CHECK(p.connect_timeout == 10s);
    CHECK(p.on_upstream_error == OnUpstreamError::reset);
    CHECK(p.pos.line == 2);
    CHECK(p.pos.col == 5);
    REQUIRE(p.rules.size() == 1);
    const Rule& r = p.rules[0];
    CHECK(r.name == "r");
    CHECK(r.enabled);
    CHECK(r.pos.line == 6);
    CHECK(r.pos.col == 9);
    CHECK(r.match.clients.empty());
    CHECK(r.match.channel == Channel::any);
    CHECK(r.match.connections.kind == ConnectionsMatch::Kind::any);
    CHECK_FALSE(r.match.probability);
    CHECK_FALSE(r.match.schedule);
    CHECK_FALSE(r.match.limit);
    CHECK(r.match.existing);
    CHECK_FALSE(r.when);
    auto* reset = std::get_if<ResetFault>(&r.fault);
    REQUIRE(reset);
    CHECK(reset->to == Target::both);
    CHECK(reset->flush);
    CHECK(std::string(fault_name(r.fault)) == "reset");
}

TEST_CASE("proxy settings") {
    Config c = ok(R"Y(proxies:
  - name: ftp_1
    listen: "[::]:2121"
    upstream: "[2001:db8::1]:21"
    protocol: ftp
    connect_timeout: 2s
    on_upstream_error: close
    rules: []
)Y");
    const Proxy& p = c.proxies.at(0);
    CHECK(p.listen.host == "::");
    CHECK(p.upstream.host == "2001:db8::1");
    CHECK(p.protocol == Protocol::ftp);
    CHECK(p.connect_timeout == 2s);
    CHECK(p.on_upstream_error == OnUpstreamError::close);
}

TEST_CASE("match and when land in the struct") {
    Rule r = one_rule(R"Y(      - name: full
        enabled: false
        match:
          clients: [10.0.0.0/8, "::1/128"]
          channel: data
          connections: {every: 3}
          probability: 0.25
          schedule: {every: 5m, for: 2m, offset: 10s}
          limit: 10
          existing: false
        when:
          direction: downstream
          line: "^RCPT TO:"
          after_bytes: 700KiB
          after: 2s
        fault: {type: reset, to: client, flush: false}
)Y",
                      "ftp");
    CHECK(r.name == "full");
    CHECK_FALSE(r.enabled);
    REQUIRE(r.match.clients.size() == 2);
    CHECK(r.match.clients[0].str() == "10.0.0.0/8");
    CHECK(r.match.clients[1].str() == "::1/128");
    CHECK(r.match.channel == Channel::data);
    CHECK(r.match.connections.kind == ConnectionsMatch::Kind::every);
    CHECK(r.match.connections.n == 3);
    CHECK(r.match.probability == 0.25);
    REQUIRE(r.match.schedule);
    CHECK(r.match.schedule->every == 5min);
    CHECK(r.match.schedule->for_ == 2min);
    CHECK(r.match.schedule->offset == 10s);
    CHECK(r.match.limit == 10u);
    CHECK_FALSE(r.match.existing);
    REQUIRE(r.when);
    CHECK(r.when->direction == Direction::downstream);
    CHECK(r.when->line == "^RCPT TO:");
    REQUIRE(r.when->line_re);
    CHECK(RE2::PartialMatch("RCPT TO:<a@b>", *r.when->line_re));
    CHECK_FALSE(RE2::PartialMatch("MAIL FROM:<a@b>", *r.when->line_re));
    CHECK_FALSE(r.when->data);
    CHECK(r.when->after_bytes == 700u * 1024);
    CHECK(r.when->after == 2s);
    auto& f = std::get<ResetFault>(r.fault);
    CHECK(f.to == Target::client);
    CHECK_FALSE(f.flush);

    r = one_rule(R"Y(      - name: nth
        match: {connections: {nth: 7}, clients: 192.168.0.0/16, channel: control}
        when: {data: "STOR ", after_bytes: 1}
        fault: {type: reset}
)Y",
                 "ftp");
    CHECK(r.match.connections.kind == ConnectionsMatch::Kind::nth);
    CHECK(r.match.connections.n == 7);
    CHECK(r.match.clients.at(0).str() == "192.168.0.0/16");
    CHECK(r.match.channel == Channel::control);
    REQUIRE(r.when);
    CHECK(r.when->direction == Direction::upstream);
    CHECK(r.when->data == "STOR ");
    CHECK(r.when->after_bytes == 1u);

    r = one_rule(R"Y(      - name: first
        match: {connections: {first: 5}, schedule: {for: 30s}}
        when: {direction: upstream}
        fault: {type: reset}
)Y");
    CHECK(r.match.connections.kind == ConnectionsMatch::Kind::first);
    CHECK(r.match.connections.n == 5);
    CHECK(r.match.schedule->every == 0s);
    CHECK(r.match.schedule->for_ == 30s);
    // A `when` without conditions changes nothing: the fault starts at accept.
    CHECK_FALSE(r.when);
}

TEST_CASE("every fault type's parameters land in the struct") {
    auto fault = [](const std::string& flow) {
        return one_rule("      - name: f\n        fault: " + flow + "\n").fault;
    };

    auto close = std::get<CloseFault>(fault("{type: close}"));
    CHECK(close.to == Target::both);
    CHECK(close.then == CloseFault::Then::reset);
    close = std::get<CloseFault>(fault("{type: close, to: server, then: discard}"));
    CHECK(close.to == Target::server);
    CHECK(close.then == CloseFault::Then::discard);

    auto stall = std::get<StallFault>(fault("{type: stall}"));
    CHECK(stall.direction == Direction::both);
    CHECK_FALSE(stall.duration);
    CHECK(stall.mode == StallFault::Mode::hold);
    CHECK(stall.then == StallFault::Then::resume);
    stall = std::get<StallFault>(
        fault("{type: stall, direction: upstream, duration: 3s, mode: drop, then: close}"));
    CHECK(stall.direction == Direction::upstream);
    CHECK(stall.duration == 3s);
    CHECK(stall.mode == StallFault::Mode::drop);
    CHECK(stall.then == StallFault::Then::close);

    auto latency = std::get<LatencyFault>(fault("{type: latency, delay: 250ms}"));
    CHECK(latency.delay == 250ms);
    CHECK(latency.jitter == 0s);
    CHECK(latency.direction == Direction::downstream);
    latency =
        std::get<LatencyFault>(fault("{type: latency, delay: 1s, jitter: 100ms, direction: both}"));
    CHECK(latency.jitter == 100ms);
    CHECK(latency.direction == Direction::both);

    auto bw = std::get<BandwidthFault>(fault("{type: bandwidth, rate: 64KiB/s}"));
    CHECK(bw.rate == 65536);
    CHECK(bw.direction == Direction::downstream);
    bw = std::get<BandwidthFault>(fault("{type: bandwidth, rate: 1000/s, direction: upstream}"));
    CHECK(bw.rate == 1000);
    CHECK(bw.direction == Direction::upstream);

    auto slice = std::get<SliceFault>(fault("{type: slice, size: 4}"));
    CHECK(slice.min_size == 4);
    CHECK(slice.max_size == 4);
    CHECK(slice.delay == 0s);
    CHECK(slice.direction == Direction::both);
    slice =
        std::get<SliceFault>(fault("{type: slice, size: 1-16, delay: 5ms, direction: downstream}"));
    CHECK(slice.min_size == 1);
    CHECK(slice.max_size == 16);
    CHECK(slice.delay == 5ms);
    CHECK(slice.direction == Direction::downstream);

    auto clamp = std::get<ClampFault>(fault("{type: clamp, mss: 536}"));
    CHECK(clamp.side == Target::both);
    CHECK(clamp.mss == 536u);
    CHECK_FALSE(clamp.sndbuf);
    clamp = std::get<ClampFault>(fault(
        "{type: clamp, side: client, sndbuf: 4KiB, rcvbuf: 2KiB, window: 1KiB, read_size: 1}"));
    CHECK(clamp.side == Target::client);
    CHECK(clamp.sndbuf == 4096u);
    CHECK(clamp.rcvbuf == 2048u);
    CHECK(clamp.window == 1024u);
    CHECK(clamp.read_size == 1u);
    CHECK_FALSE(clamp.mss);

    auto cap = std::get<CapFault>(fault("{type: cap, max: 3}"));
    CHECK(cap.max == 3);
    CHECK(cap.over == CapFault::Over::reset);
    CHECK(cap.banner.empty());
    cap = std::get<CapFault>(
        fault("{type: cap, max: 1, over: banner, banner: \"421 Too many connections\\r\\n\"}"));
    CHECK(cap.over == CapFault::Over::banner);
    CHECK(cap.banner == "421 Too many connections\r\n");
    CHECK(std::get<CapFault>(fault("{type: cap, max: 1, over: hold}")).over ==
          CapFault::Over::hold);
    CHECK(std::get<CapFault>(fault("{type: cap, max: 1, over: close}")).over ==
          CapFault::Over::close);

    CHECK(std::holds_alternative<RefuseFault>(fault("{type: refuse}")));

    auto idle = std::get<IdleFault>(fault("{type: idle, timeout: 30s}"));
    CHECK(idle.timeout == 30s);
    CHECK(idle.action == IdleFault::Action::reset);
    CHECK(std::get<IdleFault>(fault("{type: idle, timeout: 1m, action: drop}")).action ==
          IdleFault::Action::drop);
    CHECK(std::get<IdleFault>(fault("{type: idle, timeout: 1m, action: close}")).action ==
          IdleFault::Action::close);

    CHECK(std::get<RestartFault>(fault("{type: restart}")).downtime == 0s);
    CHECK(std::get<RestartFault>(fault("{type: restart, downtime: 5s}")).downtime == 5s);

    auto reset = std::get<ResetFault>(fault("{type: reset, to: server, flush: false}"));
    CHECK(reset.to == Target::server);
    CHECK_FALSE(reset.flush);
}

TEST_CASE("the example files load without errors") {
    for (const char* name : {"/examples/all-faults.yaml", "/examples/demo.yaml"}) {
        auto r = load_file(std::string(TCPFAULT_SOURCE_DIR) + name, no_env);
        for (const auto& d : r.errors) FAIL_CHECK(d.str());
        CHECK(r.config);
    }
    auto demo = load_file(TCPFAULT_SOURCE_DIR "/examples/demo.yaml", no_env);
    REQUIRE(demo.config);
    REQUIRE(demo.config->proxies.size() == 1);
    const Proxy& web = demo.config->proxies[0];
    CHECK(web.name == "web");
    CHECK(web.listen.str() == "127.0.0.1:8080");
    CHECK(web.upstream.str() == "127.0.0.1:8000");
    REQUIRE(web.rules.size() == 2);
    CHECK(web.rules[0].name == "every-third-reset");
    CHECK(web.rules[1].name == "slow");

    // all-faults really covers every fault type.
    auto all = load_file(TCPFAULT_SOURCE_DIR "/examples/all-faults.yaml", no_env);
    REQUIRE(all.config);
    std::set<std::string> types;
    for (const auto& p : all.config->proxies) {
        for (const auto& rule : p.rules) types.insert(fault_name(rule.fault));
    }
    CHECK(types.size() == std::variant_size_v<FaultSpec>);
}

// ---------------------------------------------------------------------------------------------
// Environment expansion

TEST_CASE("env: values and defaults are substituted before parsing") {
    Config c = ok(R"Y(admin: {listen: off, token: ${TOKEN}}
proxies:
  - name: smtp
    listen: ${LISTEN}
    upstream: ${UPSTREAM_HOST}:${PORT:-25}
    connect_timeout: ${TIMEOUT:-3s}
)Y",
                  test_env);
    CHECK(c.admin.token == "s3cret");
    CHECK(c.proxies.at(0).listen.str() == "0.0.0.0:2525");
    CHECK(c.proxies.at(0).upstream.str() == "mail.example.com:25");
    CHECK(c.proxies.at(0).connect_timeout == 3s);

    // docs/config.md's example: an unset token defaults to empty (no auth).
    CHECK(ok("admin:\n  token: ${TCPFAULT_TOKEN_SURELY_UNSET:-}\n").admin.token.empty());
    CHECK(ok("admin:\n  token: $${NOT_A_VAR}\n").admin.token == "${NOT_A_VAR}");
}

TEST_CASE("env: an unset variable without default is an error at its ${") {
    CHECK(one_error("proxies:\n  - name: x\n    listen: ${NOPE}\n") ==
          "t.yaml:3:13: environment variable NOPE is not set (use ${NOPE:-default})");
    auto e = errors_of("a: ${ONE}\nb: [${TWO}, ${THREE:-3}]\n");
    REQUIRE(e.size() == 2);
    CHECK(e[0] == "t.yaml:1:4: environment variable ONE is not set (use ${ONE:-default})");
    CHECK(e[1] == "t.yaml:2:5: environment variable TWO is not set (use ${TWO:-default})");
}

TEST_CASE("env: positions after a substitution still point at the original text") {
    // ${LISTEN} (9 chars) becomes 0.0.0.0:2525 (12 chars): the error after it must not move.
    CHECK(one_error(R"Y(proxies:
  - {name: p, listen: ${LISTEN}, upstream: "mail:0"}
)Y",
                    test_env) ==
          "t.yaml:2:44: upstream: expected host:port like 127.0.0.1:8080, [::1]:8080 or mail:25, "
          "found \"mail:0\" (port 0 is only valid for listen addresses)");
    // An error inside a substituted value points at the reference.
    CHECK(one_error("workers: ${TOKEN}\n", test_env) ==
          "t.yaml:1:10: workers: expected an integer >= 1 or \"auto\", found \"s3cret\"");
}

// ---------------------------------------------------------------------------------------------
// One test per error class, with the exact position and text

TEST_CASE("error: unknown key, with and without a suggestion") {
    auto e = errors_of(R"Y(proxies:
  - name: smtp
    listn: 0.0.0.0:2525
    upstream: mail:25
)Y");
    REQUIRE(e.size() == 2);
    CHECK(e[0] == "t.yaml:2:5: proxy is missing required key \"listen\"");
    CHECK(e[1] ==
          "t.yaml:3:5: unknown key \"listn\" in proxy (expected one of: name, listen, upstream, "
          "protocol, connect_timeout, on_upstream_error, rules); did you mean \"listen\"?");

    CHECK(one_error("colour: red\n") ==
          "t.yaml:1:1: unknown key \"colour\" at top level (expected one of: admin, log, seed, "
          "shutdown_grace, workers, toxiproxy, proxies, watch)");
    CHECK(one_error("log:\n  levle: info\n") ==
          "t.yaml:2:3: unknown key \"levle\" in log (expected one of: level, format); did you mean "
          "\"level\"?");
}

TEST_CASE("error: unknown parameter for a fault type (at 14:9)") {
    auto r = load_string(R"Y(admin:
  listen: 127.0.0.1:9474
proxies:
  - name: smtp
    listen: 0.0.0.0:2525
    upstream: mail:25
    rules:
    - name: first
      fault: {type: close}
    - name: second
      fault:
        type: reset
        to: client
        rate: 64KiB/s
)Y",
                         "tcpfault.yaml", no_env);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].str() ==
          "tcpfault.yaml:14:9: unknown key \"rate\" for fault type \"reset\" (expected one of: to, "
          "flush, client, server)");
    CHECK(r.errors[0].file == "tcpfault.yaml");
    CHECK(r.errors[0].pos.line == 14);
    CHECK(r.errors[0].pos.col == 9);
    CHECK(r.errors[0].message ==
          "unknown key \"rate\" for fault type \"reset\" (expected one of: to, flush, client, "
          "server)");

    CHECK(one_error(with_rules("      - name: r\n        fault: {type: refuse, max: 3}\n")) ==
          "t.yaml:8:31: unknown key \"max\" for fault type \"refuse\" (it takes no parameters)");
    // A misspelt required parameter: both the unknown key and the missing one are reported.
    auto e = errors_of(with_rules("      - name: r\n        fault: {type: latency, dely: 1s}\n"));
    REQUIRE(e.size() == 2);
    CHECK(e[0] == "t.yaml:8:16: fault type \"latency\" is missing required key \"delay\"");
    CHECK(e[1] ==
          "t.yaml:8:32: unknown key \"dely\" for fault type \"latency\" (expected one of: delay, "
          "jitter, direction); did you mean \"delay\"?");
}

TEST_CASE("error: unknown fault type") {
    CHECK(one_error(with_rules("      - name: r\n        fault: {type: rst}\n")) ==
          "t.yaml:8:23: unknown fault type \"rst\" (expected one of: reset, close, stall, latency, "
          "bandwidth, slice, clamp, cap, refuse, idle, restart, slow_close, blackhole, loss, "
          "drop_syn)");
    CHECK(one_error(with_rules("      - name: r\n        fault: {to: client}\n")) ==
          "t.yaml:8:16: fault is missing required key \"type\"");
}

TEST_CASE("error: wrong types") {
    CHECK(one_error(with_rules("      - name: r\n        match: [1, 2]\n        fault: {type: "
                               "reset}\n")) ==
          "t.yaml:8:16: match: expected a mapping, found a sequence");
    CHECK(
        one_error(with_rules("      - name: r\n        enabled: yes please\n        fault: {type: "
                             "reset}\n")) ==
        "t.yaml:8:18: enabled: expected a boolean (true/false), found \"yes please\"");
    CHECK(one_error(with_rules("      - name: r\n        enabled: {a: 1}\n        fault: {type: "
                               "reset}\n")) ==
          "t.yaml:8:18: enabled: expected a boolean (true/false), found a mapping");
    CHECK(one_error("proxies: {a: 1}\n") ==
          "t.yaml:1:10: proxies: expected a sequence, found a mapping");
    CHECK(one_error("proxies:\n  - just-a-name\n") ==
          "t.yaml:2:5: proxy: expected a mapping, found \"just-a-name\"");
    CHECK(one_error("log: text\n") == "t.yaml:1:6: log: expected a mapping, found \"text\"");
    CHECK(one_error("seed: lots\n") == "t.yaml:1:7: seed: expected an integer, found \"lots\"");
    CHECK(one_error("seed: -1\n") == "t.yaml:1:7: seed: must be at least 0, found \"-1\"");
    CHECK(one_error("workers: 0\n") == "t.yaml:1:10: workers: must be at least 1, found \"0\"");
    CHECK(one_error("workers: many\n") ==
          "t.yaml:1:10: workers: expected an integer >= 1 or \"auto\", found \"many\"");
    CHECK(one_error("shutdown_grace: 5\n") ==
          "t.yaml:1:17: shutdown_grace: expected a duration like 250ms, 2s, 5m, 1h, found \"5\" "
          "(missing unit)");
    CHECK(one_error("admin:\n  listen:\n") ==
          "t.yaml:2:3: admin.listen: expected host:port like 127.0.0.1:8080, [::1]:8080 or "
          "mail:25, found nothing");
}

TEST_CASE("error: the top level must be a mapping") {
    CHECK(one_error("- a\n- b\n") ==
          "t.yaml:1:1: expected a mapping at the top level, found a sequence");
    CHECK(one_error("hello\n") ==
          "t.yaml:1:1: expected a mapping at the top level, found \"hello\"");
}

TEST_CASE("error: invalid enum values") {
    CHECK(one_error(R"Y(proxies:
  - name: smtp
    listen: 0.0.0.0:2525
    upstream: mail:25
    on_upstream_error: sometimes
)Y") == "t.yaml:5:24: invalid value \"sometimes\" for on_upstream_error (expected one of: reset, "
        "close)");
    CHECK(one_error("log: {level: loud}\n") ==
          "t.yaml:1:14: invalid value \"loud\" for log.level (expected one of: error, warn, info, "
          "debug)");
    CHECK(one_error(with_rules("      - name: r\n        fault: {type: reset, to: everyone}\n")) ==
          "t.yaml:8:34: invalid value \"everyone\" for fault.to (expected one of: client, server, "
          "both)");
    CHECK(
        one_error(with_rules("      - name: r\n        when: {direction: sideways}\n        fault: "
                             "{type: reset}\n")) ==
        "t.yaml:8:27: invalid value \"sideways\" for when.direction (expected one of: upstream, "
        "downstream, both, any)");
}

TEST_CASE("error: duplicate names") {
    CHECK(one_error(R"Y(proxies:
  # the first one
  - name: smtp
    listen: 0.0.0.0:2525
    upstream: mail:25
  - name: smtp
    listen: 0.0.0.0:2526
    upstream: mail:25
)Y") == "t.yaml:6:11: duplicate proxy name \"smtp\" (first defined at 3:5)");

    CHECK(one_error(with_rules(R"Y(      - name: r1
        fault: {type: reset}
      - name: r1
        fault: {type: close}
)Y")) == "t.yaml:9:15: duplicate rule name \"r1\" in proxy \"p\" (first defined at 7:9)");

    // The same rule name in two proxies is fine.
    ok(R"Y(proxies:
  - {name: a, listen: "127.0.0.1:0", upstream: "x:1", rules: [{name: r, fault: {type: reset}}]}
  - {name: b, listen: "127.0.0.1:0", upstream: "x:1", rules: [{name: r, fault: {type: reset}}]}
)Y");
}

TEST_CASE("error: duplicate keys") {
    CHECK(one_error("seed: 1\nseed: 2\n") ==
          "t.yaml:2:1: duplicate key \"seed\" (first defined at 1:1)");
}

TEST_CASE("error: invalid names") {
    CHECK(one_error("proxies:\n  - {name: SMTP, listen: \"127.0.0.1:0\", upstream: \"x:1\"}\n") ==
          "t.yaml:2:12: invalid name \"SMTP\" (expected lowercase letters, digits, \"_\" and "
          "\"-\", at most 128 characters)");
    CHECK(one_error("proxies:\n  - {name: \"\", listen: \"127.0.0.1:0\", upstream: \"x:1\"}\n") ==
          "t.yaml:2:12: name: expected a non-empty string, found \"\"");
}

TEST_CASE("error: missing required keys, at the mapping") {
    CHECK(one_error(R"Y(proxies:
  - name: smtp
    listen: 0.0.0.0:2525
)Y") == "t.yaml:2:5: proxy is missing required key \"upstream\"");
    auto e = errors_of(with_rules("      - enabled: true\n"));
    REQUIRE(e.size() == 2);
    CHECK(e[0] == "t.yaml:7:9: rule is missing required key \"name\"");
    CHECK(e[1] == "t.yaml:7:9: rule is missing required key \"fault\"");
}

TEST_CASE("error: addresses") {
    CHECK(one_error("proxies:\n  - {name: a, listen: \"127.0.0.1:0\", upstream: mail}\n") ==
          "t.yaml:2:48: upstream: expected host:port like 127.0.0.1:8080, [::1]:8080 or mail:25, "
          "found \"mail\" (missing :port)");
    CHECK(one_error("admin: {listen: \"127.0.0.1:99999\"}\n") ==
          "t.yaml:1:17: admin.listen: expected host:port like 127.0.0.1:8080, [::1]:8080 or "
          "mail:25, found \"127.0.0.1:99999\" (port must be 0-65535)");
}

TEST_CASE("error: two listeners on the same address") {
    // Port 0 never conflicts, and a different host is a different address.
    auto e = errors_of(R"Y(admin: {listen: "127.0.0.1:9000"}
proxies:
  - {name: a, listen: "0.0.0.0:2525", upstream: "x:1"}
  - {name: b, listen: "0.0.0.0:2525", upstream: "x:1"}
  - {name: c, listen: "127.0.0.1:9000", upstream: "x:1"}
  - {name: d, listen: "0.0.0.0:0", upstream: "x:1"}
  - {name: e, listen: "0.0.0.0:0", upstream: "x:1"}
  - {name: f, listen: "127.0.0.1:2525", upstream: "x:1"}
)Y");
    REQUIRE(e.size() == 2);
    CHECK(e[0] ==
          "t.yaml:4:23: listen address 0.0.0.0:2525 is already used by proxy \"a\" (at 3:23)");
    CHECK(e[1] ==
          "t.yaml:5:23: listen address 127.0.0.1:9000 is already used by admin.listen (at "
          "1:17)");
}

TEST_CASE("error: channel needs protocol ftp") {
    CHECK(one_error(with_rules("      - name: r\n        match: {channel: data}\n        fault: "
                               "{type: reset}\n")) ==
          "t.yaml:8:17: match.channel is only valid with protocol: ftp");
    one_rule("      - name: r\n        match: {channel: data}\n        fault: {type: reset}\n",
             "ftp");
    CHECK(one_error(with_rules("      - name: r\n        match: {channel: both}\n        fault: "
                               "{type: reset}\n",
                               "ftp")) ==
          "t.yaml:8:26: invalid value \"both\" for match.channel (expected one of: control, data)");
}

TEST_CASE("error: match conditions") {
    auto rule = [](const std::string& match) {
        return with_rules("      - name: r\n        match: " + match +
                          "\n        fault: {type: reset}\n");
    };
    CHECK(one_error(rule("{connections: {every: 3, nth: 2}}")) ==
          "t.yaml:8:30: match.connections needs exactly one of: every, nth, first");
    CHECK(one_error(rule("{connections: {}}")) ==
          "t.yaml:8:30: match.connections needs exactly one of: every, nth, first");
    CHECK(one_error(rule("{connections: {every: 0}}")) ==
          "t.yaml:8:38: match.connections.every: must be at least 1, found \"0\"");
    CHECK(one_error(rule("{connections: {each: 3}}")) ==
          "t.yaml:8:31: unknown key \"each\" in match.connections (expected one of: every, nth, "
          "first)");
    CHECK(one_error(rule("{connections: 3}")) ==
          "t.yaml:8:30: match.connections: expected a mapping, found \"3\"");
    CHECK(one_error(rule("{probability: 1.5}")) ==
          "t.yaml:8:30: match.probability: expected a number from 0 to 1, found \"1.5\"");
    CHECK(one_error(rule("{probability: 25%}")) ==
          "t.yaml:8:30: match.probability: expected a number from 0 to 1, found \"25%\"");
    CHECK(one_error(rule("{limit: 0}")) ==
          "t.yaml:8:24: match.limit: must be at least 1, found \"0\"");
    CHECK(one_error(rule("{existing: maybe}")) ==
          "t.yaml:8:27: match.existing: expected a boolean (true/false), found \"maybe\"");
    CHECK(one_error(rule("{clients: [10.0.0.0/8, 10.0.0.0/40]}")) ==
          "t.yaml:8:39: match.clients: expected a CIDR like 10.0.0.0/8 or ::1/128, found "
          "\"10.0.0.0/40\" (prefix length must be 0-32)");
    CHECK(one_error(rule("{schedule: {every: 1m, for: 2m}}")) ==
          "t.yaml:8:44: match.schedule.for (2m) must not be longer than match.schedule.every (1m)");
    auto e = errors_of(rule("{schedule: {every: 0s, for: 0s}}"));
    REQUIRE(e.size() == 2);
    CHECK(e[0] == "t.yaml:8:35: match.schedule.every: must be greater than 0, found \"0s\"");
    CHECK(e[1] == "t.yaml:8:44: match.schedule.for: must be greater than 0, found \"0s\"");
    CHECK(one_error(rule("{schedule: {every: 1m}}")) ==
          "t.yaml:8:27: match.schedule is missing required key \"for\"");
    CHECK(one_error(rule("{schdule: {for: 1m}}")) ==
          "t.yaml:8:17: unknown key \"schdule\" in match (expected one of: clients, channel, "
          "connections, probability, schedule, limit, existing); did you mean \"schedule\"?");
}

TEST_CASE("error: when conditions") {
    auto rule = [](const std::string& when) {
        return with_rules("      - name: r\n        when: " + when +
                          "\n        fault: {type: reset}\n");
    };
    CHECK(one_error(rule("{line: \"(unclosed\"}"))
              .starts_with("t.yaml:8:22: when.line: invalid regular expression \"(unclosed\": "));
    CHECK(one_error(rule("{data: \"\"}")) ==
          "t.yaml:8:22: when.data: expected a non-empty string, found \"\"");
    CHECK(one_error(rule("{data: x, line: y}")) ==
          "t.yaml:8:25: when.data and when.line cannot be combined (use one)");
    CHECK(one_error(rule("{after_bytes: 1.5}")) ==
          "t.yaml:8:29: when.after_bytes: expected a size like 512, 64KiB, 1MiB or 1MB, found "
          "\"1.5\" (not a whole number of bytes)");
    CHECK(one_error(rule("{after: 2}")) ==
          "t.yaml:8:23: when.after: expected a duration like 250ms, 2s, 5m, 1h, found \"2\" "
          "(missing unit)");
    CHECK(one_error(rule("{afterbytes: 1}")) ==
          "t.yaml:8:16: unknown key \"afterbytes\" in when (expected one of: direction, data, "
          "line, after_bytes, after, next_byte); did you mean \"after_bytes\"?");
}

TEST_CASE("error: rules that act on the proxy") {
    CHECK(one_error(with_rules(R"Y(      - name: r
        when: {after: 1s}
        fault: {type: cap, max: 1}
)Y")) == "t.yaml:8:9: when is not allowed for fault type \"cap\" (it acts on the proxy, not on "
         "bytes)");
    CHECK(one_error(with_rules(R"Y(      - name: r
        when: {after: 1s}
        fault: {type: refuse}
)Y")) == "t.yaml:8:9: when is not allowed for fault type \"refuse\" (it acts on the proxy, not "
         "on bytes)");
    CHECK(one_error(with_rules(R"Y(      - name: r
        when: {after: 1s}
        fault: {type: restart}
)Y"))
              .starts_with("t.yaml:8:9: when is not allowed for fault type \"restart\""));

    auto e = errors_of(with_rules(R"Y(      - name: r
        match:
          clients: [10.0.0.0/8]
          schedule: {every: 1m, for: 1s}
          limit: 1
          probability: 0.5
        fault: {type: restart}
)Y"));
    REQUIRE(e.size() == 2);
    CHECK(e[0] ==
          "t.yaml:9:11: match.clients is not allowed for fault type \"restart\" (it "
          "accepts only schedule and limit in match)");
    CHECK(e[1] ==
          "t.yaml:12:11: match.probability is not allowed for fault type \"restart\" (it "
          "accepts only schedule and limit in match)");
    CHECK(one_error(with_rules(R"Y(      - name: r
        match: {connections: {every: 2}}
        fault: {type: refuse}
)Y")) == "t.yaml:8:17: match.connections is not allowed for fault type \"refuse\" (it accepts "
         "only schedule and limit in match)");
    // cap counts "connections matching the rule", so its match is unrestricted.
    one_rule(
        "      - name: r\n        match: {clients: [10.0.0.0/8], probability: 1}\n        "
        "fault: {type: cap, max: 1}\n");
}

TEST_CASE("error: fault parameter rules") {
    auto fault = [](const std::string& f) {
        return with_rules("      - name: r\n        fault: " + f + "\n");
    };
    CHECK(one_error(fault("{type: stall, then: reset}")) ==
          "t.yaml:8:36: fault type \"stall\" with then: reset requires a duration");
    CHECK(one_error(fault("{type: stall, duration: 0s}")) ==
          "t.yaml:8:40: fault.duration: must be greater than 0, found \"0s\"");
    CHECK(one_error(fault("{type: clamp, side: client}")) ==
          "t.yaml:8:16: fault type \"clamp\" needs at least one of: sndbuf, rcvbuf, window, mss, "
          "read_size");
    CHECK(one_error(fault("{type: clamp, sndbuf: 0}")) ==
          "t.yaml:8:38: fault.sndbuf: must be at least 1, found \"0\"");
    CHECK(one_error(fault("{type: cap, max: 0}")) ==
          "t.yaml:8:33: fault.max: must be at least 1, found \"0\"");
    CHECK(one_error(fault("{type: cap, max: 2, over: banner}")) ==
          "t.yaml:8:16: fault type \"cap\" is missing required key \"banner\" (needed with over: "
          "banner)");
    CHECK(one_error(fault("{type: cap, max: 2, banner: hi}")) ==
          "t.yaml:8:36: fault.banner is only used with over: banner (over is \"reset\")");
    CHECK(one_error(fault("{type: cap, max: 2, over: close, banner: hi}")) ==
          "t.yaml:8:49: fault.banner is only used with over: banner (over is \"close\")");
    CHECK(one_error(fault("{type: idle}")) ==
          "t.yaml:8:16: fault type \"idle\" is missing required key \"timeout\"");
    CHECK(one_error(fault("{type: idle, timeout: 0s}")) ==
          "t.yaml:8:38: fault.timeout: must be greater than 0, found \"0s\"");
    CHECK(one_error(fault("{type: bandwidth}")) ==
          "t.yaml:8:16: fault type \"bandwidth\" is missing required key \"rate\"");
    CHECK(one_error(fault("{type: bandwidth, rate: 64KiB}")) ==
          "t.yaml:8:40: fault.rate: expected a rate like 64KiB/s, 1MiB/s or 1000/s, found "
          "\"64KiB\" (missing \"/s\")");
    CHECK(one_error(fault("{type: slice}")) ==
          "t.yaml:8:16: fault type \"slice\" is missing required key \"size\"");
    CHECK(one_error(fault("{type: slice, size: 8-2}")) ==
          "t.yaml:8:36: fault.size: expected a slice size like 1 or 1-16, found \"8-2\" (the "
          "minimum is larger than the maximum)");
    CHECK(one_error(fault("{type: reset, flush: 1}")) ==
          "t.yaml:8:37: fault.flush: expected a boolean (true/false), found \"1\"");
    CHECK(one_error(fault("reset")) == "t.yaml:8:16: fault: expected a mapping, found \"reset\"");
}

TEST_CASE("error: YAML syntax errors give one diagnostic at the parser's mark") {
    auto e = errors_of("proxies:\n  - name: [unclosed\n");
    REQUIRE(e.size() == 1);
    CHECK(e[0].starts_with("t.yaml:"));
    CHECK(e[0].find("invalid YAML: ") != std::string::npos);
    CHECK(one_error("a: 1\n  b: 2\n") == "t.yaml:2:4: invalid YAML: illegal map value");
    CHECK(one_error("seed: 1\n---\nseed: 2\n") ==
          "t.yaml:3:1: expected one YAML document, found 2");
}

// RELIABILITY.md 4.2: yaml-cpp 0.7's LoadAll never returned on these (a null document at the
// same token, forever, ~1 GiB/s of memory); from files, reloads and admin API rule bodies.
TEST_CASE("a stray ',' is a syntax error at its position, in bounded time and memory") {
    CHECK(bounded_errors(",") == "t.yaml:1:1: invalid YAML: expected a value, found \",\"\n");
    CHECK(bounded_errors("\n,\n\n") == "t.yaml:2:1: invalid YAML: expected a value, found \",\"\n");
    CHECK(bounded_errors(",a") == "t.yaml:1:1: invalid YAML: expected a value, found \",\"\n");
    CHECK(bounded_errors("  ,  # comment\n") ==
          "t.yaml:1:3: invalid YAML: expected a value, found \",\"\n");
    // A second document that is ",".
    CHECK(bounded_errors("seed: 1\n---\n,\n") ==
          "t.yaml:3:1: invalid YAML: expected a value, found \",\"\n");
    CHECK(bounded_errors("---\n,") == "t.yaml:2:1: invalid YAML: expected a value, found \",\"\n");
    // After a complete top-level value (a trailing comma after a JSON object, say).
    CHECK(bounded_errors("{seed: 1},") ==
          "t.yaml:1:10: invalid YAML: expected the end of the document, found \",\"\n");
    CHECK(bounded_errors("{seed: 1}\n\n  ,\n") ==
          "t.yaml:3:3: invalid YAML: expected the end of the document, found \",\"\n");
    CHECK(bounded_errors("- a\n,\n") ==
          "t.yaml:2:1: invalid YAML: expected the end of the document, found \",\"\n");
    CHECK(bounded_errors("\"x\",") ==
          "t.yaml:1:4: invalid YAML: expected the end of the document, found \",\"\n");
    // After an anchor or a tag, which yaml-cpp consumes before giving up on the ",".
    CHECK(bounded_errors("&x ,") == "t.yaml:1:4: invalid YAML: expected a value, found \",\"\n");
    CHECK(bounded_errors("!t ,").starts_with("t.yaml:1:4: invalid YAML: expected "));
    // Through ${VAR} expansion the position is still the one in the original text.
    CHECK(in_bounded_child([] {
              auto r = load_string("seed: 1\n---\n${C}\n", "t.yaml", [](const std::string& n) {
                  return n == "C" ? std::optional<std::string>(",") : std::nullopt;
              });
              return r.errors.size() == 1 ? r.errors[0].str() : std::string("<not one error>");
          }) == "t.yaml:3:1: invalid YAML: expected a value, found \",\"");

    // Admin API rule bodies go through the same parser.
    CHECK(bounded_rule_errors(",") == "body:1:1: invalid YAML: expected a value, found \",\"\n");
    CHECK(bounded_rule_errors("\n,\n\n") ==
          "body:2:1: invalid YAML: expected a value, found \",\"\n");
    CHECK(bounded_rule_errors(R"({"name":"x","fault":{"type":"reset"}},)") ==
          "body:1:38: invalid YAML: expected the end of the document, found \",\"\n");
    CHECK(bounded_rule_errors("name: x\nfault: {type: reset}\n---\n,") ==
          "body:4:1: invalid YAML: expected a value, found \",\"\n");
}

TEST_CASE("documents are still counted, and a single one still loads") {
    CHECK(one_error("seed: 1\n...\nseed: 2\n...\nseed: 3\n") ==
          "t.yaml:3:1: expected one YAML document, found 3");
    CHECK(one_error("seed: 1\n---\n") == "t.yaml:3:1: expected one YAML document, found 2");
    CHECK(one_error("---\n---\n") == "t.yaml:3:1: expected one YAML document, found 2");
    CHECK(ok("---\nseed: 7\n...\n").seed == 7u);
    CHECK(ok("%YAML 1.2\n---\nseed: 7\n").seed == 7u);
    CHECK(ok("# only a comment\n").proxies.empty());
    CHECK(ok("---\n").proxies.empty());
    // A "," inside a flow collection or a plain scalar is not stray.
    CHECK(ok("seed: 1\nlog: {level: info, format: json}\n").seed == 1u);
    CHECK(one_error("seed: a, b\n") == "t.yaml:1:7: seed: expected an integer, found \"a, b\"");
    auto r = parse_rule("name: x\nfault: {type: reset}\n", "body");
    CHECK(r.errors.empty());
    CHECK(r.rule.has_value());
}

TEST_CASE("every error is reported, not just the first") {
    auto e = errors_of(R"Y(log: {level: loud, format: xml}
workers: 0
proxies:
  - name: a
    listen: nowhere
    upstream: x:1
    rules:
      - name: r1
        fault: {type: rst}
      - name: r2
        match: {probability: 2}
        fault: {type: latency}
  - name: B
    listen: 127.0.0.1:0
    upstream: x:0
)Y");
    REQUIRE(e.size() == 9);
    CHECK(e[0].starts_with("t.yaml:1:14: invalid value \"loud\" for log.level"));
    CHECK(e[1].starts_with("t.yaml:1:28: invalid value \"xml\" for log.format"));
    CHECK(e[2].starts_with("t.yaml:2:10: workers: must be at least 1"));
    CHECK(e[3].starts_with("t.yaml:5:13: listen: expected host:port"));
    CHECK(e[4].starts_with("t.yaml:9:23: unknown fault type \"rst\""));
    CHECK(e[5].starts_with("t.yaml:11:30: match.probability: expected a number from 0 to 1"));
    CHECK(e[6].starts_with("t.yaml:12:16: fault type \"latency\" is missing required key"));
    CHECK(e[7].starts_with("t.yaml:13:11: invalid name \"B\""));
    CHECK(e[8].starts_with("t.yaml:15:15: upstream: expected host:port"));
}

TEST_CASE("too many errors stop at a bound") {
    std::string text = "proxies:\n";
    for (int i = 0; i < 300; ++i) text += "  - {bogus: 1}\n";
    auto e = errors_of(text);
    REQUIRE(e.size() == 101);
    CHECK(e.back() == "t.yaml: too many errors; stopped after 100");
}

TEST_CASE("hostile input stays bounded") {
    // Absurd nesting: yaml-cpp's depth guard turns it into a syntax error.
    auto deep = errors_of("a: " + std::string(100000, '[') + "\n");
    REQUIRE(deep.size() == 1);
    CHECK(deep[0].find("invalid YAML") != std::string::npos);

    // A billion-laughs alias tree under an unknown key is never walked.
    std::string bomb = "x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
    for (int i = 1; i < 10; ++i) {
        // Appends rather than `"lit" + to_string()`: GCC 12 -O3 warns falsely (-Wrestrict) on that.
        std::string prev = std::string("*a").append(std::to_string(i - 1));
        bomb.append("x").append(std::to_string(i)).append(": &a").append(std::to_string(i));
        bomb.append(" [").append(prev);
        for (int j = 0; j < 9; ++j) bomb += ", " + prev;
        bomb += "]\n";
    }
    auto e = errors_of(bomb);
    CHECK(e.size() == 10);

    // The same tree where a list of proxies is expected: each element is rejected whole, and
    // the ten identical errors (one per alias) are reported once.
    e = errors_of(bomb.substr(0, bomb.rfind("x9")) + "proxies: *a8\n");
    REQUIRE(e.size() == 9 + 1);
    CHECK(e[8] == "t.yaml:8:5: proxy: expected a mapping, found a sequence");

    // Aliases multiply work without multiplying text: the node budget stops it.
    std::string wide = "x: &c [" + std::string("1.2.3.4");
    for (int i = 0; i < 20000; ++i) wide += ", 1.2.3.4";
    wide += "]\nproxies:\n  - name: p\n    listen: 127.0.0.1:0\n    upstream: a:1\n    rules:\n";
    for (int i = 0; i < 100; ++i) {
        wide += "      - {name: r" + std::to_string(i) +
                ", match: {clients: *c}, fault: {type: reset}}\n";
    }
    e = errors_of(wide);
    REQUIRE(e.size() == 2);
    CHECK(e[0] ==
          "t.yaml: configuration too complex (more than 1000000 values, counting "
          "repeated aliases)");
}

TEST_CASE("env errors are bounded too") {
    std::string text;
    for (int i = 0; i < 500; ++i) text += "# x\na: ${UNSET}\n";
    auto e = errors_of(text);
    REQUIRE(e.size() == 101);
    CHECK(e[0] == "t.yaml:2:4: environment variable UNSET is not set (use ${UNSET:-default})");
    CHECK(e[100] == "t.yaml: too many errors; stopped after 100");
}

TEST_CASE("input size is limited") {
    std::string big(5 * 1024 * 1024, '#');
    CHECK(one_error(big) == "t.yaml: config too large (the limit is 4 MiB)");
}

TEST_CASE("load_file on a missing or unreadable file") {
    auto r = load_file("/nonexistent/tcpfault.yaml", no_env);
    REQUIRE(r.errors.size() == 1);
    CHECK_FALSE(r.config);
    CHECK(r.errors[0].str() ==
          "/nonexistent/tcpfault.yaml: cannot read file: No such file or directory");
    r = load_file(TCPFAULT_SOURCE_DIR "/examples", no_env);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].message == "cannot read file: Is a directory");
}

TEST_CASE("file-level errors carry no position") {
    Diagnostic d{"f.yaml", Position{}, "cannot read file: Permission denied"};
    CHECK(d.str() == "f.yaml: cannot read file: Permission denied");
    d.pos = Position{3, 7};
    CHECK(d.str() == "f.yaml:3:7: cannot read file: Permission denied");
}

TEST_CASE("a config without proxies is valid, with a warning that says so") {
    const std::string warning =
        "t.yaml: no proxies defined: nothing is forwarded until proxies are created over the "
        "Toxiproxy API (toxiproxy.listen or --toxiproxy-api)";
    for (const std::string text :
         {"", "# only a comment\n", "proxies: []\n", "proxies:\n", "admin: {listen: \"off\"}\n",
          "toxiproxy: {listen: 127.0.0.1:8474}\nproxies: []\n"}) {
        CAPTURE(text);
        auto r = load_string(text, "t.yaml", no_env);
        CHECK(r.errors.empty());
        REQUIRE(r.config);
        CHECK(r.config->proxies.empty());
        REQUIRE(r.warnings.size() == 1);
        CHECK(r.warnings[0].str() == warning);
    }
    auto r = load_string(with_rules(""), "t.yaml", no_env);
    REQUIRE(r.config);
    CHECK(r.warnings.empty());
    // An invalid file has errors only: a warning about it would be noise.
    r = load_string("proxies: 3\n", "t.yaml", no_env);
    CHECK_FALSE(r.config);
    CHECK(r.warnings.empty());
}

// ---------------------------------------------------------------------------------------------
// parse_rule: one rule, for the admin API

TEST_CASE("parse_rule accepts JSON and YAML") {
    auto r = parse_rule(R"({"name":"x","fault":{"type":"reset"}})", "body");
    CHECK(r.errors.empty());
    REQUIRE(r.rule);
    CHECK(r.rule->name == "x");
    CHECK(std::holds_alternative<ResetFault>(r.rule->fault));

    r = parse_rule(
        R"({"name":"up","match":{"channel":"data","connections":{"every":2}},"when":{"after_bytes":"700KiB"},"fault":{"type":"close","then":"discard"}})",
        "body");
    CHECK(r.errors.empty());
    REQUIRE(r.rule);
    CHECK(r.rule->match.channel == Channel::data);
    CHECK(r.rule->when->after_bytes == 700u * 1024);
    CHECK(std::get<CloseFault>(r.rule->fault).then == CloseFault::Then::discard);

    r = parse_rule("name: y\nenabled: false\nfault:\n  type: latency\n  delay: 1s\n", "body");
    CHECK(r.errors.empty());
    REQUIRE(r.rule);
    CHECK_FALSE(r.rule->enabled);
    CHECK(std::get<LatencyFault>(r.rule->fault).delay == 1s);
}

TEST_CASE("parse_rule reports errors like the file loader") {
    auto r = parse_rule(R"({"name":"x","fault":{"type":"reset","rate":"1KiB/s"}})", "body");
    CHECK_FALSE(r.rule);
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].str() ==
          "body:1:37: unknown key \"rate\" for fault type \"reset\" (expected one of: to, flush, "
          "client, server)");

    r = parse_rule("[1, 2]", "body");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].str() == "body:1:1: expected a mapping (one rule), found a sequence");

    r = parse_rule("", "body");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].str() == "body:1:1: expected a mapping (one rule), found nothing");

    r = parse_rule(R"({"name": "x", "fault": {"type": "reset"})", "body");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].message.starts_with("invalid YAML: "));

    r = parse_rule(R"({"fault": {"type": "refuse"}, "when": {"after": "1s"}})", "body");
    REQUIRE(r.errors.size() == 2);
    CHECK(r.errors[0].str() == "body:1:1: rule is missing required key \"name\"");
    CHECK(r.errors[1].str() ==
          "body:1:31: when is not allowed for fault type \"refuse\" (it acts on the proxy, not on "
          "bytes)");
}

// ---------------------------------------------------------------------------------------------
// parse_fault_body: one fault, for the admin API's per-connection faults

TEST_CASE("parse_fault_body reads a fault as a rule's fault: is read") {
    auto r = parse_fault_body(R"({"type": "reset", "to": "client", "flush": false})", "body");
    CHECK(r.errors.empty());
    REQUIRE(r.fault);
    const auto& reset = std::get<ResetFault>(*r.fault);
    CHECK(reset.to == Target::client);
    CHECK_FALSE(reset.flush);

    r = parse_fault_body("type: close\nclient: fin_then_reset\nserver: reset_now\n", "body");
    REQUIRE(r.fault);
    CHECK(std::get<CloseFault>(*r.fault).client == tcpfault::Ending::fin_then_reset);

    r = parse_fault_body(R"({"type": "stall", "duration": "2s", "direction": "both"})", "body");
    REQUIRE(r.fault);
    CHECK(std::get<StallFault>(*r.fault).duration == 2s);

    // Proxy kinds parse too: which scopes it accepts is the caller's choice.
    r = parse_fault_body("{type: cap, max: 2}", "body");
    REQUIRE(r.fault);
    CHECK(tcpfault::faults::fault_scope(*r.fault) == tcpfault::faults::Scope::proxy);
}

TEST_CASE("parse_fault_body reports errors with the rule parser's messages and positions") {
    // The same fault inside a rule and on its own: the same message.
    auto rule = parse_rule(R"({"name":"x","fault":{"type":"reset","rate":"1KiB/s"}})", "body");
    auto body = parse_fault_body(R"({"type":"reset","rate":"1KiB/s"})", "body");
    REQUIRE(rule.errors.size() == 1);
    REQUIRE(body.errors.size() == 1);
    CHECK(body.errors[0].message == rule.errors[0].message);
    CHECK(body.errors[0].str() ==
          "body:1:17: unknown key \"rate\" for fault type \"reset\" (expected one of: to, flush, "
          "client, server)");
    CHECK_FALSE(body.fault);

    body = parse_fault_body("type: rst\n", "request body");
    REQUIRE(body.errors.size() == 1);
    CHECK(body.errors[0].str().starts_with(
        "request body:1:7: unknown fault type \"rst\" (expected one of: reset, close, stall"));

    body = parse_fault_body("type: latency\ndelay: soon\n", "body");
    REQUIRE(body.errors.size() == 1);
    CHECK(body.errors[0].str().starts_with("body:2:8: "));

    body = parse_fault_body("{to: client}", "body");
    REQUIRE(body.errors.size() == 1);
    CHECK(body.errors[0].str() == "body:1:1: fault is missing required key \"type\"");

    body = parse_fault_body("", "body");
    REQUIRE(body.errors.size() == 1);
    CHECK(body.errors[0].str() ==
          "body:1:1: expected a mapping (one fault, like {\"type\": \"reset\"}), found nothing");

    body = parse_fault_body("[reset]", "body");
    REQUIRE(body.errors.size() == 1);
    CHECK(body.errors[0].message.ends_with("found a sequence"));

    body = parse_fault_body(R"({"type": "reset", "to": "client", "client": "fin"})", "body");
    CHECK_FALSE(body.errors.empty());
    CHECK_FALSE(body.fault);

    body = parse_fault_body(std::string(5000, '{'), "body");
    REQUIRE(body.errors.size() == 1);
    CHECK(body.errors[0].message.find("nesting deeper than 256") != std::string::npos);
}

TEST_CASE("slow_close: delay is required, direction defaults to both") {
    auto ok = tcpfault::config::parse_rule(
        "{name: sc, fault: {type: slow_close, delay: 500ms, direction: downstream}}", "t");
    REQUIRE(ok.rule);
    auto& f = std::get<tcpfault::config::SlowCloseFault>(ok.rule->fault);
    CHECK(f.delay == std::chrono::milliseconds(500));
    CHECK(f.direction == tcpfault::config::Direction::downstream);
    CHECK(std::string(tcpfault::config::fault_name(ok.rule->fault)) == "slow_close");
    auto missing = tcpfault::config::parse_rule("{name: sc, fault: {type: slow_close}}", "t");
    REQUIRE(missing.errors.size() == 1);
    CHECK(missing.errors[0].message ==
          "fault type \"slow_close\" is missing required key \"delay\"");
}

TEST_CASE("absurd flow nesting is refused before yaml-cpp tokenizes it") {
    std::string deep(1000000, '[');
    auto r = tcpfault::config::load_string(deep, "t.yaml");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].str() ==
          "t.yaml:1:257: invalid YAML: nesting deeper than 256 levels of [ ] or { }");
    // Brackets inside quotes and comments do not count; ordinary nesting is fine.
    std::string quoted = "# [[[[\nproxies: []\nlog: {level: \"" + std::string(300, '[') + "\"}\n";
    auto q = tcpfault::config::load_string(quoted, "q.yaml");
    CHECK(q.errors.size() == 1);  // the level value is wrong, but it got past the guard
    CHECK(q.errors[0].message.find("nesting") == std::string::npos);
    auto rule = tcpfault::config::parse_rule(std::string(5000, '{'), "body");
    REQUIRE(rule.errors.size() == 1);
    CHECK(rule.errors[0].message.find("nesting deeper than 256") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// The fault house: endings, the fault list, new trigger keys, loops

TEST_CASE("reset and close: shorthand keys and explicit endings give the same endings per side") {
    auto fault = [](const std::string& flow) {
        return one_rule("      - name: f\n        fault: " + flow + "\n").fault;
    };
    using tcpfault::Ending;
    auto ends = [&](const std::string& flow) {
        auto f = fault(flow);
        if (auto* r = std::get_if<ResetFault>(&f)) return r->endings();
        return std::get<CloseFault>(f).endings();
    };
    auto e = ends("{type: reset}");
    CHECK((e.client == Ending::reset && e.server == Ending::reset));
    e = ends("{type: reset, to: client}");
    CHECK((e.client == Ending::reset && e.server == Ending::fin));  // the other side: graceful
    e = ends("{type: reset, to: server, flush: false}");
    CHECK((e.client == Ending::fin && e.server == Ending::reset_now));
    e = ends("{type: close, to: client}");
    CHECK((e.client == Ending::fin_then_reset && e.server == Ending::fin));
    e = ends("{type: close, then: discard}");
    CHECK((e.client == Ending::fin_then_discard && e.server == Ending::fin_then_discard));
    e = ends("{type: close, client: fin_then_reset, server: reset_now}");
    CHECK((e.client == Ending::fin_then_reset && e.server == Ending::reset_now));
    e = ends("{type: reset, server: reset}");
    CHECK((e.client == Ending::fin && e.server == Ending::reset));

    auto err = [](const std::string& f) {
        return one_error(with_rules("      - name: r\n        fault: " + f + "\n"));
    };
    CHECK(err("{type: close, to: client, client: reset}") ==
          "t.yaml:8:34: fault.to cannot be combined with fault.client/fault.server (they name "
          "each side's ending)");
    CHECK(err("{type: reset, client: sideways}") ==
          "t.yaml:8:38: invalid value \"sideways\" for fault.client (expected one of: fin, "
          "fin_then_discard, fin_then_reset, reset, reset_now)");
}

TEST_CASE("the fault list names every kind once, with its scope and parameters") {
    const auto& kinds = tcpfault::faults::fault_kinds();
    CHECK(kinds.size() == std::variant_size_v<FaultSpec>);
    std::set<std::string> names;
    for (const auto& k : kinds) names.insert(std::string(k.name));
    CHECK(names.size() == kinds.size());
    auto find = [&](std::string_view n) {
        for (const auto& k : kinds)
            if (k.name == n) return k;
        FAIL("no kind " << n);
        return kinds[0];
    };
    CHECK(find("reset").scope == tcpfault::faults::Scope::connection);
    CHECK(find("latency").scope == tcpfault::faults::Scope::stage);
    CHECK(find("cap").scope == tcpfault::faults::Scope::proxy);
    CHECK(find("refuse").params.empty());
    CHECK(find("cap").params == std::vector<std::string_view>{"max", "over", "banner", "then"});
    CHECK(std::string(fault_name(FaultSpec{tcpfault::faults::SlowCloseFault{}})) == "slow_close");
}

TEST_CASE("when: direction both, next_byte, after_bytes 0, RE2 lines") {
    auto r = one_rule(
        "      - name: r\n        when: {direction: both, after_bytes: 1KiB}\n"
        "        fault: {type: reset}\n");
    CHECK(r.when->direction == Direction::both);
    r = one_rule(
        "      - name: r\n        when: {direction: any, data: x}\n"
        "        fault: {type: reset}\n");
    CHECK(r.when->direction == Direction::both);
    r = one_rule(
        "      - name: r\n        when: {next_byte: true}\n        fault: {type: reset}\n");
    REQUIRE(r.when);
    CHECK(r.when->next_byte);
    r = one_rule(
        "      - name: r\n        when: {next_byte: false}\n        fault: {type: reset}\n");
    CHECK_FALSE(r.when);  // no condition: at accept
    // 0 bytes from a match is the hold point right there; on its own it would be "at accept".
    r = one_rule(
        "      - name: r\n        when: {line: \"^220 \", after_bytes: 0, after: 1s}\n"
        "        fault: {type: reset}\n");
    CHECK(r.when->after_bytes == 0u);
    CHECK(one_error(with_rules("      - name: r\n        when: {after_bytes: 0}\n"
                               "        fault: {type: reset}\n")) ==
          "t.yaml:8:29: when.after_bytes: 0 on its own fires at accept (leave `when` out for "
          "that); to fire when the first byte arrives, without forwarding it, use next_byte: "
          "true");
    // RE2 syntax: a backreference is not supported, and says so.
    CHECK(one_error(with_rules("      - name: r\n        when: {line: \"(a)\\\\1\"}\n"
                               "        fault: {type: reset}\n"))
              .find("when.line: invalid regular expression") != std::string::npos);
    // A pattern that backtracks exponentially elsewhere is fine: RE2 is linear.
    r = one_rule(
        "      - name: r\n        when: {line: \"(a+)+b\"}\n        fault: {type: reset}\n");
    REQUIRE(r.when->line_re);
    CHECK_FALSE(RE2::PartialMatch(std::string(4000, 'a'), *r.when->line_re));
}

TEST_CASE("cap then: fin or reset, only with close or banner") {
    auto rule = one_rule(
        "      - name: c\n        fault: {type: cap, max: 1, over: close, "
        "then: reset}\n");
    auto cap = std::get<CapFault>(rule.fault);
    CHECK(cap.rejection() == tcpfault::Ending::fin_then_reset);
    cap = std::get<CapFault>(
        one_rule("      - name: c\n        fault: {type: cap, max: 1, over: close}\n").fault);
    CHECK(cap.rejection() == tcpfault::Ending::fin);
    cap =
        std::get<CapFault>(one_rule("      - name: c\n        fault: {type: cap, max: 1}\n").fault);
    CHECK(cap.rejection() == tcpfault::Ending::reset_now);
    CHECK(one_error(
              with_rules("      - name: c\n        fault: {type: cap, max: 1, then: reset}\n")) ==
          "t.yaml:8:36: fault.then is only used with over: close or over: banner");
}

TEST_CASE("a proxy whose upstream leads back to itself is refused") {
    auto e = errors_of(
        "proxies:\n"
        "  - {name: a, listen: 127.0.0.1:7001, upstream: localhost:7002}\n"
        "  - {name: b, listen: 0.0.0.0:7002, upstream: 127.0.0.1:7001}\n"
        "  - {name: c, listen: 127.0.0.1:7003, upstream: 127.0.0.1:7003}\n"
        "  - {name: d, listen: 127.0.0.1:7004, upstream: 127.0.0.1:7001}\n"
        "  - {name: e, listen: 127.0.0.1:7005, upstream: 127.0.0.2:7005}\n");
    REQUIRE(e.size() == 3);
    CHECK(e[0] ==
          "t.yaml:2:49: proxy \"a\": upstream localhost:7002 leads back to this proxy (a -> b -> "
          "a): every connection would open another");
    CHECK(e[1].find("proxy \"b\": upstream 127.0.0.1:7001 leads back") != std::string::npos);
    CHECK(e[2] ==
          "t.yaml:4:49: proxy \"c\": upstream 127.0.0.1:7003 is this proxy's own listen address "
          "127.0.0.1:7003: every connection would open another");
}

TEST_CASE("a drop stall that resumes is valid, with a warning about the hole it leaves") {
    auto r = load_string(with_rules("      - name: s\n        fault: {type: stall, mode: drop, "
                                    "duration: 2s}\n"),
                         "t.yaml", no_env);
    REQUIRE(r.config);
    REQUIRE(r.warnings.size() == 1);
    CHECK(r.warnings[0].str().rfind("t.yaml:8:30: stall with mode: drop and then: resume loses",
                                    0) == 0);
    // Without a duration it never resumes; with then: close it ends: no hole, no warning.
    for (const char* f : {"{type: stall, mode: drop}",
                          "{type: stall, mode: drop, duration: 2s, "
                          "then: close}"}) {
        auto q = load_string(with_rules(std::string("      - name: s\n        fault: ") + f + "\n"),
                             "t.yaml", no_env);
        REQUIRE(q.config);
        CHECK(q.warnings.empty());
    }
}

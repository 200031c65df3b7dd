#include <doctest/doctest.h>

#include "app/cli.hpp"
#include "config/config.hpp"

using tcpfault::Options;
using tcpfault::parse_cli;

TEST_CASE("cli: defaults to running ./tcpfault.yaml") {
    auto r = parse_cli({});
    CHECK(r.error.empty());
    CHECK(r.options.mode == Options::Mode::run);
    CHECK(r.options.config_path == "tcpfault.yaml");
}

TEST_CASE("cli: check mode with a file") {
    auto r = parse_cli({"--check", "-c", "x.yaml"});
    CHECK(r.error.empty());
    CHECK(r.options.mode == Options::Mode::check);
    CHECK(r.options.config_path == "x.yaml");
}

TEST_CASE("cli: quick proxy needs both -l and -u, and excludes -c") {
    CHECK(parse_cli({"-l", "127.0.0.1:1"}).error == "-l and -u go together");
    CHECK(parse_cli({"-l", "a:1", "-u", "b:2", "-c", "f"}).error == "-l/-u and -c are exclusive");
    auto r = parse_cli({"-l", "127.0.0.1:0", "-u", "example:80"});
    CHECK(r.error.empty());
    CHECK(*r.options.listen == "127.0.0.1:0");
    CHECK(*r.options.upstream == "example:80");
}

TEST_CASE("cli: usage errors name the problem") {
    CHECK(parse_cli({"--bogus"}).error == "unknown option \"--bogus\"");
    CHECK(parse_cli({"-c"}).error == "option -c needs a value");
    CHECK(parse_cli({"--log-level", "loud"}).error ==
          "invalid --log-level \"loud\" (expected one of: error, warn, info, debug)");
    CHECK(parse_cli({"--log-format", "xml"}).error ==
          "invalid --log-format \"xml\" (expected one of: text, json)");
}

TEST_CASE("cli: log overrides and admin") {
    auto r = parse_cli({"--log-format", "json", "--log-level", "debug", "--admin", "off"});
    CHECK(r.error.empty());
    CHECK(*r.options.log_format == tcpfault::config::LogFormat::json);
    CHECK(*r.options.log_level == tcpfault::config::LogLevel::debug);
    CHECK(*r.options.admin == "off");
}

TEST_CASE("cli: the quick proxy YAML quotes its values") {
    CHECK(tcpfault::quick_proxy_yaml("[::1]:0", "it's:1") ==
          "proxies:\n  - name: main\n    listen: '[::1]:0'\n    upstream: 'it''s:1'\n");
}

#include "observe/log.hpp"

TEST_CASE("json_escape: output is valid UTF-8 JSON whatever the input bytes") {
    using tcpfault::log::json_escape;
    CHECK(json_escape("a\"b\\c\n\x01") == "a\\\"b\\\\c\\n\\u0001");
    CHECK(json_escape("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") ==
          "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    // Ill-formed UTF-8 becomes U+FFFD (written as UTF-8: EF BF BD), one per bad byte.
    const std::string fffd = "\xef\xbf\xbd";
    CHECK(json_escape("bad\xff\xfe") == "bad" + fffd + fffd);
    CHECK(json_escape("\xc3") == fffd);                        // truncated sequence
    CHECK(json_escape("\xc0\xaf") == fffd + fffd);             // overlong '/'
    CHECK(json_escape("\xed\xa0\x80") == fffd + fffd + fffd);  // surrogate
}

TEST_CASE("cli: toxiproxy-server takes Toxiproxy's flags, the Go way") {
    auto r = parse_cli({"toxiproxy-server", "-host", "0.0.0.0", "--port=9000", "-config", "p.json",
                        "-seed=-5", "-proxy-metrics", "--runtime-metrics=true"});
    REQUIRE(r.error.empty());
    const Options& o = r.options;
    REQUIRE(o.toxiproxy_server);
    CHECK(o.mode == Options::Mode::run);
    CHECK(o.toxiproxy_server->listen().str() == "0.0.0.0:9000");
    CHECK(o.toxiproxy_server->listen_given);
    CHECK(*o.toxiproxy_server->config_json == "p.json");
    CHECK(*o.toxiproxy_server->seed == static_cast<uint64_t>(-5));
    CHECK(o.toxiproxy_server->proxy_metrics);
    CHECK(o.toxiproxy_server->runtime_metrics);
    CHECK(*o.admin == "off");  // no admin API unless asked for
    CHECK_FALSE(o.config_given);

    auto d = tcpfault::parse_toxiproxy_server_cli({});
    REQUIRE(d.error.empty());
    CHECK(d.options.toxiproxy_server->listen().str() == "127.0.0.1:8474");  // localhost
    CHECK_FALSE(d.options.toxiproxy_server->listen_given);
    CHECK_FALSE(d.options.toxiproxy_server->proxy_metrics);

    auto off = tcpfault::parse_toxiproxy_server_cli({"-proxy-metrics=false", "-host="});
    REQUIRE(off.error.empty());
    CHECK_FALSE(off.options.toxiproxy_server->proxy_metrics);
    CHECK(off.options.toxiproxy_server->listen().host == "0.0.0.0");

    CHECK(tcpfault::parse_toxiproxy_server_cli({"-version"}).options.mode ==
          Options::Mode::version);
    CHECK(tcpfault::parse_toxiproxy_server_cli({"--help"}).options.mode == Options::Mode::help);
    CHECK(tcpfault::parse_toxiproxy_server_cli({"-h"}).options.mode == Options::Mode::help);
}

TEST_CASE("cli: toxiproxy-server with tcpfault's own flags") {
    auto r = tcpfault::parse_toxiproxy_server_cli(
        {"-c", "t.yaml", "-log-format", "json", "--log-level=debug"});
    REQUIRE(r.error.empty());
    CHECK(r.options.config_given);
    CHECK(r.options.config_path == "t.yaml");
    CHECK_FALSE(r.options.admin.has_value());  // the file's admin section applies
    CHECK(*r.options.log_format == tcpfault::config::LogFormat::json);
    auto a = tcpfault::parse_toxiproxy_server_cli({"-tcpfault-config=t.yaml", "-admin", "off"});
    REQUIRE(a.error.empty());
    CHECK(*a.options.admin == "off");
    auto b = tcpfault::parse_toxiproxy_server_cli({"-admin=127.0.0.1:9474"});
    CHECK(*b.options.admin == "127.0.0.1:9474");
}

TEST_CASE("cli: toxiproxy-server usage errors") {
    using tcpfault::parse_toxiproxy_server_cli;
    CHECK(parse_toxiproxy_server_cli({"-bogus"}).error == "flag provided but not defined: -bogus");
    CHECK(parse_toxiproxy_server_cli({"-host"}).error == "flag needs an argument: -host");
    CHECK(parse_toxiproxy_server_cli({"-port", "http"}).error ==
          "invalid value \"http\" for flag -port: expected 0-65535");
    CHECK(parse_toxiproxy_server_cli({"-port=70000"}).error ==
          "invalid value \"70000\" for flag -port: expected 0-65535");
    CHECK(parse_toxiproxy_server_cli({"-seed", "x"}).error ==
          "invalid value \"x\" for flag -seed: expected an integer");
    CHECK(parse_toxiproxy_server_cli({"-proxy-metrics=maybe"}).error ==
          "invalid boolean value \"maybe\" for -proxy-metrics");
    CHECK(parse_toxiproxy_server_cli({"extra"}).error == "unexpected argument \"extra\"");
    CHECK(parse_toxiproxy_server_cli({"---host"}).error == "bad flag syntax: ---host");
}

TEST_CASE("cli: the toxiproxy-server name") {
    CHECK(tcpfault::invoked_as_toxiproxy_server("/usr/local/bin/toxiproxy-server"));
    CHECK(tcpfault::invoked_as_toxiproxy_server("toxiproxy-server"));
    CHECK(tcpfault::invoked_as_toxiproxy_server("/toxiproxy"));
    CHECK_FALSE(tcpfault::invoked_as_toxiproxy_server("/usr/bin/tcpfault"));
    CHECK_FALSE(tcpfault::invoked_as_toxiproxy_server("toxiproxy-cli"));
}

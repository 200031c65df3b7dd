#include <doctest/doctest.h>

#include "config/config.hpp"
#include "app/cli.hpp"

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

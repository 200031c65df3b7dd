// Quoted values in diagnostics are bounded (issue 12: `--check` printed a 70,000-character
// line for one bad value).
#include <doctest/doctest.h>

#include <string>

#include "config/config.hpp"
#include "config/quote.hpp"
#include "config/units.hpp"

using tcpfault::config::kQuoteBytes;
using tcpfault::config::quote_value;
using tcpfault::config::shorten;

TEST_CASE("quote_value: short values in full, escaped") {
    CHECK(quote_value("") == "\"\"");
    CHECK(quote_value("250ms") == "\"250ms\"");
    CHECK(quote_value("a\"b\\c") == "\"a\\\"b\\\\c\"");
    CHECK(quote_value("a\nb\tc\x01") == "\"a\\nb\\tc\\x01\"");
    std::string exact(kQuoteBytes, 'x');
    CHECK(quote_value(exact) == "\"" + exact + "\"");
    CHECK(shorten(exact) == exact);
}

TEST_CASE("quote_value: long values are cut, with their size") {
    std::string big(70000, 'x');
    std::string q = quote_value(big);
    CHECK(q == "\"" + std::string(kQuoteBytes, 'x') + "...\" (70000 bytes)");
    CHECK(shorten(big) == std::string(kQuoteBytes, 'x') + "... (70000 bytes)");
    CHECK(quote_value(std::string(kQuoteBytes + 1, 'y')).find("(81 bytes)") != std::string::npos);
    // Never in the middle of a UTF-8 sequence: 79 ASCII bytes, then 3-byte characters.
    std::string utf8(kQuoteBytes - 1, 'a');
    for (int i = 0; i < 10; ++i) utf8 += "\xe2\x82\xac";  // U+20AC
    std::string cut = quote_value(utf8);
    CHECK(cut == "\"" + std::string(kQuoteBytes - 1, 'a') + "...\" (109 bytes)");
}

TEST_CASE("diagnostics quote a 70,000-character value in under 300 characters") {
    std::string big(70000, '9');
    struct Case {
        std::string yaml;
        const char* expect;
    };
    const Case cases[] = {
        {"proxies:\n  - name: a\n    listen: 127.0.0.1:0\n    upstream: x" + big + "\n",
         "upstream: expected host:port"},
        {"proxies:\n  - name: a\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1\n"
         "    rules:\n      - name: r\n        fault: {type: latency, delay: " +
             big + "q}\n",
         "fault.delay: expected a duration"},
        {"proxies:\n  - name: a\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1\n"
         "    rules:\n      - name: r\n        fault: {type: bandwidth, rate: " +
             big + "K/s}\n",
         "ambiguous unit"},
        {"proxies:\n  - name: a\n    listen: 127.0.0.1:0\n    upstream: ${X" + big + "}\n",
         "environment variable X9999"},
        {"proxies:\n  - name: " + big + "\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1\n",
         "invalid name"},
    };
    for (const auto& c : cases) {
        auto r = tcpfault::config::load_string(c.yaml, "big.yaml");
        REQUIRE_FALSE(r.config.has_value());
        REQUIRE(!r.errors.empty());
        for (const auto& d : r.errors) {
            std::string line = d.str();
            INFO(line.substr(0, 400));
            CHECK(line.size() < 300);
        }
        std::string first = r.errors.front().str();
        INFO(first);
        CHECK(first.find(c.expect) != std::string::npos);
        CHECK(first.find("bytes)") != std::string::npos);
    }
    // The unit parsers (also behind API errors) cut their "found ..." the same way.
    auto d = tcpfault::config::parse_duration(big + "ms!");
    REQUIRE_FALSE(d);
    CHECK(d.error.size() < 300);
    CHECK(d.error.find("(70003 bytes)") != std::string::npos);
}

// Scalar notations (sizes, durations, rates, addresses), env expansion and the small value-type
// behaviours from config_types.cpp.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <doctest/doctest.h>

#include "config/config.hpp"
#include "config/env_expand.hpp"
#include "config/units.hpp"

using namespace tcpfault::config;
using namespace std::chrono_literals;

namespace {

uint64_t size_of(std::string_view s) {
    auto r = parse_size(s);
    INFO(s, " -> ", r.error);
    REQUIRE(r);
    return *r;
}

std::string size_error(std::string_view s) {
    auto r = parse_size(s);
    REQUIRE_FALSE(r);
    return r.error;
}

Duration duration_of(std::string_view s) {
    auto r = parse_duration(s);
    INFO(s, " -> ", r.error);
    REQUIRE(r);
    return *r;
}

std::string duration_error(std::string_view s) {
    auto r = parse_duration(s);
    REQUIRE_FALSE(r);
    return r.error;
}

sockaddr_in v4(const char* a) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    inet_pton(AF_INET, a, &sa.sin_addr);
    return sa;
}

sockaddr_in6 v6(const char* a) {
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    inet_pton(AF_INET6, a, &sa.sin6_addr);
    return sa;
}

bool contains(const char* cidr, const sockaddr_in& sa) {
    auto c = parse_cidr(cidr);
    REQUIRE(c);
    return c->contains(reinterpret_cast<const sockaddr*>(&sa));
}

bool contains(const char* cidr, const sockaddr_in6& sa) {
    auto c = parse_cidr(cidr);
    REQUIRE(c);
    return c->contains(reinterpret_cast<const sockaddr*>(&sa));
}

}  // namespace

TEST_CASE("sizes: plain, binary and decimal units") {
    CHECK(size_of("0") == 0);
    CHECK(size_of("512") == 512);
    CHECK(size_of("512B") == 512);
    CHECK(size_of("64KiB") == 64 * 1024);
    CHECK(size_of("1MiB") == 1024 * 1024);
    CHECK(size_of("1GiB") == 1024ull * 1024 * 1024);
    CHECK(size_of("2TiB") == 2ull << 40);
    CHECK(size_of("1KB") == 1000);
    CHECK(size_of("1MB") == 1000 * 1000);
    CHECK(size_of("1GB") == 1000ull * 1000 * 1000);
    CHECK(size_of("700kib") == 700 * 1024);
    CHECK(size_of(" 64 KiB ") == 64 * 1024);
    CHECK(size_of("1.5KiB") == 1536);
    CHECK(size_of("0.5MB") == 500000);
    CHECK(size_of("18446744073709551615") == UINT64_MAX);
}

TEST_CASE("sizes: errors say what was found and what was expected") {
    CHECK(size_error("-5") ==
          "expected a size like 512, 64KiB, 1MiB or 1MB, found \"-5\" (sizes cannot be negative)");
    CHECK(size_error("1.5") ==
          "expected a size like 512, 64KiB, 1MiB or 1MB, found \"1.5\" (not a whole number of "
          "bytes)");
    CHECK(size_error("0.3KiB") ==
          "expected a size like 512, 64KiB, 1MiB or 1MB, found \"0.3KiB\" (not a whole number of "
          "bytes)");
    CHECK(size_error("64K") ==
          "expected a size like 512, 64KiB, 1MiB or 1MB, found \"64K\" (ambiguous unit: write "
          "64KiB for 1024-based or 64KB for 1000-based)");
    CHECK(size_error("5XB") ==
          "expected a size like 512, 64KiB, 1MiB or 1MB, found \"5XB\" (unknown unit \"XB\"; use "
          "B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)");
    CHECK(size_error("lots") == "expected a size like 512, 64KiB, 1MiB or 1MB, found \"lots\"");
    CHECK(size_error("") == "expected a size like 512, 64KiB, 1MiB or 1MB, found \"\" (empty)");
    CHECK(size_error("18446744073709551616") ==
          "expected a size like 512, 64KiB, 1MiB or 1MB, found \"18446744073709551616\" (too "
          "large: the maximum is 18446744073709551615 bytes)");
    CHECK(size_error("20000000TiB")
              .ends_with("(too large: the maximum is 18446744073709551615 "
                         "bytes)"));
    CHECK(size_error("999999999999999999999999999999")
              .ends_with("(too large: the maximum is "
                         "18446744073709551615 bytes)"));
    CHECK_FALSE(parse_size("1KiB2"));
    CHECK_FALSE(parse_size("1 2"));
    CHECK_FALSE(parse_size("."));
    CHECK_FALSE(parse_size("0x10"));
}

TEST_CASE("durations") {
    CHECK(duration_of("0") == 0us);
    CHECK(duration_of("0s") == 0us);
    CHECK(duration_of("500us") == 500us);
    CHECK(duration_of("500\xc2\xb5s") == 500us);
    CHECK(duration_of("250ms") == 250ms);
    CHECK(duration_of("2s") == 2s);
    CHECK(duration_of("5m") == 5min);
    CHECK(duration_of("1h") == 1h);
    CHECK(duration_of("1.5s") == 1500ms);
    CHECK(duration_of("0.5ms") == 500us);
    CHECK(duration_of("1m30s") == 90s);
    CHECK(duration_of("1h 2m") == 62min);

    CHECK(duration_error("10") ==
          "expected a duration like 250ms, 2s, 5m, 1h, found \"10\" (missing unit)");
    CHECK(duration_error("-1s") ==
          "expected a duration like 250ms, 2s, 5m, 1h, found \"-1s\" (durations cannot be "
          "negative)");
    CHECK(duration_error("3d") ==
          "expected a duration like 250ms, 2s, 5m, 1h, found \"3d\" (unknown unit \"d\"; use us, "
          "ms, s, m or h)");
    CHECK(duration_error("1.0005ms") ==
          "expected a duration like 250ms, 2s, 5m, 1h, found \"1.0005ms\" (finer than one "
          "microsecond)");
    CHECK(duration_error("9000h") ==
          "expected a duration like 250ms, 2s, 5m, 1h, found \"9000h\" (too long: the maximum is "
          "8784h, 366 days)");
    CHECK(duration_error("soon") == "expected a duration like 250ms, 2s, 5m, 1h, found \"soon\"");
    CHECK_FALSE(parse_duration("1s5"));
    CHECK_FALSE(parse_duration(""));
}

// RELIABILITY.md 4.3: the mantissa (up to 36 digits) times the unit used to wrap around in
// 128-bit arithmetic, so these two were accepted as 1 TiB and 1 us.
TEST_CASE("sizes and durations past 128 bits are too large, not wrapped around") {
    CHECK(size_error("309485009821345068724782.056TiB") ==
          "expected a size like 512, 64KiB, 1MiB or 1MB, found "
          "\"309485009821345068724782.056TiB\" (too large: the maximum is 18446744073709551615 "
          "bytes)");
    CHECK(duration_error("295383999063314638423068.235617854628h") ==
          "expected a duration like 250ms, 2s, 5m, 1h, found "
          "\"295383999063314638423068.235617854628h\" (too long: the maximum is 8784h, 366 days)");
    // In a compound duration too.
    CHECK(duration_error("1m 295383999063314638423068.235617854628h")
              .ends_with("(too long: the maximum is 8784h, 366 days)"));
    // Any number of digits is read, and too many of them are too large, not a wrong value.
    CHECK(size_error(std::string(5000, '9') + "KiB")
              .ends_with("(too large: the maximum is 18446744073709551615 bytes)"));
    CHECK(duration_error("1" + std::string(60, '0') + "us")
              .ends_with("(too long: the maximum is 8784h, 366 days)"));
    // The same through rates and slice sizes.
    CHECK(parse_rate("309485009821345068724782.056TiB/s").error ==
          "expected a rate like 64KiB/s, 1MiB/s or 1000/s, found "
          "\"309485009821345068724782.056TiB/s\" (too large: the maximum is 18446744073709551615 "
          "bytes/s)");
    CHECK(parse_rate("16777216TiB/s")
              .error.ends_with("(too large: the maximum is "
                               "18446744073709551615 bytes/s)"));
    CHECK(parse_slice_size("1-309485009821345068724782.056TiB").error ==
          "expected a slice size like 1 or 1-16, found \"1-309485009821345068724782.056TiB\" "
          "(too large: the maximum is 18446744073709551615 bytes)");
    CHECK(parse_slice_size("18446744073709551616")
              .error.ends_with("(too large: the maximum is 18446744073709551615 bytes)"));
    // Still a unit error when the unit is wrong, however large the number.
    CHECK(size_error(std::string(40, '9') + "XB").find("unknown unit \"XB\"") != std::string::npos);
}

TEST_CASE("sizes and durations: the largest accepted values") {
    CHECK(size_of("18446744073709551615B") == UINT64_MAX);
    CHECK(size_of("16777215TiB") == UINT64_MAX - (1ull << 40) + 1);  // 2^64 - 2^40
    CHECK(size_error("16777216TiB")
              .ends_with("(too large: the maximum is 18446744073709551615 "
                         "bytes)"));
    CHECK(size_of("18446744073709.551615MB") == UINT64_MAX);
    CHECK(size_error("18446744073709.551616MB")
              .ends_with("(too large: the maximum is "
                         "18446744073709551615 bytes)"));
    CHECK(size_of("18446744.073709551615TB") == UINT64_MAX);
    CHECK(size_of("0.000000000001TB") == 1);  // 12 decimal places
    CHECK(size_error("0.0000000000001TB").ends_with("(too many decimal places)"));
    // Leading zeros are not digits of magnitude.
    CHECK(size_of(std::string(40, '0') + "1KiB") == 1024);
    CHECK(size_of("0000000000000000000000000000000000000000") == 0);

    CHECK(duration_of("8784h") == kMaxDuration);
    CHECK(duration_of("527040m") == kMaxDuration);
    CHECK(duration_of("31622400s") == kMaxDuration);
    CHECK(duration_of("31622400000ms") == kMaxDuration);
    CHECK(duration_of("31622400000000us") == kMaxDuration);
    CHECK(duration_of("8783h 59m 59.999999s 1us") == kMaxDuration);
    CHECK(duration_of(std::string(40, '0') + "1s") == 1s);
    CHECK(duration_error("8784h1us").ends_with("(too long: the maximum is 8784h, 366 days)"));
    CHECK(
        duration_error("31622400000001us").ends_with("(too long: the maximum is 8784h, 366 days)"));
    CHECK(duration_error("8784.0000003h").ends_with("(too long: the maximum is 8784h, 366 days)"));

    CHECK(*parse_rate("18446744073709551615/s") == UINT64_MAX);
    CHECK(*parse_rate("16777215TiB/s") == UINT64_MAX - (1ull << 40) + 1);
    CHECK(parse_slice_size("1-18446744073709551615")->max == UINT64_MAX);
}

TEST_CASE("rates") {
    CHECK(*parse_rate("64KiB/s") == 64 * 1024);
    CHECK(*parse_rate("1MiB/s") == 1024 * 1024);
    CHECK(*parse_rate("1MB/s") == 1000 * 1000);
    CHECK(*parse_rate("1000/s") == 1000);
    CHECK(parse_rate("64KiB").error ==
          "expected a rate like 64KiB/s, 1MiB/s or 1000/s, found \"64KiB\" (missing \"/s\")");
    CHECK(parse_rate("0/s").error ==
          "expected a rate like 64KiB/s, 1MiB/s or 1000/s, found \"0/s\" (must be greater than 0)");
    CHECK(parse_rate("fast/s").error ==
          "expected a rate like 64KiB/s, 1MiB/s or 1000/s, found \"fast/s\"");
}

TEST_CASE("CIDRs") {
    auto c = parse_cidr("10.0.0.0/8");
    REQUIRE(c);
    CHECK_FALSE(c->v6);
    CHECK(c->prefix == 8);
    CHECK(c->str() == "10.0.0.0/8");
    CHECK(parse_cidr("::1/128")->str() == "::1/128");
    CHECK(parse_cidr("192.168.1.7")->str() == "192.168.1.7/32");
    CHECK(parse_cidr("fe80::1")->str() == "fe80::1/128");
    // Host bits are masked off rather than rejected.
    CHECK(parse_cidr("10.1.2.3/8")->str() == "10.0.0.0/8");
    CHECK(parse_cidr("10.1.255.3/20")->str() == "10.1.240.0/20");
    CHECK(parse_cidr("2001:db8::ff/64")->str() == "2001:db8::/64");
    CHECK(parse_cidr("0.0.0.0/0")->str() == "0.0.0.0/0");

    CHECK(parse_cidr("10.0.0.0/33").error ==
          "expected a CIDR like 10.0.0.0/8 or ::1/128, found \"10.0.0.0/33\" (prefix length must "
          "be 0-32)");
    CHECK(parse_cidr("::/129").error ==
          "expected a CIDR like 10.0.0.0/8 or ::1/128, found \"::/129\" (prefix length must be "
          "0-128)");
    CHECK(parse_cidr("10.0.0.0/").error.ends_with("(prefix length must be 0-32)"));
    CHECK(parse_cidr("10.0.0.0/x").error.ends_with("(prefix length must be 0-32)"));
    CHECK(parse_cidr("mail/8").error ==
          "expected a CIDR like 10.0.0.0/8 or ::1/128, found \"mail/8\" (not an IP address)");
    CHECK_FALSE(parse_cidr("10.0.0/8"));
}

TEST_CASE("Cidr::contains, including IPv4-mapped IPv6 clients") {
    CHECK(contains("10.0.0.0/8", v4("10.200.3.4")));
    CHECK_FALSE(contains("10.0.0.0/8", v4("11.0.0.1")));
    CHECK(contains("10.1.240.0/20", v4("10.1.255.255")));
    CHECK_FALSE(contains("10.1.240.0/20", v4("10.1.239.255")));
    CHECK(contains("0.0.0.0/0", v4("8.8.8.8")));
    CHECK(contains("10.0.0.0/8", v6("::ffff:10.9.8.7")));
    CHECK_FALSE(contains("10.0.0.0/8", v6("::ffff:11.9.8.7")));
    CHECK_FALSE(contains("10.0.0.0/8", v6("2001:db8::1")));
    CHECK(contains("::1/128", v6("::1")));
    CHECK_FALSE(contains("::1/128", v6("::2")));
    CHECK(contains("2001:db8::/32", v6("2001:db8:1::5")));
    CHECK_FALSE(contains("::1/128", v4("127.0.0.1")));
    Cidr any;
    CHECK_FALSE(any.contains(nullptr));
}

TEST_CASE("host:port") {
    auto hp = parse_host_port("0.0.0.0:2525", true);
    REQUIRE(hp);
    CHECK(hp->host == "0.0.0.0");
    CHECK(hp->port == 2525);
    hp = parse_host_port("[::1]:0", true);
    REQUIRE(hp);
    CHECK(hp->host == "::1");
    CHECK(hp->port == 0);
    CHECK(hp->str() == "[::1]:0");
    CHECK(parse_host_port("mail:25", false)->str() == "mail:25");
    CHECK(parse_host_port("localhost:8080", false)->host == "localhost");
    CHECK(parse_host_port("db.internal-1.example.com:65535", false)->port == 65535);

    CHECK(parse_host_port("mail:0", false).error ==
          "expected host:port like 127.0.0.1:8080, [::1]:8080 or mail:25, found \"mail:0\" (port "
          "0 is only valid for listen addresses)");
    CHECK(parse_host_port("mail:65536", true).error.ends_with("(port must be 0-65535)"));
    CHECK(parse_host_port("mail:http", true).error.ends_with("(port must be 0-65535)"));
    CHECK(parse_host_port("mail:", true).error.ends_with("(port must be 0-65535)"));
    CHECK(parse_host_port("mail", true).error.ends_with("(missing :port)"));
    CHECK(parse_host_port("::1:80", true)
              .error.ends_with("(IPv6 addresses need brackets: [::1]:8080)"));
    CHECK(parse_host_port(":8080", true)
              .error.ends_with("(missing host; use 0.0.0.0 or [::] for all addresses)"));
    CHECK(parse_host_port("[nope]:80", true).error.ends_with("(not an IPv6 address inside [ ])"));
    CHECK(parse_host_port("[::1]80", true).error.ends_with("(missing :port)"));
    CHECK(parse_host_port("[::1", true).error.ends_with("(missing \"]\")"));
    CHECK(parse_host_port("999.1.1.1:80", true).error.ends_with("(not a valid IPv4 address)"));
    CHECK(parse_host_port("bad host:80", true).error.ends_with("(not a valid host name)"));
}

TEST_CASE("slice sizes") {
    auto s = parse_slice_size("1");
    REQUIRE(s);
    CHECK(s->min == 1);
    CHECK(s->max == 1);
    s = parse_slice_size("1-16");
    REQUIRE(s);
    CHECK(s->min == 1);
    CHECK(s->max == 16);
    CHECK(parse_slice_size("1-4KiB")->max == 4096);
    CHECK(parse_slice_size("0").error ==
          "expected a slice size like 1 or 1-16, found \"0\" (must be at least 1)");
    CHECK(parse_slice_size("16-1").error ==
          "expected a slice size like 1 or 1-16, found \"16-1\" (the minimum is larger than the "
          "maximum)");
    CHECK(parse_slice_size("-3").error ==
          "expected a slice size like 1 or 1-16, found \"-3\" (sizes cannot be negative)");
    CHECK_FALSE(parse_slice_size("1-"));
    CHECK_FALSE(parse_slice_size("a-b"));
}

TEST_CASE("formatting round-trips through parsing") {
    CHECK(format_size(0) == "0");
    CHECK(format_size(700 * 1024) == "700KiB");
    CHECK(format_size(1000) == "1KB");
    CHECK(format_size(1500) == "1500");
    CHECK(format_size(3ull << 30) == "3GiB");
    CHECK(format_rate(64 * 1024) == "64KiB/s");
    CHECK(format_duration(0us) == "0s");
    CHECK(format_duration(1500ms) == "1500ms");
    CHECK(format_duration(90s) == "90s");
    CHECK(format_duration(120s) == "2m");
    CHECK(format_duration(2h) == "2h");
    CHECK(format_duration(7us) == "7us");
    for (uint64_t v :
         std::initializer_list<uint64_t>{0, 1, 1023, 1024, 1000, 123456789, UINT64_MAX}) {
        CHECK(*parse_size(format_size(v)) == v);
    }
    for (Duration d : {Duration{0}, Duration{1}, Duration{999}, Duration{61'000'000}}) {
        CHECK(*parse_duration(format_duration(d)) == d);
    }
}

TEST_CASE("ConnectionsMatch::matches") {
    ConnectionsMatch any;
    CHECK(any.matches(1));
    CHECK(any.matches(1000));
    ConnectionsMatch every{ConnectionsMatch::Kind::every, 3};
    CHECK_FALSE(every.matches(1));
    CHECK_FALSE(every.matches(2));
    CHECK(every.matches(3));
    CHECK(every.matches(6));
    CHECK_FALSE(every.matches(7));
    ConnectionsMatch nth{ConnectionsMatch::Kind::nth, 3};
    CHECK_FALSE(nth.matches(2));
    CHECK(nth.matches(3));
    CHECK_FALSE(nth.matches(6));
    ConnectionsMatch first{ConnectionsMatch::Kind::first, 2};
    CHECK(first.matches(1));
    CHECK(first.matches(2));
    CHECK_FALSE(first.matches(3));
}

TEST_CASE("Schedule::active_at") {
    Schedule s{5min, 2min, 0s};
    CHECK(s.active_at(0s));
    CHECK(s.active_at(119s));
    CHECK_FALSE(s.active_at(2min));
    CHECK_FALSE(s.active_at(299s));
    CHECK(s.active_at(5min));
    CHECK(s.active_at(11min));
    CHECK_FALSE(s.active_at(13min));

    Schedule offset{10min, 1min, 5min};
    CHECK_FALSE(offset.active_at(0s));
    CHECK_FALSE(offset.active_at(4min));
    CHECK(offset.active_at(5min));
    CHECK_FALSE(offset.active_at(6min));
    CHECK(offset.active_at(15min + 30s));

    // Without `every`: one window.
    Schedule once{0s, 30s, 1min};
    CHECK_FALSE(once.active_at(59s));
    CHECK(once.active_at(1min));
    CHECK_FALSE(once.active_at(90s));
    CHECK_FALSE(once.active_at(11min));
}

namespace {

std::optional<std::string> fake_env(const std::string& name) {
    if (name == "HOST") return "db.internal";
    if (name == "PORT") return "5432";
    if (name == "EMPTY") return "";
    if (name == "MULTI") return "a\nb";
    return std::nullopt;
}

}  // namespace

TEST_CASE("env expansion: values, defaults, escapes") {
    auto e = expand_env("upstream: ${HOST}:${PORT}\n", fake_env);
    CHECK(e.errors.empty());
    CHECK(e.text == "upstream: db.internal:5432\n");

    e = expand_env("a: ${NOPE:-fallback} b: ${HOST:-x} c: ${EMPTY:-d} e: ${EMPTY} f: ${NOPE:-}",
                   fake_env);
    CHECK(e.errors.empty());
    CHECK(e.text == "a: fallback b: db.internal c: d e:  f: ");

    e = expand_env("price: $$5 and $${HOST} and $5 and a lone $", fake_env);
    CHECK(e.errors.empty());
    CHECK(e.text == "price: $5 and ${HOST} and $5 and a lone $");

    // Comments are not expanded (a commented-out reference is not an error), quoted '#' is data.
    e = expand_env("a: 1 # ${NOPE}\nb: \"x # ${HOST}\"\n#${NOPE}\n", fake_env);
    CHECK(e.errors.empty());
    CHECK(e.text == "a: 1 # ${NOPE}\nb: \"x # db.internal\"\n#${NOPE}\n");
}

TEST_CASE("env expansion: errors point at the ${") {
    auto e = expand_env("a: 1\nb: x${NOPE}\nc: ${1BAD}\nd: ${OPEN\ne: ${OPEN:-x\n", fake_env);
    REQUIRE(e.errors.size() == 4);
    LineIndex idx("a: 1\nb: x${NOPE}\nc: ${1BAD}\nd: ${OPEN\ne: ${OPEN:-x\n");
    CHECK(idx.at(e.errors[0].offset).line == 2);
    CHECK(idx.at(e.errors[0].offset).col == 5);
    CHECK(e.errors[0].message == "environment variable NOPE is not set (use ${NOPE:-default})");
    CHECK(e.errors[1].message ==
          "invalid environment variable reference (expected ${NAME} or ${NAME:-default})");
    CHECK(e.errors[2].message == "unterminated ${OPEN (missing \"}\")");
    CHECK(e.errors[3].message == "unterminated ${OPEN:-... (missing \"}\")");
}

TEST_CASE("env expansion: offsets map back to the original text") {
    std::string in = "x: ${HOST} y: z\nw: ${MULTI} v\n";
    auto e = expand_env(in, fake_env);
    REQUIRE(e.errors.empty());
    size_t y = e.text.find("y:");
    CHECK(e.original_offset(y) == in.find("y:"));
    // Inside a substituted value: the `${`.
    CHECK(e.original_offset(e.text.find("internal")) == in.find("${HOST}"));
    size_t v = e.text.find(" v");
    CHECK(e.original_offset(v) == in.find(" v"));
    CHECK(e.original_offset(0) == 0);
}

TEST_CASE("LineIndex counts UTF-8 characters") {
    std::string text = "ab\n\xc3\xa9x: 1\n";
    LineIndex idx(text);
    CHECK(idx.at(0).line == 1);
    CHECK(idx.at(0).col == 1);
    CHECK(idx.at(3).line == 2);
    CHECK(idx.at(5).col == 2);  // after the two-byte é
    CHECK(idx.at(text.size()).line == 3);
}

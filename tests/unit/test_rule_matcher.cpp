#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>

#include <set>

#include "faults/rule_matcher.hpp"

using namespace tcpfault;
using faults::ConnectionFacts;
using faults::rule_matches;

namespace {
config::Rule rule_named(const char* name) {
    config::Rule r;
    r.name = name;
    r.fault = config::ResetFault{};
    return r;
}
ConnectionFacts conn(uint64_t ordinal) {
    ConnectionFacts c;
    c.ordinal = ordinal;
    return c;
}
}  // namespace

TEST_CASE("connections every 3 hits 3, 6, 9") {
    auto r = rule_named("r");
    r.match.connections = {config::ConnectionsMatch::Kind::every, 3};
    std::vector<uint64_t> hit;
    for (uint64_t i = 1; i <= 10; ++i)
        if (rule_matches(r, conn(i), 0, 0)) hit.push_back(i);
    CHECK(hit == std::vector<uint64_t>{3, 6, 9});
}

TEST_CASE("nth and first") {
    auto r = rule_named("r");
    r.match.connections = {config::ConnectionsMatch::Kind::nth, 2};
    CHECK_FALSE(rule_matches(r, conn(1), 0, 0));
    CHECK(rule_matches(r, conn(2), 0, 0));
    CHECK_FALSE(rule_matches(r, conn(3), 0, 0));
    r.match.connections = {config::ConnectionsMatch::Kind::first, 2};
    CHECK(rule_matches(r, conn(2), 0, 0));
    CHECK_FALSE(rule_matches(r, conn(3), 0, 0));
}

TEST_CASE("probability is reproducible for a seed and near its rate") {
    auto r = rule_named("flaky");
    r.match.probability = 0.5;
    std::set<uint64_t> a, b, c;
    for (uint64_t i = 1; i <= 1000; ++i) {
        if (rule_matches(r, conn(i), 42, 0)) a.insert(i);
        if (rule_matches(r, conn(i), 42, 0)) b.insert(i);
        if (rule_matches(r, conn(i), 43, 0)) c.insert(i);
    }
    CHECK(a == b);
    CHECK(a != c);
    CHECK(a.size() > 430);
    CHECK(a.size() < 570);
}

TEST_CASE("limit, enabled and schedule") {
    auto r = rule_named("r");
    r.match.limit = 2;
    CHECK(rule_matches(r, conn(1), 0, 1));
    CHECK_FALSE(rule_matches(r, conn(1), 0, 2));
    r.match.limit.reset();
    r.enabled = false;
    CHECK_FALSE(rule_matches(r, conn(1), 0, 0));
    r.enabled = true;
    r.match.schedule = config::Schedule{std::chrono::seconds(10), std::chrono::seconds(2),
                                        std::chrono::seconds(1)};
    auto at = [&](int ms) {
        auto c = conn(1);
        c.since_start = std::chrono::milliseconds(ms);
        return rule_matches(r, c, 0, 0);
    };
    CHECK_FALSE(at(500));
    CHECK(at(1000));
    CHECK(at(2999));
    CHECK_FALSE(at(3000));
    CHECK(at(11500));
}

TEST_CASE("clients CIDR, including IPv4-mapped IPv6 peers") {
    auto r = rule_named("r");
    config::Cidr net;
    net.addr = {10, 0, 0, 0};
    net.prefix = 8;
    r.match.clients.push_back(net);
    sockaddr_in in{};
    in.sin_family = AF_INET;
    inet_pton(AF_INET, "10.1.2.3", &in.sin_addr);
    sockaddr_in6 in6{};
    in6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:10.9.9.9", &in6.sin6_addr);
    sockaddr_in other{};
    other.sin_family = AF_INET;
    inet_pton(AF_INET, "11.0.0.1", &other.sin_addr);
    auto c = conn(1);
    c.client = reinterpret_cast<sockaddr*>(&in);
    CHECK(rule_matches(r, c, 0, 0));
    c.client = reinterpret_cast<sockaddr*>(&in6);
    CHECK(rule_matches(r, c, 0, 0));
    c.client = reinterpret_cast<sockaddr*>(&other);
    CHECK_FALSE(rule_matches(r, c, 0, 0));
}

TEST_CASE("channel only matches FTP connections of that channel") {
    auto r = rule_named("r");
    r.match.channel = config::Channel::data;
    auto c = conn(1);
    c.channel = config::Channel::control;
    CHECK_FALSE(rule_matches(r, c, 0, 0));
    c.channel = config::Channel::data;
    CHECK(rule_matches(r, c, 0, 0));
}

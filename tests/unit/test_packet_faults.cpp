// The faults that drop packets (blackhole, loss, drop_syn): their parameters and messages, and
// how a rule that needs CAP_NET_ADMIN is refused once the process has said it cannot drop
// packets. (Their behaviour on the wire is tested in tests/integration/test_faults_packets.py,
// in a network namespace.)
#include <doctest/doctest.h>

#include <string>
#include <variant>
#include <vector>

#include "config/config.hpp"

using namespace tcpfault::config;
using namespace std::chrono_literals;

namespace {

std::optional<std::string> no_env(const std::string&) {
    return std::nullopt;
}

// One proxy with the given rules; the first rule line is line 6, its keys at column 7.
std::string with_rules(const std::string& rules) {
    return "proxies:\n"
           "  - name: p\n"
           "    listen: 127.0.0.1:0\n"
           "    upstream: 127.0.0.1:9\n"
           "    rules:\n" +
           rules;
}

std::string fault(const std::string& f) {
    return with_rules("      - name: r\n        fault: " + f + "\n");
}

std::vector<std::string> errors_of(const std::string& yaml) {
    auto r = load_string(yaml, "t.yaml", no_env);
    std::vector<std::string> out;
    for (const auto& d : r.errors) out.push_back(d.str());
    return out;
}

std::string one_error(const std::string& yaml) {
    auto e = errors_of(yaml);
    for (const auto& s : e) INFO(s);
    REQUIRE(e.size() == 1);
    return e[0];
}

FaultSpec fault_of(const std::string& f) {
    auto r = load_string(fault(f), "t.yaml", no_env);
    for (const auto& d : r.errors) FAIL_CHECK(d.str());
    REQUIRE(r.config);
    return r.config->proxies.at(0).rules.at(0).fault;
}

}  // namespace

TEST_CASE("blackhole: parameters and defaults") {
    auto b = std::get<BlackholeFault>(fault_of("{type: blackhole}"));
    CHECK(b.direction == Direction::both);
    CHECK(b.side == Target::both);
    CHECK(!b.duration);
    CHECK(b.then == BlackholeFault::Then::resume);
    b = std::get<BlackholeFault>(fault_of(
        "{type: blackhole, direction: upstream, side: server, duration: 30s, then: close}"));
    CHECK(b.direction == Direction::upstream);
    CHECK(b.side == Target::server);
    CHECK(*b.duration == 30s);
    CHECK(b.then == BlackholeFault::Then::close);
    CHECK(tcpfault::faults::drops_packets(FaultSpec{b}));
}

TEST_CASE("blackhole: errors") {
    CHECK(one_error(fault("{type: blackhole, then: reset}")) ==
          "t.yaml:7:40: fault type \"blackhole\" with then: reset requires a duration");
    CHECK(one_error(fault("{type: blackhole, duration: 0s}")) ==
          "t.yaml:7:44: fault.duration: must be greater than 0, found \"0s\"");
    CHECK(
        one_error(fault("{type: blackhole, side: left}"))
            .find(
                "invalid value \"left\" for fault.side (expected one of: client, server, both)") !=
        std::string::npos);
    CHECK(one_error(fault("{type: blackhole, rate: 5%}"))
              .find("unknown key \"rate\" for fault type \"blackhole\"") != std::string::npos);
}

TEST_CASE("loss: a rate as a percentage or a fraction, in 0.01% steps") {
    auto per = [](const std::string& rate) {
        return std::get<LossFault>(fault_of("{type: loss, rate: \"" + rate + "\"}")).per_10000;
    };
    CHECK(per("5%") == 500);
    CHECK(per("0.05") == 500);
    CHECK(per("2.5%") == 250);
    CHECK(per("0.01%") == 1);
    CHECK(per("100%") == 10000);
    CHECK(per("1") == 10000);
    auto l = std::get<LossFault>(fault_of("{type: loss, rate: 20%, side: client}"));
    CHECK(l.side == Target::client);
    CHECK(l.direction == Direction::both);
    CHECK(l.rate_text() == "20%");
    l.per_10000 = 205;
    CHECK(l.rate_text() == "2.05%");
    l.per_10000 = 250;
    CHECK(l.rate_text() == "2.5%");
}

TEST_CASE("loss: errors") {
    CHECK(one_error(fault("{type: loss}")) ==
          "t.yaml:7:16: fault type \"loss\" is missing required key \"rate\"");
    CHECK(one_error(fault("{type: loss, rate: 0%}")) ==
          "t.yaml:7:35: fault.rate: must be above 0 and at most 100% (1), found \"0%\"");
    CHECK(one_error(fault("{type: loss, rate: 1.5}")) ==
          "t.yaml:7:35: fault.rate: must be above 0 and at most 100% (1), found \"1.5\"");
    CHECK(one_error(fault("{type: loss, rate: 0.015%}")) ==
          "t.yaml:7:35: fault.rate: steps of 0.01% (0.0001) only, found \"0.015%\"");
    CHECK(one_error(fault("{type: loss, rate: lots}")) ==
          "t.yaml:7:35: fault.rate: expected a share of packets like 5%, 0.5% or 0.05");
}

TEST_CASE("drop_syn: proxy-wide, no parameters, schedule and limit only, no when") {
    CHECK(std::holds_alternative<DropSynFault>(fault_of("{type: drop_syn}")));
    CHECK(one_error(with_rules("      - name: r\n        match: {clients: [10.0.0.0/8]}\n"
                               "        fault: {type: drop_syn}\n")) ==
          "t.yaml:7:17: match.clients is not allowed for fault type \"drop_syn\" (it accepts "
          "only schedule and limit in match)");
    CHECK(one_error(with_rules("      - name: r\n        when: {after: 1s}\n"
                               "        fault: {type: drop_syn}\n")) ==
          "t.yaml:7:9: when is not allowed for fault type \"drop_syn\" (it acts on the proxy, "
          "not on bytes)");
}

TEST_CASE("without a packet filter, rules that drop packets are refused, naming the rule") {
    set_packet_filter(false, "CAP_NET_ADMIN is not among this process's effective capabilities");
    auto e =
        errors_of(with_rules("      - name: cut\n        fault: {type: blackhole}\n"
                             "      - name: slow\n        fault: {type: latency, delay: 1s}\n"
                             "      - name: lossy\n        fault: {type: loss, rate: 2%}\n"));
    REQUIRE(e.size() == 2);
    CHECK(e[0] ==
          "t.yaml:7:16: rule \"cut\": fault type \"blackhole\" drops packets with nftables and "
          "needs CAP_NET_ADMIN, but this process cannot drop packets (CAP_NET_ADMIN is not "
          "among this process's effective capabilities); run tcpfault with CAP_NET_ADMIN "
          "(docker run --cap-add NET_ADMIN; Kubernetes securityContext.capabilities.add: "
          "[NET_ADMIN]) or remove the rule");
    CHECK(e[1].rfind("t.yaml:11:16: rule \"lossy\": fault type \"loss\"", 0) == 0);
    // The admin API's path.
    auto r = parse_rule("{name: syn, fault: {type: drop_syn}}", "body");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].str().find("body:1:20: rule \"syn\": fault type \"drop_syn\"") == 0);
    // Everything else is unaffected.
    CHECK(parse_rule("{name: ok, fault: {type: reset}}", "body").rule.has_value());
    set_packet_filter(true);
    CHECK(errors_of(with_rules("      - name: cut\n        fault: {type: blackhole}\n")).empty());
}

// Which rules apply to a new connection (docs/triggers.md, `match`). Pure functions of the
// connection, the rule and the proxy's counters, so they are unit-tested without sockets.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string_view>

#include "config/config.hpp"
#include "faults/rng.hpp"

namespace tcpfault::faults {

struct ConnectionFacts {
    uint64_t ordinal = 0;              // 1-based, per proxy (and per channel for FTP data)
    const sockaddr* client = nullptr;  // peer address
    config::Channel channel = config::Channel::any;  // control/data for FTP, any otherwise
    config::Duration since_start{0};                 // process uptime at accept
};

// A uniform draw in [0, 1) that depends only on (seed, rule, ordinal): the same seed gives the
// same connections on every run, whatever other rules and connections do.
double probability_draw(uint64_t seed, std::string_view rule_name, uint64_t ordinal);

// True when the rule is switched on and inside its schedule window (no connection needed).
bool rule_active(const config::Rule& rule, config::Duration since_start, uint64_t fired);

// True when every `match` condition holds for this connection.
bool rule_matches(const config::Rule& rule, const ConnectionFacts& c, uint64_t seed,
                  uint64_t fired);

}  // namespace tcpfault::faults

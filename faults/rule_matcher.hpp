// Which rules apply to a new connection (SPEC section 3, `match`). Pure functions of the
// connection, the rule and the proxy's counters, so they are unit-tested without sockets.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string_view>

#include "config/config.hpp"

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

// SplitMix64 as a C++ random engine: 8 bytes of state per connection where std::mt19937_64
// carries 2.5 KB, and plenty for jitter and slice sizes.
class SplitMix64 {
  public:
    using result_type = uint64_t;
    explicit SplitMix64(uint64_t seed = 0) : state_(seed) {}
    void seed(uint64_t s) { state_ = s; }
    static constexpr result_type min() { return 0; }
    static constexpr result_type max() { return ~result_type{0}; }
    result_type operator()() {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

  private:
    uint64_t state_;
};

// True when the rule is switched on and inside its schedule window (no connection needed).
bool rule_active(const config::Rule& rule, config::Duration since_start, uint64_t fired);

// True when every `match` condition holds for this connection.
bool rule_matches(const config::Rule& rule, const ConnectionFacts& c, uint64_t seed,
                  uint64_t fired);

}  // namespace tcpfault::faults

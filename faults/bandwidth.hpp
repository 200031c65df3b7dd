// bandwidth: the direction's throughput is capped at `rate` bytes per second (a token bucket
// holding at most 50 ms of rate, so bursts stay small).
#pragma once

#include <cstdint>

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct BandwidthFault {
    static constexpr std::string_view kName = "bandwidth";
    static constexpr Scope kScope = Scope::stage;
    static constexpr std::array kParams{std::string_view{"rate"}, std::string_view{"direction"}};

    uint64_t rate = 0;  // bytes per second; 0 (Toxiproxy only) lets nothing through
    config::Direction direction = config::Direction::downstream;

    static std::optional<BandwidthFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
};

}  // namespace tcpfault::faults

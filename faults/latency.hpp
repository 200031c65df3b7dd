// latency: every chunk of a direction is delayed by `delay` (plus a uniform `jitter` either
// way); order is preserved, so a chunk never leaves before the one read ahead of it. Several
// latency rules on one direction add up.
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct LatencyFault {
    static constexpr std::string_view kName = "latency";
    static constexpr Scope kScope = Scope::stage;
    static constexpr std::array kParams{std::string_view{"delay"}, std::string_view{"jitter"},
                                        std::string_view{"direction"}};

    config::Duration delay{0};
    config::Duration jitter{0};
    config::Direction direction = config::Direction::downstream;

    static std::optional<LatencyFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
};

}  // namespace tcpfault::faults

// slow_close (Toxiproxy's slow_close toxic): the source's FIN is passed on `delay` after it
// arrived (and after every byte before it), so the peer sees the close late.
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct SlowCloseFault {
    static constexpr std::string_view kName = "slow_close";
    static constexpr Scope kScope = Scope::stage;
    static constexpr std::array kParams{std::string_view{"delay"}, std::string_view{"direction"}};

    config::Duration delay{0};
    config::Direction direction = config::Direction::both;

    static std::optional<SlowCloseFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
};

}  // namespace tcpfault::faults

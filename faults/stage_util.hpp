// Small helpers shared by the stage faults' files.
#pragma once

#include "config/types.hpp"

namespace tcpfault::faults {

// Calls fn(upstream) and/or fn(downstream) for a direction that may be `both`.
template <typename Fn>
void each_direction(config::Direction d, Fn&& fn) {
    if (d != config::Direction::downstream) fn(config::Direction::upstream);
    if (d != config::Direction::upstream) fn(config::Direction::downstream);
}

}  // namespace tcpfault::faults

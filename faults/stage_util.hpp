// Small helpers shared by the stage faults' files.
#pragma once

#include <memory>
#include <string>

#include "config/types.hpp"
#include "faults/contracts.hpp"

namespace tcpfault::faults {

// Calls fn(upstream) and/or fn(downstream) for a direction that may be `both`.
template <typename Fn>
void each_direction(config::Direction d, Fn&& fn) {
    if (d != config::Direction::downstream) fn(config::Direction::upstream);
    if (d != config::Direction::upstream) fn(config::Direction::downstream);
}

// Puts a stage S(rule, args...) on each direction `d` covers: one object per direction.
template <typename S, typename... Args>
void add_stages(Connection& c, config::Direction d, const std::string& rule, const Args&... args) {
    each_direction(
        d, [&](config::Direction one) { c.add_stage(one, std::make_unique<S>(rule, args...)); });
}

}  // namespace tcpfault::faults

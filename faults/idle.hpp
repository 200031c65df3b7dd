// idle: a stateful firewall that forgot an idle flow. After `timeout` with no bytes either
// way: `reset` answers the next segment (data or FIN) from either side with RST to both
// sides; `drop` silently discards everything from then on, FIN and RST included (a
// blackhole); `close` sends FIN both ways at the timeout, then RST on any further segment
// (what proxies do).
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct IdleFault {
    enum class Action { reset, drop, close };
    static constexpr std::string_view kName = "idle";
    static constexpr Scope kScope = Scope::connection;
    static constexpr std::array kParams{std::string_view{"timeout"}, std::string_view{"action"}};

    config::Duration timeout{0};
    Action action = Action::reset;

    static std::optional<IdleFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
};

}  // namespace tcpfault::faults

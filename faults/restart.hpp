// restart: the crashed-and-restarted server. Each time the rule becomes active, every open
// connection of the proxy is reset at once (RST) and new ones are refused for `downtime`.
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct RestartFault {
    static constexpr std::string_view kName = "restart";
    static constexpr Scope kScope = Scope::proxy;
    static constexpr std::array kParams{std::string_view{"downtime"}};

    config::Duration downtime{0};

    static std::optional<RestartFault> parse(const config::FaultParams& p);
    void activate(ProxyControl& p) const { p.restart(downtime); }
};

}  // namespace tcpfault::faults

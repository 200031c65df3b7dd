// refuse: the proxy's listening socket is closed while the rule is active (its `schedule`, or
// until disabled over the API): new connections get ECONNREFUSED (Winsock 10061). Open
// connections are not touched.
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct RefuseFault {
    static constexpr std::string_view kName = "refuse";
    static constexpr Scope kScope = Scope::proxy;
    static constexpr std::array<std::string_view, 0> kParams{};

    // The listener stays closed while the rule is active.
    static constexpr bool kClosesListener = true;
    static std::optional<RefuseFault> parse(const config::FaultParams&) { return RefuseFault{}; }
};

}  // namespace tcpfault::faults

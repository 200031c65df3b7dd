// drop_syn: while the rule is active (its `schedule`, or until disabled over the API), the
// SYNs of new connections to the proxy's listening address are dropped below the socket
// (nftables): nothing answers, so the client's connect() retries and times out (ETIMEDOUT,
// Winsock 10060) instead of being refused (ECONNREFUSED, 10061) as with `refuse`. Open
// connections are not touched. Needs CAP_NET_ADMIN.
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct DropSynFault {
    static constexpr std::string_view kName = "drop_syn";
    static constexpr Scope kScope = Scope::proxy;
    static constexpr std::array<std::string_view, 0> kParams{};
    static constexpr bool kDropsPackets = true;

    static std::optional<DropSynFault> parse(const config::FaultParams& p);
    // The rule's window opened (true) or closed (false).
    static void activate(ProxyControl& p, bool on) { p.set_syn_drop(on); }
};

}  // namespace tcpfault::faults

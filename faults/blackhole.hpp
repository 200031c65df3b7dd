// blackhole: every packet of the connection is dropped below the socket (nftables), in one
// or both directions, on the client side and/or the server side: the peers' TCPs retransmit
// into the void until their own timeouts fire (ETIMEDOUT, Winsock 10060 / 10053), keepalives
// go unanswered, and a side left alone is truly half-open. Bytes forwarded toward a side
// before the fault fired reach it first (their acknowledgement is awaited, at most 3 s), so
// "after exactly N bytes" holds. With a `duration` the drop ends by itself and `then` follows
// (resume, or reset / close the connection); without one it lasts until the rule is disabled
// or deleted, or the connection ends. Needs CAP_NET_ADMIN.
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct BlackholeFault {
    enum class Then { resume, reset, close };
    static constexpr std::string_view kName = "blackhole";
    static constexpr Scope kScope = Scope::connection;
    static constexpr std::array kParams{std::string_view{"direction"}, std::string_view{"side"},
                                        std::string_view{"duration"}, std::string_view{"then"}};
    static constexpr bool kDropsPackets = true;

    config::Direction direction = config::Direction::both;
    config::Target side = config::Target::both;
    std::optional<config::Duration> duration;  // none: until lifted or the connection ends
    Then then = Then::resume;

    static std::optional<BlackholeFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
};

}  // namespace tcpfault::faults

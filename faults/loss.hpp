// loss: a share of the connection's packets is dropped below the socket (nftables), chosen at
// random per packet, in one or both directions, on the client side and/or the server side.
// TCP retransmits what was lost, so every byte still arrives, in order: what shows is
// retransmissions, stalls of a retransmission timeout, a shrunken congestion window and tail
// latency. Lasts until the rule is disabled or deleted, or the connection ends. Needs
// CAP_NET_ADMIN.
#pragma once

#include <cstdint>

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct LossFault {
    static constexpr std::string_view kName = "loss";
    static constexpr Scope kScope = Scope::connection;
    static constexpr std::array kParams{std::string_view{"rate"}, std::string_view{"direction"},
                                        std::string_view{"side"}};
    static constexpr bool kDropsPackets = true;

    uint32_t per_10000 = 0;  // `rate`: 0.01% steps, 1 to 10000
    config::Direction direction = config::Direction::both;
    config::Target side = config::Target::both;

    static std::optional<LossFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
    // "2%", "0.25%".
    std::string rate_text() const;
};

}  // namespace tcpfault::faults

#include "faults/packet_util.hpp"

namespace tcpfault::faults {

std::vector<PacketFilter::Flow> packet_flows(Connection& c, config::Target side,
                                             config::Direction direction) {
    std::vector<PacketFilter::Flow> out;
    for (Side s : {Side::client, Side::server}) {
        if (s == Side::client ? !hits_client(side) : !hits_server(side)) continue;
        sockaddr_storage local{}, peer{};
        if (!c.addresses(s, &local, &peer)) continue;
        // Upstream packets leave the client's peer (the client) and our server-side socket.
        bool up_from_peer = s == Side::client;
        if (direction != config::Direction::downstream)
            out.push_back(up_from_peer ? PacketFilter::Flow{peer, local}
                                       : PacketFilter::Flow{local, peer});
        if (direction != config::Direction::upstream)
            out.push_back(up_from_peer ? PacketFilter::Flow{local, peer}
                                       : PacketFilter::Flow{peer, local});
    }
    return out;
}

std::string describe_flows(config::Target side, config::Direction direction) {
    std::string s = side == config::Target::client   ? "client side"
                    : side == config::Target::server ? "server side"
                                                     : "both sides";
    s += direction == config::Direction::upstream     ? ", upstream"
         : direction == config::Direction::downstream ? ", downstream"
                                                      : ", both directions";
    return s;
}

bool drop_packets(Connection& c, const std::string& rule, config::Target side,
                  config::Direction direction, uint32_t per_10000, const std::string& what) {
    PacketFilter* filter = c.packet_filter();
    std::string detail = what + ", " + describe_flows(side, direction);
    if (filter == nullptr) {
        c.log_event("packet drop failed", rule,
                    detail + ": no packet filter (needs CAP_NET_ADMIN)");
        return false;
    }
    std::vector<PacketFilter::Flow> flows = packet_flows(c, side, direction);
    if (flows.empty()) {
        c.log_event("packet drop failed", rule, detail + ": no socket on that side");
        return false;
    }
    std::string err;
    auto h = filter->drop(flows, per_10000, &err);
    if (!h) {
        c.log_event("packet drop failed", rule, detail + ": " + err);
        return false;
    }
    c.keep_packet_drop(rule, std::move(h));
    c.log_event("packets dropped", rule, detail);
    return true;
}

}  // namespace tcpfault::faults

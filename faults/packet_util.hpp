// What the faults below the socket (blackhole, loss) share: the flows of a connection that a
// `side` and a `direction` name, and how to say so in a log line.
#pragma once

#include <string>
#include <vector>

#include "config/types.hpp"
#include "faults/fault_base.hpp"

namespace tcpfault::faults {

// The packets of `direction` (upstream: travelling from the client toward the server) on the
// connection(s) `side` names: on the client side, client -> proxy (upstream) and proxy ->
// client (downstream); on the server side, proxy -> server and server -> proxy. A side without
// a socket is left out.
std::vector<PacketFilter::Flow> packet_flows(Connection& c, config::Target side,
                                             config::Direction direction);

// "client side, both directions", for log lines.
std::string describe_flows(config::Target side, config::Direction direction);

// Drops `per_10000` of every 10000 packets of those flows for `rule`, the handle kept by the
// connection. Logs the drop ("packets dropped") or why it could not ("packet drop failed").
bool drop_packets(Connection& c, const std::string& rule, config::Target side,
                  config::Direction direction, uint32_t per_10000, const std::string& what);

}  // namespace tcpfault::faults

#include "faults/reset.hpp"

#include "config/fault_params.hpp"

namespace tcpfault::faults {

Endings ResetFault::endings() const {
    return endings_for(to, flush ? Ending::reset : Ending::reset_now, client, server);
}

std::optional<ResetFault> ResetFault::parse(const config::FaultParams& p) {
    ResetFault x;
    p.target("to", x.to);
    p.boolean("flush", x.flush);
    read_ending(p, "client", x.client);
    read_ending(p, "server", x.server);
    check_ending_keys(p, {"to", "flush"});
    return x;
}

}  // namespace tcpfault::faults

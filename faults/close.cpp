#include "faults/close.hpp"

#include "config/fault_params.hpp"

namespace tcpfault::faults {

Endings CloseFault::endings() const {
    return endings_for(to, then == Then::reset ? Ending::fin_then_reset : Ending::fin_then_discard,
                       client, server);
}

std::optional<CloseFault> CloseFault::parse(const config::FaultParams& p) {
    CloseFault x;
    p.target("to", x.to);
    p.choice<Then>("then", x.then, {{"reset", Then::reset}, {"discard", Then::discard}});
    read_ending(p, "client", x.client);
    read_ending(p, "server", x.server);
    check_ending_keys(p, {"to", "then"});
    return x;
}

}  // namespace tcpfault::faults

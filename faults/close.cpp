#include "faults/close.hpp"

#include "config/fault_params.hpp"

namespace tcpfault::faults {

Endings CloseFault::endings() const {
    Ending hit = then == Then::reset ? Ending::fin_then_reset : Ending::fin_then_discard;
    Endings e;
    if (client || server) {  // named endings; a side not named is closed gracefully
        e.client = client.value_or(Ending::fin);
        e.server = server.value_or(Ending::fin);
        return e;
    }
    e.client = hits_client(to) ? hit : Ending::fin;
    e.server = hits_server(to) ? hit : Ending::fin;
    return e;
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

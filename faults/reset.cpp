#include "faults/reset.hpp"

#include "config/fault_params.hpp"

namespace tcpfault::faults {

Endings ResetFault::endings() const {
    Ending hit = flush ? Ending::reset : Ending::reset_now;
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

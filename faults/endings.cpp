// The close kinds' names and order, and how a fault reads one from YAML.
#include "config/fault_params.hpp"
#include "faults/fault_base.hpp"

namespace tcpfault::faults {

void read_ending(const config::FaultParams& p, std::string_view key, std::optional<Ending>& out) {
    if (!p.has(key)) return;
    Ending e = Ending::none;
    p.choice<Ending>(key, e,
                     {{"fin", Ending::fin},
                      {"fin_then_discard", Ending::fin_then_discard},
                      {"fin_then_reset", Ending::fin_then_reset},
                      {"reset", Ending::reset},
                      {"reset_now", Ending::reset_now}});
    if (e != Ending::none) out = e;
}

Endings endings_for(config::Target to, Ending hit, std::optional<Ending> client,
                    std::optional<Ending> server) {
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

void check_ending_keys(const config::FaultParams& p,
                       std::initializer_list<std::string_view> short_keys) {
    if (!p.has("client") && !p.has("server")) return;
    for (std::string_view k : short_keys) {
        if (p.has(k))
            p.error_at(k, "fault." + std::string(k) +
                              " cannot be combined with fault.client/fault.server (they name each "
                              "side's ending)");
    }
}

}  // namespace tcpfault::faults

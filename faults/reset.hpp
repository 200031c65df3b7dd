// reset: RST to the targeted side(s). With `flush` (default), the bytes already forwarded to a
// targeted side are acknowledged by its peer before the RST, so "reset after exactly 700KiB"
// means the client really received 700KiB; without it the RST goes at once. A side that is not
// targeted gets every byte already forwarded to it, then a graceful FIN. `client:`/`server:`
// name each side's ending explicitly instead (see Ending).
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct ResetFault {
    static constexpr std::string_view kName = "reset";
    static constexpr Scope kScope = Scope::connection;
    static constexpr std::array kParams{std::string_view{"to"}, std::string_view{"flush"},
                                        std::string_view{"client"}, std::string_view{"server"}};

    config::Target to = config::Target::both;
    bool flush = true;
    std::optional<Ending> client;  // explicit endings; override to/flush
    std::optional<Ending> server;

    Endings endings() const;
    static std::optional<ResetFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const { c.end(endings(), rule); }
};

}  // namespace tcpfault::faults

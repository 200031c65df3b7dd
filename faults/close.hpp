// close: a premature FIN. The targeted side(s) get a FIN after every byte already forwarded
// to them; if the peer keeps sending, `then: reset` (default) answers with RST once the FIN is
// on the wire, the FIN-then-RST sequence behind Winsock 10053 (Linux: read returns 0, later
// writes fail EPIPE/ECONNRESET); `then: discard` reads and drops, leaving the peer half-open.
// A side that is not targeted gets every forwarded byte, then a graceful FIN.
// `client:`/`server:` name each side's ending explicitly instead (see Ending).
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct CloseFault {
    enum class Then { reset, discard };
    static constexpr std::string_view kName = "close";
    static constexpr Scope kScope = Scope::connection;
    static constexpr std::array kParams{std::string_view{"to"}, std::string_view{"then"},
                                        std::string_view{"client"}, std::string_view{"server"}};

    config::Target to = config::Target::both;
    Then then = Then::reset;
    std::optional<Ending> client;
    std::optional<Ending> server;

    Endings endings() const;
    static std::optional<CloseFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const { c.end(endings(), rule); }
};

}  // namespace tcpfault::faults

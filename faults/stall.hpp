// stall: nothing arrives. `mode: hold` stops reading the source (TCP backpressure: nothing is
// lost, everything is delivered once the stall ends); `mode: drop` reads and discards what
// arrives, a FIN or RST included, like a blackholing firewall (a FIN or RST it swallowed is
// passed on when it ends). Several stalls on one direction count separately: it moves again
// only when none is left. With a `duration` the stall ends by itself and `then` follows
// (resume, or reset / close the connection); without one it lasts until its rule is disabled
// or deleted, or both peers are gone.
#pragma once

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct StallFault {
    enum class Mode { hold, drop };
    enum class Then { resume, reset, close };
    static constexpr std::string_view kName = "stall";
    static constexpr Scope kScope = Scope::stage;
    static constexpr std::array kParams{std::string_view{"direction"}, std::string_view{"duration"},
                                        std::string_view{"mode"}, std::string_view{"then"}};

    config::Direction direction = config::Direction::both;
    std::optional<config::Duration> duration;  // none: forever
    Mode mode = Mode::hold;
    Then then = Then::resume;
    // Not in the YAML schema; Toxiproxy's `timeout` toxic. pass_close: a drop stall that lets
    // the stream's own FIN or RST through. renew_on_data: the duration counts from the last
    // byte dropped (an inactivity timeout), not from the start.
    bool pass_close = false;
    bool renew_on_data = false;

    static std::optional<StallFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
};

}  // namespace tcpfault::faults

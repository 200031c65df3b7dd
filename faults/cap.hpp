// cap: at most `max` concurrent connections among those the rule matches. Beyond it a new
// client is reset at once (`over: reset`: RST), closed (`close`: FIN; its further bytes are
// read and dropped until its FIN, or with `then: reset` answered with RST), sent the `banner`
// then closed the same way (`banner`, e.g. "421 Too many connections\r\n"), or held
// unconnected until a slot frees (`hold`, first come first served over every loop).
#pragma once

#include <cstdint>
#include <string>

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct CapFault {
    enum class Over { reset, close, banner, hold };
    static constexpr std::string_view kName = "cap";
    static constexpr Scope kScope = Scope::proxy;
    static constexpr std::array kParams{std::string_view{"max"}, std::string_view{"over"},
                                        std::string_view{"banner"}, std::string_view{"then"}};

    uint64_t max = 0;
    Over over = Over::reset;
    std::string banner;         // required (non-empty) when over == banner
    Ending then = Ending::fin;  // close/banner: fin or fin_then_reset

    // How a client turned away (reset, close, banner) ends.
    Ending rejection() const { return over == Over::reset ? Ending::reset_now : then; }
    static std::optional<CapFault> parse(const config::FaultParams& p);
};

}  // namespace tcpfault::faults

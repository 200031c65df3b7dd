#include "faults/cap.hpp"

#include "config/fault_params.hpp"

namespace tcpfault::faults {

std::optional<CapFault> CapFault::parse(const config::FaultParams& p) {
    CapFault x;
    p.require("max");
    p.uint("max", x.max, 1, UINT32_MAX);
    p.choice<Over>("over", x.over,
                   {{"reset", Over::reset},
                    {"close", Over::close},
                    {"banner", Over::banner},
                    {"hold", Over::hold}});
    p.string("banner", x.banner, false);
    p.choice<Ending>("then", x.then, {{"fin", Ending::fin}, {"reset", Ending::fin_then_reset}});
    bool over_banner = p.text("over") == "banner";
    if (over_banner && !p.has("banner")) {
        p.require("banner", "needed with over: banner");
    } else if (!over_banner && p.has("banner")) {
        std::string was = p.has("over") ? p.text("over") : "reset";
        p.error_key("banner",
                    "fault.banner is only used with over: banner (over is \"" + was + "\")");
    }
    if (p.has("then") && x.over != Over::close && x.over != Over::banner)
        p.error_key("then", "fault.then is only used with over: close or over: banner");
    return x;
}

}  // namespace tcpfault::faults

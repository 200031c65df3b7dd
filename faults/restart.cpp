#include "faults/restart.hpp"

#include "config/fault_params.hpp"

namespace tcpfault::faults {

std::optional<RestartFault> RestartFault::parse(const config::FaultParams& p) {
    RestartFault x;
    p.duration("downtime", x.downtime);
    return x;
}

}  // namespace tcpfault::faults

#include "faults/drop_syn.hpp"

#include "config/fault_params.hpp"

namespace tcpfault::faults {

std::optional<DropSynFault> DropSynFault::parse(const config::FaultParams&) {
    return DropSynFault{};
}

}  // namespace tcpfault::faults

// THE list of fault kinds. Each is one struct in its own file (faults/<name>.hpp/.cpp) holding
// its parameters, parser and behaviour; this variant is the only place they are listed, and
// everything that needs "every fault" (the config parser, messages, metrics labels, the docs
// check) iterates it. Adding a fault: a new faults/<name>.hpp/.cpp and one line here.
#pragma once

#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "faults/bandwidth.hpp"
#include "faults/blackhole.hpp"
#include "faults/cap.hpp"
#include "faults/clamp.hpp"
#include "faults/close.hpp"
#include "faults/drop_syn.hpp"
#include "faults/idle.hpp"
#include "faults/latency.hpp"
#include "faults/loss.hpp"
#include "faults/refuse.hpp"
#include "faults/reset.hpp"
#include "faults/restart.hpp"
#include "faults/slice.hpp"
#include "faults/slow_close.hpp"
#include "faults/stall.hpp"

namespace tcpfault::faults {

using FaultSpec =
    std::variant<ResetFault, CloseFault, StallFault, LatencyFault, BandwidthFault, SliceFault,
                 ClampFault, CapFault, RefuseFault, IdleFault, RestartFault, SlowCloseFault,
                 BlackholeFault, LossFault, DropSynFault>;

// The YAML name of a fault ("reset", "close", ...), as used in metric labels.
inline const char* fault_name(const FaultSpec& f) {
    return std::visit([](const auto& x) { return x.kName.data(); }, f);
}
inline Scope fault_scope(const FaultSpec& f) {
    return std::visit([](const auto& x) { return x.kScope; }, f);
}

// Faults that drop packets below the socket (nftables, `kDropsPackets`): they need
// CAP_NET_ADMIN.
inline bool drops_packets(const FaultSpec& f) {
    return std::visit(
        [](const auto& x) {
            return requires {
                std::decay_t<decltype(x)>::kDropsPackets;
            };
        },
        f);
}

// One entry per kind, in list order.
struct FaultKind {
    std::string_view name;
    Scope scope;
    std::vector<std::string_view> params;
};
const std::vector<FaultKind>& fault_kinds();

// Parses the parameters of the kind named `name` (already known to be in the list).
std::optional<FaultSpec> parse_fault(std::string_view name, const config::FaultParams& p);

// Applies a connection or stage fault to one connection (proxy faults act elsewhere).
void apply_fault(const FaultSpec& f, Connection& c, const std::string& rule);

}  // namespace tcpfault::faults

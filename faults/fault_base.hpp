// What every fault file includes: the scope vocabulary and the forward declarations a fault's
// spec needs. A fault is a struct with:
//   static constexpr std::string_view kName;      its YAML `type`
//   static constexpr Scope kScope;                stage / connection / proxy
//   static constexpr std::array kParams;          its YAML keys besides `type`
//   static std::optional<T> parse(const config::FaultParams&);
//   void apply(Connection&, const std::string& rule) const;   (stage and connection scope)
// and is listed once in faults/fault_list.hpp.
#pragma once

#include <array>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include "config/types.hpp"
#include "faults/contracts.hpp"

namespace tcpfault::config {
class FaultParams;
}

namespace tcpfault::faults {

enum class Scope {
    stage,       // shapes one direction's bytes (latency, bandwidth, slice, stall, slow_close)
    connection,  // acts on one connection (reset, close, idle, clamp)
    proxy,       // acts on the proxy's admission or listener (cap, refuse, restart)
};

inline bool hits_client(config::Target t) {
    return t != config::Target::server;
}
inline bool hits_server(config::Target t) {
    return t != config::Target::client;
}

// The `client:` / `server:` endings of reset and close (YAML names of Ending).
void read_ending(const config::FaultParams& p, std::string_view key, std::optional<Ending>& out);
// reset's and close's endings: named ones (a side not named gets fin), else `hit` for the sides
// `to` targets and fin for the other.
Endings endings_for(config::Target to, Ending hit, std::optional<Ending> client,
                    std::optional<Ending> server);
// reset and close take either their shorthand keys (`short_keys`) or explicit endings, not both.
void check_ending_keys(const config::FaultParams& p,
                       std::initializer_list<std::string_view> short_keys);

}  // namespace tcpfault::faults

// What the Toxiproxy API may do beyond Toxiproxy's own rules (docs/toxiproxy.md, "Security"):
// the addresses a proxy made over it may listen on and relay to (toxiproxy.allow_listen,
// toxiproxy.allow_upstream), and whether it may touch proxies from the config file
// (toxiproxy.manage_config_proxies).
#pragma once

#include <string>
#include <vector>

#include "config/config.hpp"

namespace tcpfault::toxiproxy {

// True when `addr` matches one of `allow`. An IP host matches network entries that contain it
// (IPv4-mapped IPv6 as IPv4); a name matches only name entries (equal, ignoring case and a
// trailing dot) and `*.suffix` entries, never a network: a name is resolved again for every
// connection, so checking what it resolves to now would prove nothing. `*` matches any host.
bool address_allowed(const std::vector<config::AddressPattern>& allow,
                     const config::HostPort& addr);

// "" or why the Toxiproxy API may not open a listener on `listen` / relay to `upstream`.
std::string check_listen(const config::ToxiproxyConfig& cfg, const config::HostPort& listen);
std::string check_upstream(const config::ToxiproxyConfig& cfg, const config::HostPort& upstream);

// Why the process must not start with this config, or "": admin.token set while the Toxiproxy
// API, which cannot check it, is on without toxiproxy.allow_unauthenticated. `how` says how the
// API was turned on ("toxiproxy.listen", "--toxiproxy-api").
std::string unauthenticated_error(const config::Config& cfg, const std::string& how);

}  // namespace tcpfault::toxiproxy

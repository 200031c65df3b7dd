// Typed, validated configuration: what docs/config.md describes, after parsing.
// Everything downstream (proxy/, faults/) consumes only these structs, never YAML nodes.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "config/types.hpp"
#include "faults/fault_list.hpp"

namespace re2 {
class RE2;
}

namespace tcpfault::config {

struct AdminConfig {
    bool enabled = true;  // false when listen is "off"
    HostPort listen{"127.0.0.1", 9474};
    std::string token;  // empty: no auth
};

// One entry of toxiproxy.allow_listen / allow_upstream: which addresses the Toxiproxy API may
// open a listener on or relay to. Written `HOST`, `HOST:PORT`, `HOST:LO-HI`, `HOST:*` (IPv6 in
// brackets when a port follows); HOST is an IP, a CIDR, a host name, `*.suffix` or `*`.
struct AddressPattern {
    enum class Host { any, network, name, suffix };
    Host host_kind = Host::any;
    Cidr network;      // Host::network (a bare IP is a /32 or /128)
    std::string name;  // Host::name (lower case, no trailing dot); Host::suffix: ".example.com"
    uint16_t port_min = 0;
    uint16_t port_max = 65535;
    std::string text;  // as written, for messages
};

struct ToxiproxyConfig {
    bool enabled = false;
    HostPort listen{"127.0.0.1", 8474};
    // Toxiproxy clients send no credentials: with admin.token set, the API only starts when
    // this says so.
    bool allow_unauthenticated = false;
    // Proxies from the config file may be changed (toxics, enabled, delete, reset) over the
    // Toxiproxy API. Off: they are listed, read-only.
    bool manage_config_proxies = false;
    // Absent: any address. Present (even empty): only addresses matching an entry.
    std::optional<std::vector<AddressPattern>> allow_listen;
    std::optional<std::vector<AddressPattern>> allow_upstream;
    // Toxiproxy's -proxy-metrics / -runtime-metrics: extra series on the API's /metrics.
    bool proxy_metrics = false;
    bool runtime_metrics = false;
    Position pos;  // of the `toxiproxy` key, for messages
};

struct LogConfig {
    LogLevel level = LogLevel::info;
    LogFormat format = LogFormat::text;
};

// match.connections: {every: N} | {nth: N} | {first: N}; ordinals count from 1 per proxy.
struct ConnectionsMatch {
    enum class Kind { any, every, nth, first };
    Kind kind = Kind::any;
    uint64_t n = 0;
    bool matches(uint64_t ordinal) const;
};

// Active inside [k*every + offset, k*every + offset + for) for k >= 0, clock from start-up.
struct Schedule {
    Duration every{0};
    Duration for_{0};
    Duration offset{0};
    bool active_at(Duration since_start) const;
};

struct Match {
    std::vector<Cidr> clients;  // empty: any client
    Channel channel = Channel::any;
    ConnectionsMatch connections;
    std::optional<double> probability;  // in [0, 1]
    std::optional<Schedule> schedule;
    std::optional<uint64_t> limit;
    bool existing = true;
};

struct When {
    // The stream the conditions read. `both`: each direction is watched on its own, and the
    // first to meet the conditions fires (one rule for an FTP upload or download).
    Direction direction = Direction::upstream;
    std::optional<std::string> data;          // literal bytes
    std::optional<std::string> line;          // RE2 regex source text
    std::shared_ptr<const re2::RE2> line_re;  // compiled from `line` when given
    std::optional<uint64_t> after_bytes;
    std::optional<Duration> after;
    // Fire on the next byte that arrives once the other conditions hold (alone: the stream's
    // first byte), without forwarding that byte or anything after it.
    bool next_byte = false;
};

// The fault kinds live in faults/ (one file each, listed in faults/fault_list.hpp); the
// config layer names them too, as the parsed rule's `fault`.
using faults::BandwidthFault;
using faults::BlackholeFault;
using faults::CapFault;
using faults::ClampFault;
using faults::CloseFault;
using faults::DropSynFault;
using faults::fault_name;
using faults::FaultSpec;
using faults::IdleFault;
using faults::LatencyFault;
using faults::LossFault;
using faults::RefuseFault;
using faults::ResetFault;
using faults::RestartFault;
using faults::SliceFault;
using faults::SlowCloseFault;
using faults::StallFault;

struct Rule {
    std::string name;
    bool enabled = true;
    Match match;
    std::optional<When> when;  // absent: the fault starts at accept
    FaultSpec fault;
    Position pos;
};

struct Proxy {
    std::string name;
    HostPort listen;
    HostPort upstream;
    Protocol protocol = Protocol::tcp;
    Duration connect_timeout = std::chrono::seconds(10);
    OnUpstreamError on_upstream_error = OnUpstreamError::reset;
    std::vector<Rule> rules;
    Position pos;
    Position upstream_pos;  // of the `upstream` value, for messages
};

struct Config {
    AdminConfig admin;
    LogConfig log;
    std::optional<uint64_t> seed;
    Duration shutdown_grace = std::chrono::seconds(5);
    unsigned workers = 1;  // 0 = auto (one per core)
    ToxiproxyConfig toxiproxy;
    // Re-read the file when it changes (app/config_watch.hpp); `--watch` forces it on.
    bool watch = false;
    std::vector<Proxy> proxies;
};

struct Diagnostic {
    std::string file;
    Position pos;
    std::string message;
    std::string str() const;  // "FILE:LINE:COL: message", or "FILE: message" without a position
};

struct LoadResult {
    std::optional<Config> config;  // set only when errors is empty
    std::vector<Diagnostic> errors;
    // Valid but probably not what was meant (e.g. no proxies); shown as "FILE: warning: ...".
    std::vector<Diagnostic> warnings;
};

struct RuleResult {
    std::optional<Rule> rule;
    std::vector<Diagnostic> errors;
};

struct FaultBodyResult {
    std::optional<FaultSpec> fault;  // set only when errors is empty
    std::vector<Diagnostic> errors;
};

// Faults that drop packets (blackhole, loss, drop_syn; faults::drops_packets) need
// CAP_NET_ADMIN. The process says once, at start and before it reads any config, whether it
// can drop packets (it tried to create its nftables table) and, if not, why: from then on a
// rule that needs it is rejected wherever it is read (file, reload, admin API), naming the
// capability and the rule. Until then (`--check`) rules are not checked for it.
void set_packet_filter(bool available, std::string why_not = "");

// Looks up an environment variable; injectable for tests.
using EnvLookup = std::optional<std::string> (*)(const std::string& name);
std::optional<std::string> process_env(const std::string& name);

// "" or why proxies[i]'s upstream leads back to itself (directly, or through other proxies of
// `all`): every connection would open another until no file descriptor is left.
std::string upstream_loop(const std::vector<Proxy>& all, size_t i);

// Reads and validates a config file. `${VAR}`/`${VAR:-default}` are expanded first.
LoadResult load_file(const std::string& path, EnvLookup env = process_env);
// Same, from text; `source_name` is what diagnostics print as FILE.
LoadResult load_string(const std::string& text, const std::string& source_name,
                       EnvLookup env = process_env);
// One rule (YAML or JSON text, JSON being YAML), validated exactly as inside a file.
RuleResult parse_rule(const std::string& text, const std::string& source_name);
// One fault mapping on its own (`{type: reset, to: client}`, YAML or JSON), read by the same
// code as a rule's `fault:`, with the same messages and positions; for faults the admin API
// applies to one open connection. Any kind parses here: the caller decides which scopes it
// accepts (faults::fault_scope).
FaultBodyResult parse_fault_body(const std::string& text, const std::string& source_name);

}  // namespace tcpfault::config

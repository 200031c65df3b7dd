// Typed, validated configuration: what SPEC sections 2 and 3 describe, after parsing.
// Everything downstream (proxy/, faults/) consumes only these structs, never YAML nodes.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <variant>
#include <vector>

struct sockaddr;

namespace tcpfault::config {

// Microseconds: Toxiproxy's slicer speaks in µs, everything else is coarser.
using Duration = std::chrono::microseconds;

// 1-based position in the source text; 0 means "unknown" (e.g. built in code).
struct Position {
    int line = 0;
    int col = 0;
};

struct HostPort {
    std::string host;  // without brackets for IPv6 literals
    uint16_t port = 0;
    std::string str() const;  // "host:port", "[v6]:port"
};

// An IPv4 or IPv6 network. IPv4-mapped IPv6 client addresses (::ffff:a.b.c.d) match IPv4 CIDRs.
struct Cidr {
    bool v6 = false;
    std::array<uint8_t, 16> addr{};  // v4 uses the first 4 bytes
    int prefix = 0;
    bool contains(const struct sockaddr* sa) const;
    std::string str() const;
};

enum class LogLevel { error, warn, info, debug };
enum class LogFormat { text, json };
enum class Protocol { tcp, ftp };
enum class OnUpstreamError { reset, close };
enum class Channel { any, control, data };
// upstream = client->server, downstream = server->client.
enum class Direction { upstream, downstream, both };
// Which side of the proxied connection a fault acts on.
enum class Target { client, server, both };

struct AdminConfig {
    bool enabled = true;  // false when listen is "off"
    HostPort listen{"127.0.0.1", 9474};
    std::string token;  // empty: no auth
};

struct ToxiproxyConfig {
    bool enabled = false;
    HostPort listen{"127.0.0.1", 8474};
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
    Direction direction = Direction::upstream;  // only upstream|downstream are valid here
    std::optional<std::string> data;            // literal bytes
    std::optional<std::string> line;            // ECMAScript regex source text
    std::shared_ptr<const std::regex> line_re;  // compiled from `line` when given
    std::optional<uint64_t> after_bytes;
    std::optional<Duration> after;
};

struct ResetFault {
    Target to = Target::both;
    bool flush = true;
};
struct CloseFault {
    enum class Then { reset, discard };
    Target to = Target::both;
    Then then = Then::reset;
};
struct StallFault {
    enum class Mode { hold, drop };
    enum class Then { resume, reset, close };
    Direction direction = Direction::both;
    std::optional<Duration> duration;  // none: forever
    Mode mode = Mode::hold;
    Then then = Then::resume;
    // Not in the YAML schema: set for Toxiproxy's `timeout` toxic, which drops data but lets
    // the stream's close (FIN or RST) through, where a stall's blackhole swallows it.
    bool pass_close = false;
};
struct LatencyFault {
    Duration delay{0};
    Duration jitter{0};
    Direction direction = Direction::downstream;
};
struct BandwidthFault {
    uint64_t rate = 0;  // bytes per second, > 0
    Direction direction = Direction::downstream;
};
struct SliceFault {
    uint64_t min_size = 1;  // `size: 4` gives min = max = 4; `size: 1-16` a range
    uint64_t max_size = 1;
    Duration delay{0};
    Direction direction = Direction::both;
};
struct ClampFault {
    Target side = Target::both;
    std::optional<uint64_t> sndbuf;
    std::optional<uint64_t> rcvbuf;
    std::optional<uint64_t> window;
    std::optional<uint64_t> mss;
    std::optional<uint64_t> read_size;
};
struct CapFault {
    enum class Over { reset, close, banner, hold };
    uint64_t max = 0;
    Over over = Over::reset;
    std::string banner;  // required (non-empty) when over == banner
};
struct RefuseFault {};
struct IdleFault {
    enum class Action { reset, drop, close };
    Duration timeout{0};
    Action action = Action::reset;
};
struct RestartFault {
    Duration downtime{0};
};

// Toxiproxy's slow_close: a FIN from the source is passed on only after `delay`.
struct SlowCloseFault {
    Duration delay{0};
    Direction direction = Direction::both;
};

using FaultSpec =
    std::variant<ResetFault, CloseFault, StallFault, LatencyFault, BandwidthFault, SliceFault,
                 ClampFault, CapFault, RefuseFault, IdleFault, RestartFault, SlowCloseFault>;

// The YAML name of a fault ("reset", "close", ...), as used in metric labels.
const char* fault_name(const FaultSpec& f);

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
    std::string str() const;  // "FILE:LINE:COL: message"
};

struct LoadResult {
    std::optional<Config> config;  // set only when errors is empty
    std::vector<Diagnostic> errors;
};

struct RuleResult {
    std::optional<Rule> rule;
    std::vector<Diagnostic> errors;
};

// Looks up an environment variable; injectable for tests.
using EnvLookup = std::optional<std::string> (*)(const std::string& name);
std::optional<std::string> process_env(const std::string& name);

// Reads and validates a config file. `${VAR}`/`${VAR:-default}` are expanded first.
LoadResult load_file(const std::string& path, EnvLookup env = process_env);
// Same, from text; `source_name` is what diagnostics print as FILE.
LoadResult load_string(const std::string& text, const std::string& source_name,
                       EnvLookup env = process_env);
// One rule (YAML or JSON text, JSON being YAML), validated exactly as inside a file.
RuleResult parse_rule(const std::string& text, const std::string& source_name);

}  // namespace tcpfault::config

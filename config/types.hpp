// The small value types every layer shares: durations, positions in the config text,
// addresses, networks and the direction/side vocabulary of rules. No YAML, no sockets.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>

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

}  // namespace tcpfault::config

// Small behaviours of the config value types (formatting, CIDR and schedule arithmetic).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <cstring>

#include "config/config.hpp"

namespace tcpfault::config {

std::string HostPort::str() const {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

namespace {
bool prefix_equal(const uint8_t* a, const uint8_t* b, int bits) {
    int full = bits / 8;
    if (std::memcmp(a, b, full) != 0) return false;
    int rest = bits % 8;
    if (rest == 0) return true;
    uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}
}  // namespace

bool Cidr::contains(const sockaddr* sa) const {
    if (sa == nullptr) return false;
    if (sa->sa_family == AF_INET) {
        if (v6) return false;
        auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        return prefix_equal(reinterpret_cast<const uint8_t*>(&in->sin_addr), addr.data(), prefix);
    }
    if (sa->sa_family == AF_INET6) {
        auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        const uint8_t* a = in6->sin6_addr.s6_addr;
        if (v6) return prefix_equal(a, addr.data(), prefix);
        // Dual-stack listeners see IPv4 clients as ::ffff:a.b.c.d.
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return prefix_equal(a + 12, addr.data(), prefix);
        return false;
    }
    return false;
}

std::string Cidr::str() const {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(v6 ? AF_INET6 : AF_INET, addr.data(), buf, sizeof buf);
    return std::string(buf) + "/" + std::to_string(prefix);
}

bool ConnectionsMatch::matches(uint64_t ordinal) const {
    switch (kind) {
        case Kind::any:
            return true;
        case Kind::every:
            return n > 0 && ordinal % n == 0;
        case Kind::nth:
            return ordinal == n;
        case Kind::first:
            return ordinal <= n;
    }
    return true;
}

bool Schedule::active_at(Duration since_start) const {
    if (since_start < offset) return false;
    if (every.count() <= 0) return since_start - offset < for_;
    return (since_start - offset) % every < for_;
}

std::string Diagnostic::str() const {
    // A problem with the file as a whole (unreadable, too large) has no position to show.
    if (pos.line <= 0) return file + ": " + message;
    return file + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.col) + ": " + message;
}

std::optional<std::string> process_env(const std::string& name) {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
}

}  // namespace tcpfault::config

#include "api/toxiproxy_policy.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cctype>
#include <cstring>

namespace tcpfault::toxiproxy {

namespace {

bool ip_of(const std::string& host, sockaddr_storage* out) {
    std::memset(out, 0, sizeof *out);
    auto* v4 = reinterpret_cast<sockaddr_in*>(out);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        return true;
    }
    auto* v6 = reinterpret_cast<sockaddr_in6*>(out);
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        return true;
    }
    return false;
}

std::string lower_name(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (s.ends_with('.')) s.pop_back();
    return s;
}

std::string refused(const char* what, const config::HostPort& addr, const char* key,
                    const std::vector<config::AddressPattern>& allow) {
    std::string list;
    for (const auto& p : allow) list += (list.empty() ? "" : ", ") + p.text;
    return std::string(what) + " " + addr.str() + " is not allowed by toxiproxy." + key + " (" +
           (list.empty() ? "an empty list: nothing is" : "allowed: " + list) + ")";
}

}  // namespace

bool address_allowed(const std::vector<config::AddressPattern>& allow,
                     const config::HostPort& addr) {
    sockaddr_storage ss;
    bool ip = ip_of(addr.host, &ss);
    std::string name = ip ? std::string() : lower_name(addr.host);
    for (const auto& p : allow) {
        if (addr.port < p.port_min || addr.port > p.port_max) continue;
        switch (p.host_kind) {
            case config::AddressPattern::Host::any:
                return true;
            case config::AddressPattern::Host::network:
                if (ip && p.network.contains(reinterpret_cast<const sockaddr*>(&ss))) return true;
                break;
            case config::AddressPattern::Host::name:
                if (!ip && name == p.name) return true;
                break;
            case config::AddressPattern::Host::suffix:
                if (!ip && name.size() > p.name.size() && name.ends_with(p.name)) return true;
                break;
        }
    }
    return false;
}

std::string check_listen(const config::ToxiproxyConfig& cfg, const config::HostPort& listen) {
    if (!cfg.allow_listen || address_allowed(*cfg.allow_listen, listen)) return "";
    return refused("listen address", listen, "allow_listen", *cfg.allow_listen);
}

std::string check_upstream(const config::ToxiproxyConfig& cfg, const config::HostPort& upstream) {
    if (!cfg.allow_upstream || address_allowed(*cfg.allow_upstream, upstream)) return "";
    return refused("upstream", upstream, "allow_upstream", *cfg.allow_upstream);
}

std::string unauthenticated_error(const config::Config& cfg, const std::string& how) {
    if (!cfg.toxiproxy.enabled || cfg.admin.token.empty() || cfg.toxiproxy.allow_unauthenticated)
        return "";
    return "the Toxiproxy API (" + how +
           ") cannot check admin.token: Toxiproxy clients send no credentials, so anyone who "
           "reaches it could change every proxy; set toxiproxy.allow_unauthenticated: true in "
           "the config file to run it anyway";
}

}  // namespace tcpfault::toxiproxy

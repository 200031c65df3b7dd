// Proxies that would connect to themselves: a proxy whose upstream is its own listen address,
// or a chain of proxies leading back to the first. Each connection would open another until
// the process runs out of file descriptors, so such a config is refused (file, reload, API).
#include <algorithm>
#include <cctype>

#include "config/config.hpp"

namespace tcpfault::config {

namespace {
std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

bool is_wildcard(const std::string& h) {
    return h == "0.0.0.0" || h == "::" || h.empty();
}

bool is_loopback(const std::string& h) {
    return h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0;
}

// Whether a connection to `up` would land on a listener bound to `listen`. Names are compared
// as written (no DNS at config time), except that loopback names all mean this host, and a
// wildcard listener takes every address of this host.
bool reaches(const HostPort& up, const HostPort& listen) {
    if (listen.port == 0 || up.port != listen.port) return false;
    std::string u = lower(up.host), l = lower(listen.host);
    if (u == l) return true;
    if (is_wildcard(l)) return is_loopback(u) || is_wildcard(u);
    return is_loopback(u) && is_loopback(l) && (u == "localhost" || l == "localhost");
}
}  // namespace

std::string upstream_loop(const std::vector<Proxy>& all, size_t i) {
    std::vector<size_t> path{i};
    size_t at = i;
    for (size_t hops = 0; hops <= all.size(); ++hops) {
        auto next = std::find_if(all.begin(), all.end(), [&](const Proxy& p) {
            return reaches(all[at].upstream, p.listen);
        });
        if (next == all.end()) return "";
        size_t j = static_cast<size_t>(next - all.begin());
        if (j == i) {
            if (path.size() == 1)
                return "upstream " + all[i].upstream.str() +
                       " is this proxy's own listen address " + all[i].listen.str() +
                       ": every connection would open another";
            std::string chain = all[i].name;
            for (size_t k = 1; k < path.size(); ++k) chain += " -> " + all[path[k]].name;
            return "upstream " + all[i].upstream.str() + " leads back to this proxy (" + chain +
                   " -> " + all[i].name + "): every connection would open another";
        }
        if (std::find(path.begin(), path.end(), j) != path.end()) return "";  // another loop
        path.push_back(j);
        at = j;
    }
    return "";
}

}  // namespace tcpfault::config

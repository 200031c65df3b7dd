#include "faults/rule_matcher.hpp"

namespace tcpfault::faults {

namespace {
uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t fnv1a(std::string_view s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
    return h;
}
}  // namespace

double probability_draw(uint64_t seed, std::string_view rule_name, uint64_t ordinal) {
    uint64_t x = splitmix64(seed ^ splitmix64(fnv1a(rule_name) ^ splitmix64(ordinal)));
    return static_cast<double>(x >> 11) * 0x1.0p-53;
}

bool rule_active(const config::Rule& rule, config::Duration since_start, uint64_t fired) {
    if (!rule.enabled) return false;
    if (rule.match.limit && fired >= *rule.match.limit) return false;
    if (rule.match.schedule && !rule.match.schedule->active_at(since_start)) return false;
    return true;
}

bool rule_matches(const config::Rule& rule, const ConnectionFacts& c, uint64_t seed,
                  uint64_t fired) {
    if (!rule_active(rule, c.since_start, fired)) return false;
    const config::Match& m = rule.match;
    if (m.channel != config::Channel::any && m.channel != c.channel) return false;
    if (!m.clients.empty()) {
        bool any = false;
        for (const auto& cidr : m.clients) any = any || cidr.contains(c.client);
        if (!any) return false;
    }
    if (!m.connections.matches(c.ordinal)) return false;
    if (m.probability && probability_draw(seed, rule.name, c.ordinal) >= *m.probability)
        return false;
    return true;
}

}  // namespace tcpfault::faults

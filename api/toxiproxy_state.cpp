#include "api/toxiproxy_state.hpp"

#include <uv.h>

#include <algorithm>
#include <optional>
#include <set>

#include "api/http_parser.hpp"
#include "api/toxiproxy_policy.hpp"
#include "config/units.hpp"
#include "observe/log.hpp"

namespace tcpfault::toxiproxy {

namespace {

config::Rule* find_rule(config::Proxy& c, std::string_view name) {
    for (auto& r : c.rules)
        if (r.name == name) return &r;
    return nullptr;
}

const config::Rule* find_rule(const config::Proxy& c, std::string_view name) {
    for (const auto& r : c.rules)
        if (r.name == name) return &r;
    return nullptr;
}

config::Rule disabled_rule() {
    config::Rule r;
    r.name = ProxyTable::kDisabledRule;
    r.enabled = true;
    r.fault = config::RefuseFault{};
    return r;
}

void erase_rules(config::Proxy& c, const std::vector<std::string>& names) {
    std::erase_if(c.rules, [&](const config::Rule& r) {
        return std::find(names.begin(), names.end(), r.name) != names.end();
    });
}

// Go's net.Listen reading of a listen text: "" and ":port" mean every interface (dual stack),
// and "localhost" is 127.0.0.1 (Go resolves it IPv4 first).
std::optional<config::HostPort> go_listen(const std::string& text, std::string* err) {
    std::string t = text.empty() ? ":0" : text;
    size_t colon = t.rfind(':');
    if (colon == std::string::npos) {
        *err = "listen tcp " + text + ": address " + text + ": missing port in address";
        return std::nullopt;
    }
    std::string host = t.substr(0, colon);
    if (host.empty())
        t = "[::]" + t.substr(colon);
    else if (ascii_iequals(host, "localhost"))
        t = "127.0.0.1" + t.substr(colon);
    auto hp = config::parse_host_port(t, true);
    if (!hp) {
        *err = "listen tcp " + text + ": " + hp.error;
        return std::nullopt;
    }
    return *hp;
}

// The address as Go's listen error shows it: the resolved one, or ":port" for every interface.
std::string go_listen_addr(const std::string& given, const config::HostPort& hp) {
    size_t colon = given.rfind(':');
    if (given.empty() || colon == 0) return ":" + std::to_string(hp.port);
    return hp.str();
}

// Toxiproxy's 500 when a listener cannot be opened, word for word: Go's net.OpError.
std::string listen_failure(const std::string& given, const config::HostPort& hp, int err) {
    std::string what;
    switch (err) {
        case UV_EADDRINUSE:
            what = "bind: address already in use";
            break;
        case UV_EACCES:
            what = "bind: permission denied";
            break;
        case UV_EADDRNOTAVAIL:
            what = "bind: cannot assign requested address";
            break;
        default:
            what = uv_strerror(err);
            break;
    }
    return "listen tcp " + go_listen_addr(given, hp) + ": " + what;
}

}  // namespace

ProxyTable::ProxyTable(Hooks hooks, config::ToxiproxyConfig cfg)
    : hooks_(std::move(hooks)), cfg_(std::move(cfg)) {}

std::string ProxyTable::sanitize(const std::string& name) {
    std::string out;
    for (char c : name) {
        if (out.size() == kMaxRuleBase) break;
        if (c >= 'A' && c <= 'Z')
            out += static_cast<char>(c - 'A' + 'a');
        else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')
            out += c;
        else
            out += '-';
    }
    return out.empty() ? "toxiproxy" : out;
}

void ProxyTable::sync() {
    std::set<std::string> live;
    for (ProxyServer* p : hooks_.servers()) live.insert(p->name());
    std::erase_if(state_, [&](const auto& kv) { return live.count(kv.first) == 0; });
}

ProxyServer* ProxyTable::find(const std::string& name) {
    for (auto& [tcp, e] : state_)
        if (e.name == name) {
            if (ProxyServer* p = hooks_.find(tcp)) return p;
        }
    ProxyServer* p = hooks_.find(name);
    if (p == nullptr) return nullptr;
    // A tcpfault name that belongs to a proxy known by another Toxiproxy name is not an alias.
    auto it = state_.find(name);
    if (it != state_.end() && it->second.name != name) return nullptr;
    return p;
}

std::string ProxyTable::name_of(const ProxyServer& p) const {
    auto it = state_.find(p.name());
    return it == state_.end() ? p.name() : it->second.name;
}

std::string ProxyTable::listen_of(const ProxyServer& p) const {
    auto it = state_.find(p.name());
    if (it == state_.end() || enabled(p)) return p.listen_addr();
    return it->second.listen;
}

std::string ProxyTable::upstream_of(const ProxyServer& p) const {
    auto it = state_.find(p.name());
    if (it != state_.end() && !it->second.upstream.empty()) return it->second.upstream;
    return p.config().upstream.str();
}

bool ProxyTable::enabled(const ProxyServer& p) {
    const config::Rule* r = find_rule(p.config(), kDisabledRule);
    return r == nullptr || !r->enabled;
}

std::vector<Toxic>& ProxyTable::toxics(const ProxyServer& p) {
    auto [it, inserted] = state_.try_emplace(p.name());
    Entry& e = it->second;
    if (inserted) {
        e.name = p.name();
        e.listen = p.listen_addr();
    }
    std::erase_if(e.toxics,
                  [&](const Toxic& t) { return find_rule(p.config(), t.rule) == nullptr; });
    return e.toxics;
}

Error ProxyTable::may_change(const ProxyServer& p) const {
    if (!from_config(p) || cfg_.manage_config_proxies) return {};
    return {403, "proxy " + p.name() +
                     " comes from the config file; the Toxiproxy API may change it only with "
                     "toxiproxy.manage_config_proxies: true"};
}

Error ProxyTable::parse_upstream(const std::string& text, config::HostPort* out) const {
    if (text.size() > kMaxAddress)
        return {400, "upstream too long (at most " + std::to_string(kMaxAddress) + " bytes)"};
    auto up = config::parse_host_port(text, false);
    if (!up) return {400, "invalid upstream address: " + up.error};
    if (std::string e = check_upstream(cfg_, *up); !e.empty()) return {403, e};
    *out = *up;
    return {};
}

Error ProxyTable::loop_check(const config::Proxy& cfg, const std::string& replacing) const {
    // Listeners on port 0 are compared by the port they really got.
    auto bound = [](const ProxyServer& p, config::Proxy c) {
        if (auto a = config::parse_host_port(p.listen_addr(), false)) c.listen = *a;
        return c;
    };
    std::vector<config::Proxy> all;
    const ProxyServer* replaced = nullptr;
    for (ProxyServer* p : hooks_.servers()) {
        if (p->name() == replacing)
            replaced = p;
        else
            all.push_back(bound(*p, p->config()));
    }
    all.push_back(replaced != nullptr && cfg.listen.port == 0 &&
                          cfg.listen.host == replaced->config().listen.host
                      ? bound(*replaced, cfg)
                      : cfg);
    std::string loop = config::upstream_loop(all, all.size() - 1);
    if (!loop.empty()) return {400, "proxy " + cfg.name + ": " + loop};
    return {};
}

Error ProxyTable::parse_listen(const std::string& text, config::HostPort* out) const {
    if (text.size() > kMaxAddress)
        return {400, "listen too long (at most " + std::to_string(kMaxAddress) + " bytes)"};
    std::string err;
    auto l = go_listen(text, &err);
    if (!l) return {500, err};
    if (std::string e = check_listen(cfg_, *l); !e.empty()) return {403, e};
    *out = *l;
    return {};
}

bool ProxyTable::same_addresses(const ProxyServer& p, const ProxySpec& spec) const {
    if (spec.upstream != upstream_of(p)) return false;
    if (spec.listen == listen_of(p)) return true;
    std::string err;
    auto want = go_listen(spec.listen, &err);
    auto have = config::parse_host_port(p.listen_addr(), true);
    return want && have && want->host == have->host &&
           (want->port == have->port || want->port == 0);
}

std::string ProxyTable::unique_proxy_name(const std::string& toxi) const {
    std::set<std::string> taken;
    for (ProxyServer* p : hooks_.servers()) taken.insert(p->name());
    std::string base = sanitize(toxi);
    std::string name = base;
    for (int n = 2; taken.count(name) > 0; ++n) name = base + "-" + std::to_string(n);
    return name;
}

void ProxyTable::name_rules(const config::Proxy& c, Toxic& t) {
    std::string base = sanitize(t.name);
    auto free = [&](const Toxic& candidate) {
        for (const auto& n : rule_names(candidate))
            if (n == kDisabledRule || find_rule(c, n) != nullptr) return false;
        return true;
    };
    t.rule = base;
    for (int n = 2; !free(t); ++n) t.rule = base + "-" + std::to_string(n);
}

Error ProxyTable::start(config::Proxy cfg, bool on, const std::string& given_listen, Entry entry,
                        ProxyServer** out) {
    std::erase_if(cfg.rules, [](const config::Rule& r) { return r.name == kDisabledRule; });
    if (!on) cfg.rules.push_back(disabled_rule());
    int listen_error = 0;
    std::string err = hooks_.add_proxy(cfg, &listen_error);
    if (!err.empty() && cfg.listen.host == "::" &&
        (listen_error == UV_EAFNOSUPPORT || listen_error == UV_EADDRNOTAVAIL)) {
        // "Every interface" where the host has no IPv6.
        cfg.listen.host = "0.0.0.0";
        listen_error = 0;
        err = hooks_.add_proxy(cfg, &listen_error);
    }
    if (!err.empty())
        return {500,
                listen_error != 0 ? listen_failure(given_listen, cfg.listen, listen_error) : err};
    ProxyServer* p = hooks_.find(cfg.name);
    if (p == nullptr) return {500, "proxy " + entry.name + " did not start"};
    // Down from the start: bound (so its port is known and kept), then closed before the
    // caller answers.
    if (!on) p->update_config(std::make_shared<config::Proxy>(p->config()));
    if (on) entry.listen = p->listen_addr();
    state_[cfg.name] = std::move(entry);
    if (out != nullptr) *out = p;
    return {};
}

Error ProxyTable::create(const ProxySpec& spec, std::vector<Toxic> toxics, ProxyServer** out) {
    if (find(spec.name) != nullptr) return {409, "proxy already exists"};
    config::Proxy cfg;
    if (Error e = parse_upstream(spec.upstream, &cfg.upstream)) return e;
    if (Error e = parse_listen(spec.listen, &cfg.listen)) return e;
    cfg.name = unique_proxy_name(spec.name);
    if (Error e = loop_check(cfg, "")) return e;
    // Toxiproxy accepts the client, then closes it (FIN) when the upstream cannot be reached.
    cfg.on_upstream_error = config::OnUpstreamError::close;
    for (Toxic& t : toxics) {
        for (const Toxic& other : toxics)
            if (&other != &t && other.name == t.name) return {409, "toxic already exists"};
        name_rules(cfg, t);
        for (auto& r : to_rules(t)) cfg.rules.push_back(std::move(r));
    }
    return start(std::move(cfg), spec.enabled, spec.listen,
                 Entry{spec.name, spec.listen, spec.upstream, std::move(toxics)}, out);
}

Error ProxyTable::update(ProxyServer*& p, const ProxySpec& want) {
    const std::string tcp = p->name();
    const std::string cur_listen = listen_of(*p);
    const std::string cur_upstream = upstream_of(*p);
    if (want.listen == cur_listen && want.upstream == cur_upstream) {
        if (want.enabled == enabled(*p)) return {};
        return set_enabled(*p, want.enabled);
    }
    config::HostPort listen, upstream;
    if (Error e = parse_upstream(want.upstream, &upstream)) return e;
    if (want.listen != cur_listen) {
        if (from_config(*p))
            return {400, "proxy " + tcp +
                             " comes from the config file: change its listen address there"};
        if (Error e = parse_listen(want.listen, &listen)) return e;
    }

    {
        config::Proxy next = p->config();
        next.upstream = upstream;
        if (want.listen != cur_listen) next.listen = listen;
        if (Error e = loop_check(next, tcp)) return e;
    }
    // Toxiproxy stops the proxy, closing every connection, and starts it again if enabled.
    if (want.listen == cur_listen) {
        p->abort_sessions(false);
        auto c = std::make_shared<config::Proxy>(p->config());
        c->upstream = upstream;
        p->update_config(c);
        if (auto it = state_.find(tcp); it != state_.end()) it->second.upstream = want.upstream;
        if (want.enabled != enabled(*p)) return set_enabled(*p, want.enabled);
        return {};
    }
    Entry entry;
    if (auto it = state_.find(tcp); it != state_.end()) entry = it->second;
    entry.toxics = toxics(*p);
    config::Proxy cfg = p->config();
    const config::HostPort old_listen = cfg.listen;
    const config::HostPort old_upstream = cfg.upstream;
    const std::string old_given_upstream = entry.upstream;
    remove(*p);
    p = nullptr;
    cfg.listen = listen;
    cfg.upstream = upstream;
    entry.upstream = want.upstream;
    entry.listen = want.listen;
    Error e = start(cfg, want.enabled, want.listen, entry, &p);
    if (!e) return {};
    // Toxiproxy keeps the proxy, down; here it stays down on its old address (whose port it
    // held until now), so it can be enabled again.
    cfg.listen = old_listen;
    if (auto a = config::parse_host_port(cur_listen, true)) cfg.listen = *a;
    cfg.upstream = old_upstream;
    entry.upstream = old_given_upstream;
    entry.listen = cur_listen;
    if (Error again = start(cfg, false, cur_listen, entry, &p))
        log::warn("toxiproxy api: proxy lost", {{"proxy", tcp}, {"error", again.message}});
    return e;
}

Error ProxyTable::set_enabled(ProxyServer& p, bool on) {
    auto c = std::make_shared<config::Proxy>(p.config());
    config::Rule* r = find_rule(*c, kDisabledRule);
    if (r == nullptr && on) return {};
    if (r == nullptr) {
        c->rules.push_back(disabled_rule());
    } else {
        r->enabled = !on;
    }
    // The refuse rule acts inside update_config: the listener is closed, or open again, now.
    p.update_config(c);
    if (!on) {
        // Toxiproxy closes every connection (FIN) along with the listener.
        p.abort_sessions(false);
        return {};
    }
    if (!p.listening() && p.listen_error() != 0) {
        // Someone took the port meanwhile: down again, with Toxiproxy's error.
        int err = p.listen_error();
        set_enabled(p, false);
        config::HostPort hp = p.config().listen;
        if (auto a = config::parse_host_port(p.listen_addr(), true)) hp = *a;
        return {500, listen_failure(p.listen_addr(), hp, err)};
    }
    if (auto it = state_.find(p.name()); it != state_.end()) it->second.listen = p.listen_addr();
    return {};
}

void ProxyTable::remove(ProxyServer& p) {
    std::string name = p.name();
    p.abort_sessions(false);
    hooks_.remove_proxy(name);
    state_.erase(name);
}

Error ProxyTable::add_toxic(ProxyServer& p, Toxic t) {
    std::vector<Toxic>& list = toxics(p);
    for (const Toxic& other : list)
        if (other.name == t.name) return {409, "toxic already exists"};
    auto c = std::make_shared<config::Proxy>(p.config());
    name_rules(*c, t);
    for (auto& r : to_rules(t)) c->rules.push_back(std::move(r));
    p.update_config(c);  // new rules also hit open connections (match.existing)
    list.push_back(std::move(t));
    return {};
}

Error ProxyTable::update_toxic(ProxyServer& p, const Toxic& t) {
    std::vector<Toxic>& list = toxics(p);
    auto it =
        std::find_if(list.begin(), list.end(), [&](const Toxic& x) { return x.name == t.name; });
    if (it == list.end()) return {404, "toxic not found"};
    Toxic updated = t;
    updated.rule = it->rule;
    auto c = std::make_shared<config::Proxy>(p.config());
    // The new rules take the old ones' place; rules of the same name are not re-applied to
    // open connections (that would stack, e.g. two latencies).
    auto at = std::find_if(c->rules.begin(), c->rules.end(),
                           [&](const config::Rule& r) { return r.name == it->rule; });
    size_t index = static_cast<size_t>(at - c->rules.begin());
    erase_rules(*c, rule_names(*it));
    index = std::min(index, c->rules.size());
    auto rules = to_rules(updated);
    c->rules.insert(c->rules.begin() + static_cast<std::ptrdiff_t>(index), rules.begin(),
                    rules.end());
    p.update_config(c);
    *it = std::move(updated);
    return {};
}

Error ProxyTable::remove_toxic(ProxyServer& p, const std::string& name) {
    std::vector<Toxic>& list = toxics(p);
    auto it =
        std::find_if(list.begin(), list.end(), [&](const Toxic& t) { return t.name == name; });
    if (it == list.end()) return {404, "toxic not found"};
    auto c = std::make_shared<config::Proxy>(p.config());
    erase_rules(*c, rule_names(*it));
    p.update_config(c);
    list.erase(it);
    return {};
}

Error ProxyTable::reset() {
    for (ProxyServer* p : hooks_.servers()) {
        if (may_change(*p)) continue;
        if (!enabled(*p)) {
            if (Error e = set_enabled(*p, true)) return e;
        }
        std::vector<Toxic>& list = toxics(*p);
        if (list.empty()) continue;
        std::vector<std::string> names;
        for (const Toxic& t : list)
            for (auto& n : rule_names(t)) names.push_back(std::move(n));
        auto c = std::make_shared<config::Proxy>(p->config());
        erase_rules(*c, names);
        p->update_config(c);
        list.clear();
    }
    return {};
}

}  // namespace tcpfault::toxiproxy

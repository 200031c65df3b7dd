// Toxiproxy's view of tcpfault's proxies, and the changes its API makes to them.
//
// Proxies made over the Toxiproxy API are ordinary tcpfault proxies (App binds and runs them)
// and each toxic is one or more ordinary rules on its proxy, so all of it shows in the admin API
// and the metrics. What only Toxiproxy knows is kept here, per tcpfault proxy name: the name as
// the client gave it (tcpfault names are [a-z0-9_-]+, Toxiproxy names need not be), the listen
// and upstream text as given, and each toxic's type, stream, toxicity and attributes, so GET
// returns what Toxiproxy would. Proxies from the config file are listed too (with no toxics:
// their own rules have no Toxiproxy form); the API changes them only with
// toxiproxy.manage_config_proxies.
//
// Taking a proxy down (`enabled: false`) switches on its rule `toxiproxy-disabled`, of type
// refuse: the listener is closed (ECONNREFUSED) before the call returns, and every open
// connection is closed (FIN), as Toxiproxy does. Switching `enabled` back on switches the rule
// off, which re-opens the listener, again before the call returns.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "api/toxiproxy_toxics.hpp"
#include "config/config.hpp"
#include "proxy/proxy_server.hpp"

namespace tcpfault::toxiproxy {

// An API error: the HTTP status and Toxiproxy's message. status 0: no error.
struct Error {
    int status = 0;
    std::string message;
    explicit operator bool() const { return status != 0; }
};

// What the process provides (App; the unit tests stand in for it).
struct Hooks {
    std::function<std::vector<ProxyServer*>()> servers;    // live proxies
    std::function<ProxyServer*(const std::string&)> find;  // by tcpfault name
    // Binds and starts a proxy (made at runtime): "" or the error; when listening failed, the
    // libuv error in *listen_error.
    std::function<std::string(const config::Proxy&, int* listen_error)> add_proxy;
    std::function<bool(const std::string&)> remove_proxy;  // false: no such proxy
};

// A proxy as a Toxiproxy client describes it.
struct ProxySpec {
    std::string name;
    std::string listen;  // as given ("" and ":port": every interface; localhost: 127.0.0.1)
    std::string upstream;
    bool enabled = true;
};

class ProxyTable {
  public:
    // The refuse rule that takes a proxy down.
    static constexpr const char* kDisabledRule = "toxiproxy-disabled";

    ProxyTable(Hooks hooks, config::ToxiproxyConfig cfg);

    // Forgets proxies that went away behind the API's back (a reload). Before each request.
    void sync();
    std::vector<ProxyServer*> all() { return hooks_.servers(); }
    // The proxy clients call `name` (their name, or a tcpfault name not taken by another), or
    // null.
    ProxyServer* find(const std::string& name);

    // What clients see of a proxy.
    std::string name_of(const ProxyServer& p) const;
    // The real address while enabled; while down, the address as given until the proxy first
    // started (as Toxiproxy, which resolves it only when it listens), then the last real one.
    std::string listen_of(const ProxyServer& p) const;
    std::string upstream_of(const ProxyServer& p) const;
    static bool enabled(const ProxyServer& p);
    // The toxics of p whose rules still exist (a reload or the admin API may have removed
    // them), in creation order.
    std::vector<Toxic>& toxics(const ProxyServer& p);
    bool from_config(const ProxyServer& p) const { return !p.created_at_runtime(); }

    // Populate leaves a proxy alone when it already has these addresses: the same text, or
    // the same host with the same port (or port 0, "any").
    bool same_addresses(const ProxyServer& p, const ProxySpec& spec) const;

    // 403 when p comes from the config file and toxiproxy.manage_config_proxies is off.
    Error may_change(const ProxyServer& p) const;
    // A new proxy with these toxics (checked; their rule names are chosen here). *out: the
    // proxy. 409 if the name is taken, 400/403/500 for addresses, 500 if it cannot listen.
    Error create(const ProxySpec& spec, std::vector<Toxic> toxics, ProxyServer** out);
    // Toxiproxy's update: a new listen or upstream closes every connection and restarts the
    // proxy there (a new listen re-binds: *p is replaced); then `enabled` as asked.
    Error update(ProxyServer*& p, const ProxySpec& want);
    Error set_enabled(ProxyServer& p, bool on);
    // Closes p's open connections (FIN, as Toxiproxy's Close) and removes it.
    void remove(ProxyServer& p);
    // 409 if a toxic has that name. t.rule is chosen here.
    Error add_toxic(ProxyServer& p, Toxic t);
    // Replaces the toxic named t.name. New connections get the new values; open ones keep
    // what the old values gave them.
    Error update_toxic(ProxyServer& p, const Toxic& t);
    Error remove_toxic(ProxyServer& p, const std::string& name);
    // POST /reset: every proxy the API may change is enabled and loses its toxics.
    Error reset();

    // A name valid for tcpfault ([a-z0-9_-]+, bounded) made from any Toxiproxy name.
    static std::string sanitize(const std::string& name);

  private:
    struct Entry {
        std::string name;      // the name Toxiproxy clients use
        std::string listen;    // shown while down (see listen_of)
        std::string upstream;  // as given
        std::vector<Toxic> toxics;
    };

    // Listen and upstream texts read the way Toxiproxy would, then the allowlists.
    Error parse_upstream(const std::string& text, config::HostPort* out) const;
    // 400 when `cfg` (replacing the proxy named `replacing`, if any) would connect to itself,
    // directly or through other proxies: each connection would open another.
    Error loop_check(const config::Proxy& cfg, const std::string& replacing) const;
    Error parse_listen(const std::string& text, config::HostPort* out) const;
    // A tcpfault proxy name for a new Toxiproxy proxy, unused by any live proxy.
    std::string unique_proxy_name(const std::string& toxi_name) const;
    // Names t's rules in c, unique there.
    static void name_rules(const config::Proxy& c, Toxic& t);
    // Starts cfg (its toxics' rules included) as the proxy clients call `entry.name`.
    Error start(config::Proxy cfg, bool on, const std::string& given_listen, Entry entry,
                ProxyServer** out);

    Hooks hooks_;
    config::ToxiproxyConfig cfg_;
    std::map<std::string, Entry> state_;  // by tcpfault proxy name
};

}  // namespace tcpfault::toxiproxy

// Toxiproxy's toxics and the tcpfault rules each one becomes. One function pair per toxic
// type in toxiproxy_toxics.cpp: `check_<type>` refuses values no network produces (Toxiproxy
// takes any value and misbehaves on some), `<type>_rules` builds the rules. Attributes are
// Toxiproxy's units: milliseconds, except slicer's delay (microseconds); bandwidth's rate is
// KB/s of 1000 bytes.
//
// Every rule of a toxic has match.existing (toxics act on connections already open) and, when
// toxicity < 1, match.probability = toxicity (decided once per connection, as Toxiproxy does
// per link). `stream` gives the direction: upstream = client->server, downstream (default) =
// server->client.
//
//   latency    {latency, jitter}           latency {delay, jitter}
//   bandwidth  {rate}                      bandwidth {rate: rate*1000 B/s}; rate 0: stall
//                                          (hold, forever), as Toxiproxy then passes nothing
//   slow_close {delay}                     slow_close {delay}
//   timeout    {timeout}                   stall {mode: drop, forever} letting the stream's own
//                                          close through, plus (timeout > 0) idle {timeout,
//                                          action: close}: every chunk restarts the countdown
//   reset_peer {timeout}                   reset {to: both, flush: false} when the stream's
//                                          first data comes (held, not passed on), after timeout
//   slicer     {average_size,              slice {size: max(1,avg-var)-(avg+var), delay (µs)}
//               size_variation, delay}
//   limit_data {bytes}                     close {to: both} after exactly `bytes` of the stream,
//                                          counted from its first data after the toxic came
//   noop       {}                          latency 0 (a rule that does nothing)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api/toxiproxy_json.hpp"
#include "config/config.hpp"

namespace tcpfault::toxiproxy {

struct Toxic {
    std::string name;    // as the client gave it (or `<type>_<stream>`)
    std::string type;    // latency, bandwidth, ...
    std::string stream;  // as given ("downstream", "Upstream", ...)
    bool upstream = false;
    double toxicity = 1.0;
    // Toxiproxy's attribute fields of this type, in its order, with their values.
    std::vector<std::pair<std::string, int64_t>> attributes;
    // The tcpfault rule it became; a toxic that needs more rules names them rule + "-" + suffix.
    std::string rule;

    int64_t attr(std::string_view field) const;
    config::Direction direction() const {
        return upstream ? config::Direction::upstream : config::Direction::downstream;
    }
};

struct ToxicType {
    const char* name;
    std::vector<const char*> attributes;  // in Toxiproxy's order
    // "" or why the attribute values are refused.
    std::string (*check)(const Toxic&);
    // The rules, the first named "" and any further one by a suffix ("idle"): to_rules names
    // them after the toxic and sets their match.
    std::vector<config::Rule> (*rules)(const Toxic&);
};

// The type by Toxiproxy's name, or null.
const ToxicType* toxic_type(std::string_view name);

// Decodes a POST /proxies/{p}/toxics body (or a toxic of a -config file) into `t`, in
// Toxiproxy's order of checks: "" or the reason (every one a 400). The name defaults to
// `<type>_<stream>`; `t.rule` is left empty. Attribute values are not checked here.
std::string decode_toxic(const Json& body, Toxic& t);
// Applies an `attributes` object (or null: nothing) onto t's attributes: "" or the reason.
std::string decode_attributes(const Json* attrs, Toxic& t);
// "" or why t's values are refused (the type's check).
std::string check_toxic(const Toxic& t);

// The rules `t` becomes: t.rule, then t.rule + "-" + each extra suffix.
std::vector<config::Rule> to_rules(const Toxic& t);
std::vector<std::string> rule_names(const Toxic& t);
// Longest base rule name: leaves room for "-<suffix>" and "-<n>" within the rule name limit.
inline constexpr size_t kMaxRuleBase = 96;

// Toxiproxy's JSON for a toxic: {"attributes":{...},"name","type","stream","toxicity"}.
Json toxic_json(const Toxic& t);

}  // namespace tcpfault::toxiproxy

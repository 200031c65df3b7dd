// Rules (docs/config.md, docs/triggers.md): name, match, when and the cross-field rules tying them
// to the fault.
#include <re2/re2.h>

#include "config/env_expand.hpp"
#include "config/parse_internal.hpp"
#include "config/units.hpp"
#include "faults/fault_list.hpp"

namespace tcpfault::config::detail {

namespace {

const std::vector<std::string_view> kRuleKeys = {"name", "enabled", "match", "when", "fault"};
const std::vector<std::string_view> kMatchKeys = {
    "clients", "channel", "connections", "probability", "schedule", "limit", "existing"};
const std::vector<std::string_view> kConnectionsKeys = {"every", "nth", "first"};
const std::vector<std::string_view> kScheduleKeys = {"every", "for", "offset"};
const std::vector<std::string_view> kWhenKeys = {"direction",   "data",  "line",
                                                 "after_bytes", "after", "next_byte"};

// RE2 matches in linear time whatever the pattern; the bound keeps compiled programs small.
constexpr size_t kMaxRegexLength = 1000;
constexpr int64_t kMaxRegexProgramMemory = 1 << 20;

// Whether this process can drop packets (set_packet_filter); unknown until the process says.
struct PacketFilterState {
    bool known = false;
    bool available = false;
    std::string why_not;
};
PacketFilterState& packet_filter_state() {
    static PacketFilterState s;
    return s;
}

const faults::FaultKind& kind(size_t type) {
    return faults::fault_kinds()[type];
}
bool acts_on_proxy(size_t type) {
    return kind(type).scope == faults::Scope::proxy;
}
// refuse and restart act before any connection exists; cap counts connections at accept.
bool acts_on_listener(size_t type) {
    return acts_on_proxy(type) && kind(type).name != faults::CapFault::kName;
}

std::vector<Cidr> read_clients(Reader& r, const Entry& e) {
    std::vector<Cidr> out;
    static constexpr std::string_view kExpected = "expected a CIDR like 10.0.0.0/8 or ::1/128";
    auto one = [&](const YAML::Node& n) {
        r.visit();
        // Positions are computed only for errors: lists can be long.
        auto where = [&] {
            Position p = r.pos(n);
            return p.line > 0 ? p : e.value_pos;
        };
        if (!n.IsScalar()) {
            r.error(where(), e.label + ": " + std::string(kExpected) + ", found " + describe(n));
            return;
        }
        if (auto c = parse_cidr(n.Scalar())) {
            out.push_back(*c);
        } else {
            r.error(where(), e.label + ": " + c.error);
        }
    };
    if (e.is_null()) return out;
    if (e.value.IsScalar()) {
        // A single network is common enough to not demand a list.
        one(e.value);
        return out;
    }
    if (!e.value.IsSequence()) {
        r.error(e.value_pos, e.label + ": expected a list of CIDRs, found " + describe(e.value));
        return out;
    }
    for (const auto& item : e.value) one(item);
    return out;
}

ConnectionsMatch read_connections(Reader& r, const Entry& e) {
    ConnectionsMatch out;
    auto f = Fields::read(
        r, e.value, e.value_pos,
        {"match.connections", "in match.connections", "match.connections.", kConnectionsKeys});
    if (!f) return out;
    if (f->entries().empty() && e.value.size() > 0) return out;  // its keys were already reported
    if (f->entries().size() != 1) {
        r.error(f->pos(), "match.connections needs exactly one of: every, nth, first");
        return out;
    }
    const Entry& only = f->entries().front();
    if (auto n = get_uint(r, only, 1, UINT64_MAX)) {
        out.n = *n;
        out.kind = only.key == "every" ? ConnectionsMatch::Kind::every
                   : only.key == "nth" ? ConnectionsMatch::Kind::nth
                                       : ConnectionsMatch::Kind::first;
    }
    return out;
}

std::optional<Schedule> read_schedule(Reader& r, const Entry& e) {
    auto f =
        Fields::read(r, e.value, e.value_pos,
                     {"match.schedule", "in match.schedule", "match.schedule.", kScheduleKeys});
    if (!f) return std::nullopt;
    Schedule s;
    // Without `every` the schedule is a single window [offset, offset + for).
    f->require(r, "for");
    const Entry* every = f->get("every");
    const Entry* for_ = f->get("for");
    std::optional<Duration> every_v, for_v;
    if (every != nullptr) every_v = get_duration(r, *every, true);
    if (for_ != nullptr) for_v = get_duration(r, *for_, true);
    if (const Entry* off = f->get("offset")) {
        if (auto v = get_duration(r, *off, false)) s.offset = *v;
    }
    if (every_v) s.every = *every_v;
    if (for_v) s.for_ = *for_v;
    if (every_v && for_v && *for_v > *every_v) {
        r.error(for_->value_pos, "match.schedule.for (" + format_duration(*for_v) +
                                     ") must not be longer than match.schedule.every (" +
                                     format_duration(*every_v) + ")");
    }
    return s;
}

Match read_match(Reader& r, const Entry& me, std::optional<size_t> type,
                 std::optional<Protocol> protocol) {
    Match m;
    auto f = Fields::read(r, me.value, me.value_pos, {"match", "in match", "match.", kMatchKeys});
    if (!f) return m;
    // refuse/restart act before any connection exists, so connection conditions mean nothing.
    bool only_schedule_limit = type && acts_on_listener(*type);
    for (const Entry& e : f->entries()) {
        if (only_schedule_limit && e.key != "schedule" && e.key != "limit") {
            r.error(e.key_pos, e.label + " is not allowed for fault type " +
                                   quote(kind(*type).name) +
                                   " (it accepts only schedule and limit in match)");
            continue;
        }
        if (e.key == "clients") {
            m.clients = read_clients(r, e);
        } else if (e.key == "channel") {
            if (protocol && *protocol != Protocol::ftp) {
                r.error(e.key_pos, "match.channel is only valid with protocol: ftp");
                continue;
            }
            if (auto v = get_enum<Channel>(
                    r, e, {{"control", Channel::control}, {"data", Channel::data}}))
                m.channel = *v;
        } else if (e.key == "connections") {
            m.connections = read_connections(r, e);
        } else if (e.key == "probability") {
            m.probability = get_unit_interval(r, e);
        } else if (e.key == "schedule") {
            m.schedule = read_schedule(r, e);
        } else if (e.key == "limit") {
            m.limit = get_uint(r, e, 1, UINT64_MAX);
        } else if (e.key == "existing") {
            if (auto v = get_bool(r, e)) m.existing = *v;
        }
    }
    return m;
}

std::optional<When> read_when(Reader& r, const Entry& we) {
    auto f = Fields::read(r, we.value, we.value_pos, {"when", "in when", "when.", kWhenKeys});
    if (!f) return std::nullopt;
    When w;
    bool any_condition = false;
    for (const Entry& e : f->entries()) {
        if (e.key == "direction") {
            if (auto v = get_enum<Direction>(r, e,
                                             {{"upstream", Direction::upstream},
                                              {"downstream", Direction::downstream},
                                              {"both", Direction::both},
                                              {"any", Direction::both}}))
                w.direction = *v;
        } else if (e.key == "data") {
            w.data = get_string(r, e, false);
            any_condition = true;
        } else if (e.key == "line") {
            any_condition = true;
            auto s = get_string(r, e, false);
            if (!s) continue;
            if (s->size() > kMaxRegexLength) {
                r.error(e.value_pos, "when.line: regular expression too long (at most " +
                                         std::to_string(kMaxRegexLength) + " characters)");
                continue;
            }
            RE2::Options opts;
            opts.set_log_errors(false);
            opts.set_max_mem(kMaxRegexProgramMemory);
            auto re = std::make_shared<const RE2>(*s, opts);
            if (!re->ok()) {
                r.error(e.value_pos, "when.line: invalid regular expression " + quote(*s) + ": " +
                                         re->error() + " (RE2 syntax)");
                continue;
            }
            w.line_re = std::move(re);
            w.line = std::move(s);
        } else if (e.key == "after_bytes") {
            w.after_bytes = get_size(r, e, 0, UINT64_MAX);
            any_condition = true;
        } else if (e.key == "after") {
            w.after = get_duration(r, e, false);
            any_condition = true;
        } else if (e.key == "next_byte") {
            if (auto v = get_bool(r, e)) w.next_byte = *v;
            any_condition = any_condition || w.next_byte;
        }
    }
    // 0 bytes from the start is "at accept", which a rule without `when` already says; with a
    // match or a time it is the hold point right there.
    if (w.after_bytes == 0u && !w.data && !w.line && !w.after && !w.next_byte) {
        r.error(f->get("after_bytes")->value_pos,
                "when.after_bytes: 0 on its own fires at accept (leave `when` out for that); to "
                "fire when the first byte arrives, without forwarding it, use next_byte: true");
    }
    // Both would need their own "from the match" origin; docs/triggers.md offers them as
    // alternatives.
    if (f->get("data") != nullptr && f->get("line") != nullptr) {
        r.error(f->get("line")->key_pos, "when.data and when.line cannot be combined (use one)");
    }
    // No condition: the fault starts at accept, exactly as without `when`.
    if (!any_condition) return std::nullopt;
    return w;
}

}  // namespace

RuleResultInternal read_rule(Reader& r, const YAML::Node& node, Position where,
                             std::optional<Protocol> protocol) {
    RuleResultInternal out;
    out.pos = where;
    size_t before = r.error_count();
    auto f = Fields::read(r, node, where, {"rule", "in rule", "", kRuleKeys});
    if (!f) return out;
    out.pos = f->pos();

    Rule rule;
    rule.pos = f->pos();
    f->require(r, "name");
    f->require(r, "fault");
    if (const Entry* e = f->get("name")) {
        out.name = get_name(r, *e);
        out.name_pos = e->value_pos;
        if (out.name) rule.name = *out.name;
    }
    if (const Entry* e = f->get("enabled")) {
        if (auto v = get_bool(r, *e)) rule.enabled = *v;
    }
    FaultResult fault;
    if (const Entry* e = f->get("fault")) fault = read_fault(r, *e);
    if (const Entry* e = f->get("match")) rule.match = read_match(r, *e, fault.type, protocol);
    if (const Entry* e = f->get("when")) {
        if (fault.type && acts_on_proxy(*fault.type)) {
            r.error(e->key_pos, "when is not allowed for fault type " +
                                    quote(kind(*fault.type).name) +
                                    " (it acts on the proxy, not on bytes)");
        } else {
            rule.when = read_when(r, *e);
        }
    }
    const PacketFilterState& pf = packet_filter_state();
    if (fault.spec && faults::drops_packets(*fault.spec) && pf.known && !pf.available) {
        r.error(
            f->get("fault")->value_pos,
            "rule " + quote(out.name.value_or("")) + ": fault type " +
                quote(kind(*fault.type).name) +
                " drops packets with nftables and needs CAP_NET_ADMIN, but this process "
                "cannot drop packets (" +
                pf.why_not +
                "); run tcpfault with CAP_NET_ADMIN (docker run --cap-add NET_ADMIN; Kubernetes "
                "securityContext.capabilities.add: [NET_ADMIN]) or remove the rule");
    }
    if (r.error_count() == before && fault.spec) {
        rule.fault = std::move(*fault.spec);
        out.rule = std::move(rule);
    }
    return out;
}

}  // namespace tcpfault::config::detail

namespace tcpfault::config {

void set_packet_filter(bool available, std::string why_not) {
    detail::PacketFilterState& s = detail::packet_filter_state();
    s.known = true;
    s.available = available;
    s.why_not = std::move(why_not);
}

RuleResult parse_rule(const std::string& text, const std::string& source_name) {
    RuleResult res;
    if (text.size() > detail::kMaxInputBytes) {
        res.errors.push_back({source_name, Position{}, "rule too large (the limit is 4 MiB)"});
        return res;
    }
    LineIndex index(text);
    detail::Reader r(source_name,
                     [&](const YAML::Mark& m) { return index.at(static_cast<size_t>(m.pos)); });
    std::optional<Rule> rule;
    try {
        if (auto doc = detail::parse_document(r, text)) {
            if (!doc->IsMap()) {
                Position p = r.pos(*doc);
                r.error(p.line > 0 ? p : Position{1, 1},
                        "expected a mapping (one rule), found " + detail::describe(*doc));
            } else {
                rule = detail::read_rule(r, *doc, Position{1, 1}, std::nullopt).rule;
            }
        }
    } catch (const detail::Abort&) {
    }
    res.errors = r.take_errors();
    if (res.errors.empty()) res.rule = std::move(rule);
    return res;
}

FaultBodyResult parse_fault_body(const std::string& text, const std::string& source_name) {
    FaultBodyResult res;
    if (text.size() > detail::kMaxInputBytes) {
        res.errors.push_back({source_name, Position{}, "fault too large (the limit is 4 MiB)"});
        return res;
    }
    LineIndex index(text);
    detail::Reader r(source_name,
                     [&](const YAML::Mark& m) { return index.at(static_cast<size_t>(m.pos)); });
    std::optional<FaultSpec> spec;
    try {
        if (auto doc = detail::parse_document(r, text)) {
            Position p = r.pos(*doc);
            if (p.line == 0) p = Position{1, 1};
            if (!doc->IsMap()) {
                r.error(p, "expected a mapping (one fault, like {\"type\": \"reset\"}), found " +
                               detail::describe(*doc));
            } else {
                // The body is what a rule holds under `fault:`, so messages name it the same.
                detail::Entry e;
                e.key = "fault";
                e.label = "fault";
                e.value = *doc;
                e.key_pos = p;
                e.value_pos = p;
                spec = detail::read_fault(r, e).spec;
            }
        }
    } catch (const detail::Abort&) {
    }
    res.errors = r.take_errors();
    if (res.errors.empty()) res.fault = std::move(spec);
    return res;
}

}  // namespace tcpfault::config

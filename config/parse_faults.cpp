// `fault:` mappings: the type decides which parameters exist (SPEC section 3, fault table).
#include <climits>

#include "config/parse_internal.hpp"
#include "config/units.hpp"

namespace tcpfault::config::detail {

const std::vector<std::string_view> kFaultTypes = {
    "reset", "close", "stall",  "latency", "bandwidth", "slice",
    "clamp", "cap",   "refuse", "idle",    "restart",   "slow_close",
};

namespace {

// Parameter names per type, in kFaultTypes order; also the order listed in messages.
const std::vector<std::vector<std::string_view>> kFaultParams = {
    {"to", "flush"},
    {"to", "then"},
    {"direction", "duration", "mode", "then"},
    {"delay", "jitter", "direction"},
    {"rate", "direction"},
    {"size", "delay", "direction"},
    {"side", "sndbuf", "rcvbuf", "window", "mss", "read_size"},
    {"max", "over", "banner"},
    {},
    {"timeout", "action"},
    {"downtime"},
    {"delay", "direction"},
};

const EnumTable<Target> kTargets = {
    {"client", Target::client}, {"server", Target::server}, {"both", Target::both}};
const EnumTable<Direction> kDirections = {{"upstream", Direction::upstream},
                                          {"downstream", Direction::downstream},
                                          {"both", Direction::both}};

// Socket options take an int.
constexpr uint64_t kMaxSockopt = INT_MAX;

template <typename T, typename Get>
void set_if(const Fields& f, std::string_view key, T& out, Get get) {
    if (const Entry* e = f.get(key)) {
        if (auto v = get(*e)) out = *v;
    }
}

FaultSpec read_params(Reader& r, const Fields& f, size_t type) {
    auto target = [&](const Entry& e) { return get_enum(r, e, kTargets); };
    auto direction = [&](const Entry& e) { return get_enum(r, e, kDirections); };
    auto duration = [&](const Entry& e) { return get_duration(r, e, false); };
    auto positive_duration = [&](const Entry& e) { return get_duration(r, e, true); };
    switch (type) {
        case 0: {
            ResetFault x;
            set_if(f, "to", x.to, target);
            set_if(f, "flush", x.flush, [&](const Entry& e) { return get_bool(r, e); });
            return x;
        }
        case 1: {
            CloseFault x;
            set_if(f, "to", x.to, target);
            set_if(f, "then", x.then, [&](const Entry& e) {
                return get_enum<CloseFault::Then>(
                    r, e,
                    {{"reset", CloseFault::Then::reset}, {"discard", CloseFault::Then::discard}});
            });
            return x;
        }
        case 2: {
            StallFault x;
            set_if(f, "direction", x.direction, direction);
            set_if(f, "duration", x.duration, positive_duration);
            set_if(f, "mode", x.mode, [&](const Entry& e) {
                return get_enum<StallFault::Mode>(
                    r, e, {{"hold", StallFault::Mode::hold}, {"drop", StallFault::Mode::drop}});
            });
            set_if(f, "then", x.then, [&](const Entry& e) {
                return get_enum<StallFault::Then>(r, e,
                                                  {{"resume", StallFault::Then::resume},
                                                   {"reset", StallFault::Then::reset},
                                                   {"close", StallFault::Then::close}});
            });
            // A stall without a duration never ends, so nothing can follow it.
            const Entry* then = f.get("then");
            if (then != nullptr && x.then != StallFault::Then::resume &&
                f.get("duration") == nullptr) {
                r.error(then->value_pos, "fault type \"stall\" with then: " + then->value.Scalar() +
                                             " requires a duration");
            }
            return x;
        }
        case 3: {
            LatencyFault x;
            f.require(r, "delay");
            set_if(f, "delay", x.delay, duration);
            set_if(f, "jitter", x.jitter, duration);
            set_if(f, "direction", x.direction, direction);
            return x;
        }
        case 4: {
            BandwidthFault x;
            f.require(r, "rate");
            set_if(f, "rate", x.rate, [&](const Entry& e) { return get_rate(r, e); });
            set_if(f, "direction", x.direction, direction);
            return x;
        }
        case 5: {
            SliceFault x;
            f.require(r, "size");
            if (const Entry* e = f.get("size")) {
                if (auto s = get_scalar(r, *e, "expected a slice size like 1 or 1-16")) {
                    if (auto v = parse_slice_size(*s)) {
                        x.min_size = v->min;
                        x.max_size = v->max;
                    } else {
                        r.error(e->value_pos, e->label + ": " + v.error);
                    }
                }
            }
            set_if(f, "delay", x.delay, duration);
            set_if(f, "direction", x.direction, direction);
            return x;
        }
        case 6: {
            ClampFault x;
            set_if(f, "side", x.side, target);
            auto sockopt = [&](const Entry& e) { return get_size(r, e, 1, kMaxSockopt); };
            set_if(f, "sndbuf", x.sndbuf, sockopt);
            set_if(f, "rcvbuf", x.rcvbuf, sockopt);
            set_if(f, "window", x.window, sockopt);
            set_if(f, "mss", x.mss, sockopt);
            set_if(f, "read_size", x.read_size, sockopt);
            bool any = false;
            for (auto k : {"sndbuf", "rcvbuf", "window", "mss", "read_size"})
                any |= f.get(k) != nullptr;
            if (!any) {
                r.error(f.pos(),
                        "fault type \"clamp\" needs at least one of: sndbuf, rcvbuf, window, mss, "
                        "read_size");
            }
            return x;
        }
        case 7: {
            CapFault x;
            f.require(r, "max");
            set_if(f, "max", x.max, [&](const Entry& e) { return get_uint(r, e, 1, UINT32_MAX); });
            set_if(f, "over", x.over, [&](const Entry& e) {
                return get_enum<CapFault::Over>(r, e,
                                                {{"reset", CapFault::Over::reset},
                                                 {"close", CapFault::Over::close},
                                                 {"banner", CapFault::Over::banner},
                                                 {"hold", CapFault::Over::hold}});
            });
            set_if(f, "banner", x.banner, [&](const Entry& e) { return get_string(r, e, false); });
            const Entry* over = f.get("over");
            const Entry* banner = f.get("banner");
            bool over_banner =
                over != nullptr && over->value.IsScalar() && over->value.Scalar() == "banner";
            if (over_banner && banner == nullptr) {
                f.require(r, "banner", "needed with over: banner");
            } else if (!over_banner && banner != nullptr) {
                std::string was =
                    over != nullptr && over->value.IsScalar() ? over->value.Scalar() : "reset";
                r.error(banner->key_pos,
                        "fault.banner is only used with over: banner (over is \"" + was + "\")");
            }
            return x;
        }
        case 8:
            return RefuseFault{};
        case 9: {
            IdleFault x;
            f.require(r, "timeout");
            set_if(f, "timeout", x.timeout, positive_duration);
            set_if(f, "action", x.action, [&](const Entry& e) {
                return get_enum<IdleFault::Action>(r, e,
                                                   {{"reset", IdleFault::Action::reset},
                                                    {"drop", IdleFault::Action::drop},
                                                    {"close", IdleFault::Action::close}});
            });
            return x;
        }
        case 10: {
            RestartFault x;
            set_if(f, "downtime", x.downtime, duration);
            return x;
        }
        default: {
            SlowCloseFault x;
            f.require(r, "delay");
            set_if(f, "delay", x.delay, positive_duration);
            set_if(f, "direction", x.direction, direction);
            return x;
        }
    }
}

}  // namespace

FaultResult read_fault(Reader& r, const Entry& fe) {
    FaultResult out;
    r.visit();
    const YAML::Node& n = fe.value;
    if (!n.IsMap() && !n.IsNull()) {
        r.error(fe.value_pos, "fault: expected a mapping, found " + describe(n));
        return out;
    }
    Position map_pos = fe.value_pos;
    // The type decides which other keys are valid, so it is looked up before anything else.
    std::optional<Entry> type_entry;
    if (n.IsMap()) {
        for (auto it = n.begin(); it != n.end(); ++it) {
            r.visit();
            if (it->first.IsScalar() && it->first.Scalar() == "type") {
                Entry e;
                e.key = "type";
                e.label = "fault.type";
                e.key_node = it->first;
                e.value = it->second;
                e.key_pos = r.pos(it->first);
                Position vp = r.pos(it->second);
                e.value_pos = (e.value.IsNull() || vp.line == 0) ? e.key_pos : vp;
                type_entry = std::move(e);
                break;
            }
        }
    }
    if (!type_entry) {
        r.error(map_pos, "fault is missing required key \"type\"");
        return out;
    }
    auto name =
        get_scalar(r, *type_entry, "expected a fault type (one of: " + join(kFaultTypes) + ")");
    if (!name) return out;
    for (size_t i = 0; i < kFaultTypes.size(); ++i) {
        if (kFaultTypes[i] == *name) out.type = i;
    }
    if (!out.type) {
        r.error(type_entry->value_pos, "unknown fault type " + quote(*name) +
                                           " (expected one of: " + join(kFaultTypes) + ")");
        return out;
    }
    std::string quoted_type = quote(*name);
    size_t before = r.error_count();
    auto fields = Fields::read(r, n, map_pos,
                               Fields::Spec{"fault type " + quoted_type,
                                            "for fault type " + quoted_type,
                                            "fault.",
                                            kFaultParams[*out.type],
                                            {"type"}});
    if (!fields) return out;
    FaultSpec spec = read_params(r, *fields, *out.type);
    if (r.error_count() == before) out.spec = std::move(spec);
    return out;
}

}  // namespace tcpfault::config::detail

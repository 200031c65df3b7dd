// `fault:` mappings: the type decides which parameters exist; each fault kind parses its own
// (faults/<name>.cpp), this file finds the type and checks the keys against the kind's list.
#include "config/fault_params.hpp"
#include "config/parse_internal.hpp"
#include "faults/fault_list.hpp"

namespace tcpfault::config::detail {

namespace {
std::vector<std::string_view> fault_type_names() {
    std::vector<std::string_view> out;
    for (const auto& k : faults::fault_kinds()) out.push_back(k.name);
    return out;
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
    const std::vector<std::string_view> types = fault_type_names();
    auto name = get_scalar(r, *type_entry, "expected a fault type (one of: " + join(types) + ")");
    if (!name) return out;
    const auto& kinds = faults::fault_kinds();
    for (size_t i = 0; i < kinds.size(); ++i) {
        if (kinds[i].name == *name) out.type = i;
    }
    if (!out.type) {
        r.error(type_entry->value_pos,
                "unknown fault type " + quote(*name) + " (expected one of: " + join(types) + ")");
        return out;
    }
    std::string quoted_type = quote(*name);
    size_t before = r.error_count();
    auto fields = Fields::read(r, n, map_pos,
                               Fields::Spec{"fault type " + quoted_type,
                                            "for fault type " + quoted_type,
                                            "fault.",
                                            kinds[*out.type].params,
                                            {"type"}});
    if (!fields) return out;
    FaultParams params(r, *fields, quoted_type);
    auto spec = faults::parse_fault(kinds[*out.type].name, params);
    if (spec && r.error_count() == before) out.spec = std::move(*spec);
    return out;
}

}  // namespace tcpfault::config::detail

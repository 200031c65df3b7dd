// Internal to config/: the pieces of the loader shared between parse*.cpp files.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "config/reader.hpp"

namespace tcpfault::config::detail {

// Larger inputs are rejected before parsing: a config file is hand-written, never megabytes.
inline constexpr size_t kMaxInputBytes = 4 * 1024 * 1024;

struct FaultResult {
    // Index in faults::fault_kinds(), known as soon as `type` is valid, even if params are not.
    std::optional<size_t> type;
    std::optional<FaultSpec> spec;  // only when the whole fault is valid
};
FaultResult read_fault(Reader& r, const Entry& fault);

struct RuleResultInternal {
    std::optional<Rule> rule;  // only when the whole rule is valid
    std::optional<std::string> name;
    Position name_pos;
    Position pos;
};
// `protocol` is nullopt when the rule arrives on its own (admin API) and the proxy is unknown.
RuleResultInternal read_rule(Reader& r, const YAML::Node& node, Position where,
                             std::optional<Protocol> protocol);

// Parses one YAML document; syntax errors are reported and give nullopt. No document: a null node.
std::optional<YAML::Node> parse_document(Reader& r, const std::string& text);

std::string position_str(Position p);

}  // namespace tcpfault::config::detail

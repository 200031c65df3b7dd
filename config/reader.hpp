// Internal to config/: typed access to YAML nodes that turns every surprise into a positioned
// diagnostic and keeps going, so one run reports all the mistakes in a file.
#pragma once

#include <yaml-cpp/yaml.h>

#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.hpp"

namespace tcpfault::config::detail {

// Past these, more output helps nobody and more work only helps an attacker.
inline constexpr size_t kMaxErrors = 100;
inline constexpr size_t kMaxNodes = 1'000'000;

// Thrown when the error or node budget is used up; the loader catches it and returns what it has.
struct Abort {};

class Reader {
  public:
    using Locate = std::function<Position(const YAML::Mark&)>;
    Reader(std::string file, Locate locate) : file_(std::move(file)), locate_(std::move(locate)) {}

    Position pos(const YAML::Mark& m) const;
    Position pos(const YAML::Node& n) const { return pos(n.Mark()); }
    // Throws Abort once kMaxErrors errors are recorded.
    void error(Position p, std::string message);
    // Counts one visited node; aliases make the node graph larger than the text.
    void visit();
    // Sorted by position, so output reads top to bottom regardless of validation order.
    std::vector<Diagnostic> take_errors();
    // Valid but probably not what was meant: reported, never fatal.
    void warn(Position p, std::string message) {
        warnings_.push_back({file_, p, std::move(message)});
    }
    std::vector<Diagnostic> take_warnings() { return std::move(warnings_); }
    size_t error_count() const { return errors_.size(); }
    const std::string& file() const { return file_; }

  private:
    std::string file_;
    Locate locate_;
    std::vector<Diagnostic> errors_;
    std::vector<Diagnostic> warnings_;
    size_t visited_ = 0;
    bool truncated_ = false;
};

struct Entry {
    std::string key;
    std::string label;  // for messages: "match.limit", "listen", ...
    YAML::Node key_node;
    YAML::Node value;
    Position key_pos;
    Position value_pos;  // key_pos when the value is empty: yaml-cpp marks nulls at the next token
    bool is_null() const { return value.IsNull(); }
};

// `"text"`, with control characters escaped and long text shortened.
std::string quote(std::string_view s);
// "a mapping", "a sequence", "nothing", or the quoted scalar.
std::string describe(const YAML::Node& n);

// A mapping whose keys were checked against the keys its context accepts. Unknown and
// duplicate keys are reported (with a did-you-mean) and left out, never descended into.
class Fields {
  public:
    struct Spec {
        std::string what;            // "proxy", "match": used in "X is missing required key"
        std::string unknown_suffix;  // "in proxy", "for fault type \"reset\""
        std::string label_prefix;    // "match." -> labels like "match.limit"
        std::vector<std::string_view> keys;
        std::vector<std::string_view> hidden_keys = {};  // accepted but not listed in messages
    };

    // nullopt (reported) when `node` is neither a mapping nor empty. `where` positions an empty
    // mapping, which has no mark of its own.
    static std::optional<Fields> read(Reader& r, const YAML::Node& node, Position where,
                                      const Spec& spec);

    const Entry* get(std::string_view key) const;
    const std::vector<Entry>& entries() const { return entries_; }
    Position pos() const { return pos_; }
    const std::string& what() const { return what_; }
    // Reports `<what> is missing required key "<key>"` and returns false when absent.
    bool require(Reader& r, std::string_view key, std::string_view note = {}) const;

  private:
    std::vector<Entry> entries_;
    Position pos_;
    std::string what_;
};

// Edit-distance suggestion among `candidates`, or empty.
std::string suggest(std::string_view word, const std::vector<std::string_view>& candidates);
std::string join(const std::vector<std::string_view>& items);

// Typed getters: each reports its own error (positioned at the value) and returns nullopt.
std::optional<std::string> get_scalar(Reader& r, const Entry& e, std::string_view expected);
std::optional<bool> get_bool(Reader& r, const Entry& e);
std::optional<uint64_t> get_uint(Reader& r, const Entry& e, uint64_t min, uint64_t max);
std::optional<double> get_unit_interval(Reader& r, const Entry& e);
std::optional<Duration> get_duration(Reader& r, const Entry& e, bool positive);
std::optional<uint64_t> get_size(Reader& r, const Entry& e, uint64_t min, uint64_t max);
std::optional<uint64_t> get_rate(Reader& r, const Entry& e);
std::optional<HostPort> get_host_port(Reader& r, const Entry& e, bool allow_port_zero);
// Empty values give "" when `allow_empty`.
std::optional<std::string> get_string(Reader& r, const Entry& e, bool allow_empty);
// [a-z0-9_-]+, for proxy and rule names.
std::optional<std::string> get_name(Reader& r, const Entry& e);

template <typename E>
using EnumTable = std::initializer_list<std::pair<std::string_view, E>>;

std::optional<size_t> get_choice(Reader& r, const Entry& e,
                                 const std::vector<std::string_view>& names);

template <typename E>
std::optional<E> get_enum(Reader& r, const Entry& e, EnumTable<E> table) {
    std::vector<std::string_view> names;
    for (const auto& [name, value] : table) names.push_back(name);
    auto i = get_choice(r, e, names);
    if (!i) return std::nullopt;
    return (table.begin() + *i)->second;
}

}  // namespace tcpfault::config::detail

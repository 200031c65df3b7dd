// Positioned, typed access to YAML nodes for the config loader.
#include "config/reader.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <set>
#include <tuple>

#include "config/quote.hpp"
#include "config/units.hpp"

namespace tcpfault::config::detail {

namespace {

constexpr size_t kMaxNameLength = 128;
// A diagnostic longer than this is cut: values are quoted short (quote_value), so only a
// message that quotes text some other way can reach it.
constexpr size_t kMaxMessage = 1000;

char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

// Optimal string alignment distance: a transposition ("lsiten") counts as one edit.
size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) &&
                lower(a[i - 2]) == lower(b[j - 1]))
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.size()][b.size()];
}

}  // namespace

std::string quote(std::string_view s) {
    return quote_value(s);
}

Position Reader::pos(const YAML::Mark& m) const {
    if (m.pos < 0) return Position{};
    return locate_(m);
}

void Reader::error(Position p, std::string message) {
    if (message.size() > kMaxMessage) {
        size_t n = kMaxMessage;
        while (n > 0 && (static_cast<unsigned char>(message[n]) & 0xC0) == 0x80) --n;
        message = message.substr(0, n) + "... (message of " + std::to_string(message.size()) +
                  " bytes cut)";
    }
    errors_.push_back(Diagnostic{file_, p, std::move(message)});
    if (errors_.size() >= kMaxErrors) {
        truncated_ = true;
        throw Abort{};
    }
}

void Reader::visit() {
    if (++visited_ > kMaxNodes) {
        errors_.push_back(Diagnostic{file_, Position{},
                                     "configuration too complex (more than " +
                                         std::to_string(kMaxNodes) +
                                         " values, counting repeated aliases)"});
        throw Abort{};
    }
}

std::vector<Diagnostic> Reader::take_errors() {
    std::stable_sort(errors_.begin(), errors_.end(), [](const Diagnostic& a, const Diagnostic& b) {
        if (a.pos.line != b.pos.line) return a.pos.line < b.pos.line;
        return a.pos.col < b.pos.col;
    });
    // Aliased nodes are validated once per reference and would repeat the same error.
    std::set<std::tuple<int, int, std::string>> seen;
    std::vector<Diagnostic> unique;
    for (auto& d : errors_) {
        if (seen.emplace(d.pos.line, d.pos.col, d.message).second) unique.push_back(std::move(d));
    }
    errors_ = std::move(unique);
    if (truncated_) {
        errors_.push_back(Diagnostic{
            file_, Position{}, "too many errors; stopped after " + std::to_string(kMaxErrors)});
    }
    return std::move(errors_);
}

std::string describe(const YAML::Node& n) {
    switch (n.Type()) {
        case YAML::NodeType::Map:
            return "a mapping";
        case YAML::NodeType::Sequence:
            return "a sequence";
        case YAML::NodeType::Scalar:
            return quote(n.Scalar());
        default:
            return "nothing";
    }
}

std::string join(const std::vector<std::string_view>& items) {
    std::string out;
    for (auto it : items) {
        if (!out.empty()) out += ", ";
        out += it;
    }
    return out;
}

std::string suggest(std::string_view word, const std::vector<std::string_view>& candidates) {
    // Quadratic in the word: a megabyte-long key gets no suggestion rather than a stall.
    if (word.size() > 64) return {};
    std::string_view best;
    size_t best_d = 3;
    for (auto c : candidates) {
        size_t d = edit_distance(word, c);
        // Short words are within 2 edits of everything; demand that half of the word survives.
        if (d < best_d && d * 2 <= std::max(word.size(), c.size()) && d <= word.size() / 2 + 1) {
            best = c;
            best_d = d;
        }
    }
    return std::string(best);
}

std::optional<Fields> Fields::read(Reader& r, const YAML::Node& node, Position where,
                                   const Spec& spec) {
    r.visit();
    Fields f;
    f.what_ = spec.what;
    f.pos_ = where;
    if (node.IsNull()) return f;
    if (!node.IsMap()) {
        Position p = r.pos(node);
        r.error(p.line > 0 ? p : where,
                spec.what + ": expected a mapping, found " + describe(node));
        return std::nullopt;
    }
    if (Position p = r.pos(node); p.line > 0) f.pos_ = p;
    std::vector<std::string_view> accepted = spec.keys;
    accepted.insert(accepted.end(), spec.hidden_keys.begin(), spec.hidden_keys.end());
    for (auto it = node.begin(); it != node.end(); ++it) {
        r.visit();
        // The iterator hands out a temporary pair: copy the (cheap, shared) node handles.
        YAML::Node k = it->first;
        YAML::Node v = it->second;
        Position kp = r.pos(k);
        if (!k.IsScalar()) {
            r.error(kp.line > 0 ? kp : f.pos_,
                    spec.what + ": keys must be plain strings, found " + describe(k));
            continue;
        }
        const std::string& key = k.Scalar();
        if (std::find(accepted.begin(), accepted.end(), key) == accepted.end()) {
            std::string m = "unknown key " + quote(key) + " " + spec.unknown_suffix;
            if (spec.keys.empty()) {
                m += " (it takes no parameters)";
            } else {
                m += " (expected one of: " + join(spec.keys) + ")";
            }
            if (auto s = suggest(key, spec.keys); !s.empty())
                m += "; did you mean " + quote(s) + "?";
            r.error(kp, std::move(m));
            continue;
        }
        if (const Entry* first = f.get(key)) {
            r.error(kp, "duplicate key " + quote(key) + " (first defined at " +
                            std::to_string(first->key_pos.line) + ":" +
                            std::to_string(first->key_pos.col) + ")");
            continue;
        }
        Entry e;
        e.key = key;
        e.label = spec.label_prefix + key;
        e.key_node = k;
        e.value = v;
        e.key_pos = kp;
        Position vp = r.pos(e.value);
        e.value_pos = (e.value.IsNull() || vp.line == 0) ? kp : vp;
        f.entries_.push_back(std::move(e));
    }
    return f;
}

const Entry* Fields::get(std::string_view key) const {
    for (const auto& e : entries_) {
        if (e.key == key) return &e;
    }
    return nullptr;
}

bool Fields::require(Reader& r, std::string_view key, std::string_view note) const {
    if (get(key) != nullptr) return true;
    std::string m = what_ + " is missing required key " + quote(key);
    if (!note.empty()) {
        m += " (";
        m += note;
        m += ")";
    }
    r.error(pos_, std::move(m));
    return false;
}

std::optional<std::string> get_scalar(Reader& r, const Entry& e, std::string_view expected) {
    r.visit();
    if (e.value.IsScalar()) return e.value.Scalar();
    r.error(e.value_pos, e.label + ": " + std::string(expected) + ", found " + describe(e.value));
    return std::nullopt;
}

std::optional<bool> get_bool(Reader& r, const Entry& e) {
    static constexpr std::string_view kExpected = "expected a boolean (true/false)";
    auto s = get_scalar(r, e, kExpected);
    if (!s) return std::nullopt;
    // YAML 1.2 core schema only: `yes`/`on` are YAML 1.1 and read differently elsewhere.
    if (*s == "true" || *s == "True" || *s == "TRUE") return true;
    if (*s == "false" || *s == "False" || *s == "FALSE") return false;
    r.error(e.value_pos, e.label + ": " + std::string(kExpected) + ", found " + quote(*s));
    return std::nullopt;
}

std::optional<uint64_t> get_uint(Reader& r, const Entry& e, uint64_t min, uint64_t max) {
    auto s = get_scalar(r, e, "expected an integer");
    if (!s) return std::nullopt;
    const std::string& t = *s;
    bool negative = t.size() > 1 && t[0] == '-' && std::all_of(t.begin() + 1, t.end(), [](char c) {
                        return c >= '0' && c <= '9';
                    });
    if (negative) {
        r.error(e.value_pos,
                e.label + ": must be at least " + std::to_string(min) + ", found " + quote(t));
        return std::nullopt;
    }
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (t.empty() || end != t.data() + t.size() || ec == std::errc::invalid_argument) {
        r.error(e.value_pos, e.label + ": expected an integer, found " + quote(t));
        return std::nullopt;
    }
    if (ec == std::errc::result_out_of_range || v > max) {
        r.error(e.value_pos,
                e.label + ": must be at most " + std::to_string(max) + ", found " + quote(t));
        return std::nullopt;
    }
    if (v < min) {
        r.error(e.value_pos,
                e.label + ": must be at least " + std::to_string(min) + ", found " + quote(t));
        return std::nullopt;
    }
    return v;
}

std::optional<double> get_unit_interval(Reader& r, const Entry& e) {
    static constexpr std::string_view kExpected = "expected a number from 0 to 1";
    auto s = get_scalar(r, e, kExpected);
    if (!s) return std::nullopt;
    double v = 0;
    const std::string& t = *s;
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (t.empty() || ec != std::errc{} || end != t.data() + t.size() || !std::isfinite(v) ||
        v < 0.0 || v > 1.0) {
        r.error(e.value_pos, e.label + ": " + std::string(kExpected) + ", found " + quote(t));
        return std::nullopt;
    }
    return v;
}

std::optional<Duration> get_duration(Reader& r, const Entry& e, bool positive) {
    auto s = get_scalar(r, e, "expected a duration like 250ms, 2s, 5m, 1h");
    if (!s) return std::nullopt;
    auto d = parse_duration(*s);
    if (!d) {
        r.error(e.value_pos, e.label + ": " + d.error);
        return std::nullopt;
    }
    if (positive && d->count() == 0) {
        r.error(e.value_pos, e.label + ": must be greater than 0, found " + quote(*s));
        return std::nullopt;
    }
    return *d;
}

std::optional<uint64_t> get_size(Reader& r, const Entry& e, uint64_t min, uint64_t max) {
    auto s = get_scalar(r, e, "expected a size like 512, 64KiB, 1MiB or 1MB");
    if (!s) return std::nullopt;
    auto v = parse_size(*s);
    if (!v) {
        r.error(e.value_pos, e.label + ": " + v.error);
        return std::nullopt;
    }
    if (*v < min) {
        r.error(e.value_pos,
                e.label + ": must be at least " + std::to_string(min) + ", found " + quote(*s));
        return std::nullopt;
    }
    if (*v > max) {
        r.error(e.value_pos, e.label + ": must be at most " + std::to_string(max) +
                                 " bytes, found " + quote(*s));
        return std::nullopt;
    }
    return *v;
}

std::optional<uint64_t> get_rate(Reader& r, const Entry& e) {
    auto s = get_scalar(r, e, "expected a rate like 64KiB/s, 1MiB/s or 1000/s");
    if (!s) return std::nullopt;
    auto v = parse_rate(*s);
    if (!v) {
        r.error(e.value_pos, e.label + ": " + v.error);
        return std::nullopt;
    }
    return *v;
}

std::optional<HostPort> get_host_port(Reader& r, const Entry& e, bool allow_port_zero) {
    auto s = get_scalar(r, e, "expected host:port like 127.0.0.1:8080, [::1]:8080 or mail:25");
    if (!s) return std::nullopt;
    auto v = parse_host_port(*s, allow_port_zero);
    if (!v) {
        r.error(e.value_pos, e.label + ": " + v.error);
        return std::nullopt;
    }
    return *v;
}

std::optional<std::string> get_string(Reader& r, const Entry& e, bool allow_empty) {
    if (e.is_null() && allow_empty) return std::string();
    auto s = get_scalar(r, e, allow_empty ? "expected a string" : "expected a non-empty string");
    if (!s) return std::nullopt;
    if (s->empty() && !allow_empty) {
        r.error(e.value_pos, e.label + ": expected a non-empty string, found \"\"");
        return std::nullopt;
    }
    return s;
}

std::optional<std::string> get_name(Reader& r, const Entry& e) {
    auto s = get_string(r, e, false);
    if (!s) return std::nullopt;
    bool ok = s->size() <= kMaxNameLength && std::all_of(s->begin(), s->end(), [](char c) {
                  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
              });
    if (!ok) {
        r.error(e.value_pos, "invalid " + e.label + " " + quote(*s) +
                                 " (expected lowercase letters, digits, \"_\" and \"-\", at most " +
                                 std::to_string(kMaxNameLength) + " characters)");
        return std::nullopt;
    }
    return s;
}

std::optional<size_t> get_choice(Reader& r, const Entry& e,
                                 const std::vector<std::string_view>& names) {
    auto s = get_scalar(r, e, "expected one of: " + join(names));
    if (!s) return std::nullopt;
    for (size_t i = 0; i < names.size(); ++i) {
        if (names[i] == *s) return i;
    }
    r.error(e.value_pos, "invalid value " + quote(*s) + " for " + e.label +
                             " (expected one of: " + join(names) + ")");
    return std::nullopt;
}

}  // namespace tcpfault::config::detail

// The parameters of one `fault:` mapping, as a fault's own parser reads them. Keys were
// already checked against the fault's parameter list (unknown keys reported with a
// did-you-mean); each getter reports a positioned error for a bad value and leaves `out` as
// it was, so a parser reads every key and one run reports every mistake.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "config/reader.hpp"

namespace tcpfault::config {

class FaultParams {
  public:
    FaultParams(detail::Reader& r, const detail::Fields& f, std::string_view type)
        : r_(r), f_(f), type_(type) {}

    bool has(std::string_view key) const { return f_.get(key) != nullptr; }
    // "fault type "x" is missing required key ..." when absent.
    bool require(std::string_view key, std::string_view note = {}) const {
        return f_.require(r_, key, note);
    }
    // The raw scalar text of a key ("" when absent or not a scalar), for cross-field messages.
    std::string text(std::string_view key) const;
    // A key's scalar text; a mapping or list there is reported with `expected`.
    std::optional<std::string> scalar(std::string_view key, std::string_view expected) const;

    void target(std::string_view key, Target& out) const;
    void direction(std::string_view key, Direction& out) const;
    void duration(std::string_view key, Duration& out, bool positive = false) const;
    void duration(std::string_view key, std::optional<Duration>& out, bool positive) const;
    void size(std::string_view key, std::optional<uint64_t>& out, uint64_t min, uint64_t max) const;
    void uint(std::string_view key, uint64_t& out, uint64_t min, uint64_t max) const;
    void rate(std::string_view key, uint64_t& out) const;
    void boolean(std::string_view key, bool& out) const;
    void string(std::string_view key, std::string& out, bool allow_empty) const;
    template <typename E>
    void choice(std::string_view key, E& out, detail::EnumTable<E> table) const {
        if (const detail::Entry* e = f_.get(key)) {
            if (auto v = detail::get_enum(r_, *e, table)) out = *v;
        }
    }

    // Errors positioned at a key's value, or at the fault mapping itself.
    void error_at(std::string_view key, const std::string& message) const;
    // An error positioned at the key itself (e.g. a key that does not belong with another).
    void error_key(std::string_view key, const std::string& message) const;
    void error(const std::string& message) const;
    // Valid, but worth a word: --check and the log at start and reload say it.
    void warn_at(std::string_view key, const std::string& message) const;
    const std::string& quoted_type() const { return type_; }

  private:
    detail::Reader& r_;
    const detail::Fields& f_;
    std::string type_;  // `"reset"`, for messages
};

}  // namespace tcpfault::config

#include "config/fault_params.hpp"

namespace tcpfault::config {

using detail::Entry;

std::string FaultParams::text(std::string_view key) const {
    const Entry* e = f_.get(key);
    return e != nullptr && e->value.IsScalar() ? e->value.Scalar() : std::string();
}

std::optional<std::string> FaultParams::scalar(std::string_view key,
                                               std::string_view expected) const {
    const Entry* e = f_.get(key);
    if (e == nullptr) return std::nullopt;
    return detail::get_scalar(r_, *e, expected);
}

void FaultParams::target(std::string_view key, Target& out) const {
    choice<Target>(
        key, out, {{"client", Target::client}, {"server", Target::server}, {"both", Target::both}});
}

void FaultParams::direction(std::string_view key, Direction& out) const {
    choice<Direction>(key, out,
                      {{"upstream", Direction::upstream},
                       {"downstream", Direction::downstream},
                       {"both", Direction::both}});
}

void FaultParams::duration(std::string_view key, Duration& out, bool positive) const {
    if (const Entry* e = f_.get(key)) {
        if (auto v = detail::get_duration(r_, *e, positive)) out = *v;
    }
}

void FaultParams::duration(std::string_view key, std::optional<Duration>& out,
                           bool positive) const {
    if (const Entry* e = f_.get(key)) {
        if (auto v = detail::get_duration(r_, *e, positive)) out = *v;
    }
}

void FaultParams::size(std::string_view key, std::optional<uint64_t>& out, uint64_t min,
                       uint64_t max) const {
    if (const Entry* e = f_.get(key)) {
        if (auto v = detail::get_size(r_, *e, min, max)) out = *v;
    }
}

void FaultParams::uint(std::string_view key, uint64_t& out, uint64_t min, uint64_t max) const {
    if (const Entry* e = f_.get(key)) {
        if (auto v = detail::get_uint(r_, *e, min, max)) out = *v;
    }
}

void FaultParams::rate(std::string_view key, uint64_t& out) const {
    if (const Entry* e = f_.get(key)) {
        if (auto v = detail::get_rate(r_, *e)) out = *v;
    }
}

void FaultParams::boolean(std::string_view key, bool& out) const {
    if (const Entry* e = f_.get(key)) {
        if (auto v = detail::get_bool(r_, *e)) out = *v;
    }
}

void FaultParams::string(std::string_view key, std::string& out, bool allow_empty) const {
    if (const Entry* e = f_.get(key)) {
        if (auto v = detail::get_string(r_, *e, allow_empty)) out = *v;
    }
}

void FaultParams::error_at(std::string_view key, const std::string& message) const {
    const Entry* e = f_.get(key);
    r_.error(e != nullptr ? e->value_pos : f_.pos(), message);
}

void FaultParams::error_key(std::string_view key, const std::string& message) const {
    const Entry* e = f_.get(key);
    r_.error(e != nullptr ? e->key_pos : f_.pos(), message);
}

void FaultParams::warn_at(std::string_view key, const std::string& message) const {
    const Entry* e = f_.get(key);
    r_.warn(e != nullptr ? e->key_pos : f_.pos(), message);
}

void FaultParams::error(const std::string& message) const {
    r_.error(f_.pos(), message);
}

}  // namespace tcpfault::config

// Parsers for the scalar notations of the config file (sizes, durations, rates, addresses) and
// the inverse formatters the admin API uses to echo rules back in the same notation.
//
// Notation decisions (docs/config.md#values):
// - Sizes: plain bytes (`512`), binary units KiB/MiB/GiB/TiB (1024-based) and decimal units
//   KB/MB/GB/TB (1000-based), `B` allowed; units are case-insensitive. A bare `K`/`M`/`G` is
//   rejected as ambiguous rather than guessed, because "reset after exactly 64K" must not be
//   off by 2.4%. Decimals are accepted only when they give a whole number of bytes (`1.5KiB`).
// - Durations: us (or µs), ms, s, m, h; decimals (`1.5s`) and Go-style compounds (`1m30s`).
//   A bare number is accepted only for 0. At most one year, so callers can add a duration to
//   a clock reading without overflow.
// - Rates: a size followed by `/s` (`64KiB/s`, `1000/s`), in bytes per second, > 0.
// - Range: sizes, rates and slice bounds up to 2^64 - 1 bytes, durations up to kMaxDuration.
//   Numbers may have any number of digits; arithmetic is checked, never wraps, and a value out
//   of range is an error that names the maximum.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "config/config.hpp"

namespace tcpfault::config {

// Either a value or a message saying what was found and what was expected.
template <typename T>
struct Parsed {
    std::optional<T> value;
    std::string error;

    static Parsed ok(T v) { return Parsed{std::move(v), {}}; }
    static Parsed fail(std::string message) { return Parsed{std::nullopt, std::move(message)}; }
    explicit operator bool() const { return value.has_value(); }
    const T& operator*() const { return *value; }
    const T* operator->() const { return &*value; }
};

// Longest duration any setting accepts.
inline constexpr Duration kMaxDuration = std::chrono::hours(24 * 366);

Parsed<uint64_t> parse_size(std::string_view text);
Parsed<Duration> parse_duration(std::string_view text);
Parsed<uint64_t> parse_rate(std::string_view text);  // bytes per second
// A bare address is a /32 or /128; host bits beyond the prefix are cleared.
Parsed<Cidr> parse_cidr(std::string_view text);
// `host:port` or `[v6]:port`. Port 0 ("pick a free port") only makes sense for listeners.
Parsed<HostPort> parse_host_port(std::string_view text, bool allow_port_zero);

struct SliceSize {
    uint64_t min = 1;
    uint64_t max = 1;
};
// `4` or `1-16`; each bound is a size, so `1-4KiB` also works.
Parsed<SliceSize> parse_slice_size(std::string_view text);

// Inverse notation, exact: the largest unit that divides the value, e.g. "64KiB", "1500ms".
std::string format_size(uint64_t bytes);
std::string format_duration(Duration d);
std::string format_rate(uint64_t bytes_per_second);  // "64KiB/s"

}  // namespace tcpfault::config

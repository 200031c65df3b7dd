// Scalar notations of the config file. Arithmetic is done in 128-bit integers on the decimal
// text so that `1.1MB` is exact; every multiplication and addition is checked, so a value too
// large for 128 bits is reported as too large instead of wrapping to a small one.
#include "config/units.hpp"

#include <arpa/inet.h>

#include <cctype>
#include <cstring>

#include "config/quote.hpp"

namespace tcpfault::config {

namespace {

using u128 = unsigned __int128;

constexpr std::string_view kSizeExpect = "expected a size like 512, 64KiB, 1MiB or 1MB";
constexpr std::string_view kDurationExpect = "expected a duration like 250ms, 2s, 5m, 1h";
constexpr std::string_view kRateExpect = "expected a rate like 64KiB/s, 1MiB/s or 1000/s";
constexpr std::string_view kCidrExpect = "expected a CIDR like 10.0.0.0/8 or ::1/128";
constexpr std::string_view kHostPortExpect =
    "expected host:port like 127.0.0.1:8080, [::1]:8080 or mail:25";
constexpr std::string_view kSliceExpect = "expected a slice size like 1 or 1-16";

constexpr int kMaxFractionDigits = 12;

std::string found(std::string_view expect, std::string_view text, std::string_view why = {}) {
    std::string m(expect);
    m += ", found ";
    m += quote_value(text);
    if (!why.empty()) {
        m += " (";
        m += why;
        m += ')';
    }
    return m;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    }
    return true;
}

// a * b and a + b, or false (and `out` untouched) when the result does not fit in 128 bits.
bool checked_mul(u128 a, u128 b, u128& out) {
    u128 r = 0;
    if (__builtin_mul_overflow(a, b, &r)) return false;
    out = r;
    return true;
}
bool checked_add(u128 a, u128 b, u128& out) {
    u128 r = 0;
    if (__builtin_add_overflow(a, b, &r)) return false;
    out = r;
    return true;
}

u128 pow10(int n) {  // n <= kMaxFractionDigits
    u128 r = 1;
    while (n-- > 0) r *= 10;
    return r;
}

// value = mantissa / 10^scale. `overflow`: the digits did not fit in 128 bits, so the value is
// larger than anything a caller accepts (>= 2^128 / 10^kMaxFractionDigits, ~3.4e26).
struct Decimal {
    u128 mantissa = 0;
    int scale = 0;
    bool overflow = false;

    void push_digit(char c) {
        if (overflow) return;
        u128 m = 0;
        if (!checked_mul(mantissa, 10, m) ||
            !checked_add(m, static_cast<unsigned>(c - '0'), mantissa))
            overflow = true;
    }
    // mantissa * multiplier / 10^scale split into whole units and a remainder; false when the
    // whole part does not fit in 128 bits (too large for any caller).
    bool scaled(uint64_t multiplier, u128& whole, u128& rem) const {
        u128 product = 0;
        if (overflow || !checked_mul(mantissa, multiplier, product)) return false;
        u128 div = pow10(scale);
        whole = product / div;
        rem = product % div;
        return true;
    }
};

// Consumes `digits[.digits]` from the front of `s`. Empty result: no number there (`why` set
// when there is one, but it cannot be used). Any number of integer digits is read; a value
// that does not fit is marked `overflow` for the caller to report with its own maximum.
std::optional<Decimal> take_number(std::string_view& s, std::string& why) {
    Decimal d;
    size_t i = 0;
    while (i < s.size() && is_digit(s[i])) d.push_digit(s[i++]);
    size_t digits = i;
    if (i < s.size() && s[i] == '.') {
        size_t j = i + 1;
        while (j < s.size() && is_digit(s[j])) {
            if (d.scale >= kMaxFractionDigits) {
                why = "too many decimal places";
                return std::nullopt;
            }
            d.push_digit(s[j]);
            ++d.scale;
            ++j;
        }
        if (j == i + 1 || digits + static_cast<size_t>(d.scale) == 0) return std::nullopt;
        i = j;
    }
    if (i == 0) return std::nullopt;
    s.remove_prefix(i);
    return d;
}

std::string too_large(std::string_view max_text) {
    return "too large: the maximum is " + std::string(max_text);
}

std::string_view take_unit(std::string_view& s) {
    size_t i = 0;
    // Letters plus the UTF-8 bytes of µ/μ, so `µs` is one unit token.
    while (i < s.size() && (std::isalpha(static_cast<unsigned char>(s[i])) ||
                            static_cast<unsigned char>(s[i]) >= 0x80))
        ++i;
    std::string_view u = s.substr(0, i);
    s.remove_prefix(i);
    return u;
}

struct SizeUnit {
    std::string_view name;
    uint64_t multiplier;
};
constexpr SizeUnit kSizeUnits[] = {
    {"", 1},
    {"B", 1},
    {"KiB", 1ull << 10},
    {"MiB", 1ull << 20},
    {"GiB", 1ull << 30},
    {"TiB", 1ull << 40},
    {"KB", 1000ull},
    {"MB", 1000ull * 1000},
    {"GB", 1000ull * 1000 * 1000},
    {"TB", 1000ull * 1000 * 1000 * 1000},
};

// The shared core of sizes, rates and slice bounds: returns bytes, or sets `why`. `per` follows
// "bytes" in the too-large message ("/s" for rates).
std::optional<uint64_t> size_core(std::string_view text, std::string& why,
                                  std::string_view per = {}) {
    std::string_view s = trim(text);
    if (s.empty()) {
        why = "empty";
        return std::nullopt;
    }
    if (s.front() == '-') {
        why = "sizes cannot be negative";
        return std::nullopt;
    }
    auto num = take_number(s, why);
    if (!num) return std::nullopt;
    s = trim(s);
    std::string_view unit = take_unit(s);
    if (!s.empty()) return std::nullopt;
    const SizeUnit* found_unit = nullptr;
    for (const auto& u : kSizeUnits) {
        if (iequals(u.name, unit)) found_unit = &u;
    }
    if (found_unit == nullptr) {
        if (iequals(unit, "K") || iequals(unit, "M") || iequals(unit, "G") || iequals(unit, "T")) {
            std::string_view whole = trim(text);
            std::string n(trim(whole.substr(0, whole.size() - unit.size())));
            char letter = static_cast<char>(std::toupper(static_cast<unsigned char>(unit[0])));
            if (n.size() > 24) n.clear();  // too long to repeat twice: the units alone
            why = "ambiguous unit: write " + n + letter + "iB for 1024-based or " + n + letter +
                  "B for 1000-based";
        } else {
            why = "unknown unit " + quote_value(unit) +
                  "; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB";
        }
        return std::nullopt;
    }
    u128 bytes = 0;
    u128 rem = 0;
    if (!num->scaled(found_unit->multiplier, bytes, rem) || bytes > UINT64_MAX) {
        why = too_large(std::to_string(UINT64_MAX) + " bytes" + std::string(per));
        return std::nullopt;
    }
    if (rem != 0) {
        why = "not a whole number of bytes";
        return std::nullopt;
    }
    return static_cast<uint64_t>(bytes);
}

struct DurationUnit {
    std::string_view name;
    int64_t micros;
};
// `µs` is accepted spelled with the micro sign and with the Greek mu: keyboards produce either.
constexpr DurationUnit kDurationUnits[] = {
    {"us", 1},
    {"\xc2\xb5s", 1},
    {"\xce\xbcs", 1},
    {"ms", 1000},
    {"s", 1000 * 1000},
    {"m", 60ll * 1000 * 1000},
    {"h", 3600ll * 1000 * 1000},
};

}  // namespace

Parsed<uint64_t> parse_size(std::string_view text) {
    std::string why;
    if (auto v = size_core(text, why)) return Parsed<uint64_t>::ok(*v);
    return Parsed<uint64_t>::fail(found(kSizeExpect, text, why));
}

Parsed<Duration> parse_duration(std::string_view text) {
    using P = Parsed<Duration>;
    std::string_view s = trim(text);
    if (s.empty()) return P::fail(found(kDurationExpect, text, "empty"));
    if (s.front() == '-')
        return P::fail(found(kDurationExpect, text, "durations cannot be negative"));
    u128 total = 0;
    bool first = true;
    while (!s.empty()) {
        std::string why;
        auto num = take_number(s, why);
        if (!num) return P::fail(found(kDurationExpect, text, why));
        s = trim(s);
        std::string_view unit = take_unit(s);
        s = trim(s);
        if (unit.empty()) {
            // A bare number is only unambiguous when it is zero.
            if (first && s.empty() && !num->overflow && num->mantissa == 0)
                return P::ok(Duration{0});
            return P::fail(found(kDurationExpect, text, "missing unit"));
        }
        const DurationUnit* du = nullptr;
        for (const auto& u : kDurationUnits) {
            if (u.name == unit) du = &u;
        }
        if (du == nullptr) {
            return P::fail(found(kDurationExpect, text,
                                 "unknown unit " + quote_value(unit) + "; use us, ms, s, m or h"));
        }
        constexpr auto kMax = static_cast<u128>(kMaxDuration.count());
        u128 micros = 0;
        u128 rem = 0;
        // total <= kMax here, so kMax - total cannot wrap.
        if (!num->scaled(static_cast<uint64_t>(du->micros), micros, rem) || micros > kMax - total) {
            return P::fail(
                found(kDurationExpect, text,
                      "too long: the maximum is " + format_duration(kMaxDuration) + ", 366 days"));
        }
        if (rem != 0) {
            return P::fail(found(kDurationExpect, text, "finer than one microsecond"));
        }
        total += micros;
        first = false;
    }
    return P::ok(Duration{static_cast<int64_t>(total)});
}

Parsed<uint64_t> parse_rate(std::string_view text) {
    using P = Parsed<uint64_t>;
    std::string_view s = trim(text);
    if (s.size() < 2 || s.substr(s.size() - 2) != "/s") {
        return P::fail(found(kRateExpect, text, "missing \"/s\""));
    }
    std::string why;
    auto v = size_core(s.substr(0, s.size() - 2), why, "/s");
    if (!v) return P::fail(found(kRateExpect, text, why));
    if (*v == 0) return P::fail(found(kRateExpect, text, "must be greater than 0"));
    return P::ok(*v);
}

Parsed<Cidr> parse_cidr(std::string_view text) {
    using P = Parsed<Cidr>;
    std::string_view s = trim(text);
    std::string_view addr = s;
    std::optional<std::string_view> prefix_text;
    if (auto slash = s.find('/'); slash != std::string_view::npos) {
        addr = s.substr(0, slash);
        prefix_text = s.substr(slash + 1);
    }
    Cidr c;
    std::string a(addr);
    if (inet_pton(AF_INET, a.c_str(), c.addr.data()) == 1) {
        c.v6 = false;
    } else if (inet_pton(AF_INET6, a.c_str(), c.addr.data()) == 1) {
        c.v6 = true;
    } else {
        return P::fail(found(kCidrExpect, text, "not an IP address"));
    }
    int max_prefix = c.v6 ? 128 : 32;
    c.prefix = max_prefix;
    if (prefix_text) {
        std::string_view p = *prefix_text;
        if (p.empty() || p.size() > 3) {
            return P::fail(
                found(kCidrExpect, text, "prefix length must be 0-" + std::to_string(max_prefix)));
        }
        int v = 0;
        for (char ch : p) {
            if (!is_digit(ch)) {
                return P::fail(found(kCidrExpect, text,
                                     "prefix length must be 0-" + std::to_string(max_prefix)));
            }
            v = v * 10 + (ch - '0');
        }
        if (v > max_prefix) {
            return P::fail(
                found(kCidrExpect, text, "prefix length must be 0-" + std::to_string(max_prefix)));
        }
        c.prefix = v;
    }
    // Lenient on host bits (10.1.2.3/8 means 10.0.0.0/8): users copy addresses, not networks.
    size_t bytes = c.v6 ? 16 : 4;
    for (size_t i = 0; i < bytes; ++i) {
        int bit_start = static_cast<int>(i) * 8;
        if (bit_start >= c.prefix) {
            c.addr[i] = 0;
        } else if (c.prefix - bit_start < 8) {
            c.addr[i] &= static_cast<uint8_t>(0xff << (8 - (c.prefix - bit_start)));
        }
    }
    return P::ok(c);
}

namespace {

bool valid_hostname(std::string_view h) {
    if (h.empty() || h.size() > 253) return false;
    size_t label = 0;
    for (char ch : h) {
        if (ch == '.') {
            if (label == 0) return false;
            label = 0;
            continue;
        }
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_') return false;
        if (++label > 63) return false;
    }
    return true;
}

bool looks_numeric(std::string_view h) {
    for (char ch : h) {
        if (!is_digit(ch) && ch != '.') return false;
    }
    return true;
}

}  // namespace

Parsed<HostPort> parse_host_port(std::string_view text, bool allow_port_zero) {
    using P = Parsed<HostPort>;
    std::string_view s = trim(text);
    std::string_view host;
    std::string_view port;
    HostPort hp;
    if (!s.empty() && s.front() == '[') {
        size_t close = s.find(']');
        if (close == std::string_view::npos) {
            return P::fail(found(kHostPortExpect, text, "missing \"]\""));
        }
        host = s.substr(1, close - 1);
        std::string_view rest = s.substr(close + 1);
        if (rest.empty() || rest.front() != ':') {
            return P::fail(found(kHostPortExpect, text, "missing :port"));
        }
        port = rest.substr(1);
        std::string h(host);
        in6_addr tmp{};
        if (inet_pton(AF_INET6, h.c_str(), &tmp) != 1) {
            return P::fail(found(kHostPortExpect, text, "not an IPv6 address inside [ ]"));
        }
    } else {
        size_t colon = s.rfind(':');
        if (colon == std::string_view::npos) {
            return P::fail(found(kHostPortExpect, text, "missing :port"));
        }
        host = s.substr(0, colon);
        port = s.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) {
            return P::fail(
                found(kHostPortExpect, text, "IPv6 addresses need brackets: [::1]:8080"));
        }
        if (host.empty()) {
            return P::fail(found(kHostPortExpect, text,
                                 "missing host; use 0.0.0.0 or [::] for all addresses"));
        }
        if (looks_numeric(host)) {
            std::string h(host);
            in_addr tmp{};
            if (inet_pton(AF_INET, h.c_str(), &tmp) != 1) {
                return P::fail(found(kHostPortExpect, text, "not a valid IPv4 address"));
            }
        } else if (!valid_hostname(host)) {
            return P::fail(found(kHostPortExpect, text, "not a valid host name"));
        }
    }
    if (port.empty() || port.size() > 5) {
        return P::fail(found(kHostPortExpect, text, "port must be 0-65535"));
    }
    uint32_t p = 0;
    for (char ch : port) {
        if (!is_digit(ch)) return P::fail(found(kHostPortExpect, text, "port must be 0-65535"));
        p = p * 10 + static_cast<uint32_t>(ch - '0');
    }
    if (p > 65535) return P::fail(found(kHostPortExpect, text, "port must be 0-65535"));
    if (p == 0 && !allow_port_zero) {
        return P::fail(found(kHostPortExpect, text, "port 0 is only valid for listen addresses"));
    }
    hp.host = std::string(host);
    hp.port = static_cast<uint16_t>(p);
    return P::ok(hp);
}

Parsed<SliceSize> parse_slice_size(std::string_view text) {
    using P = Parsed<SliceSize>;
    std::string_view s = trim(text);
    std::string_view lo = s;
    std::string_view hi = s;
    if (auto dash = s.find('-'); dash != std::string_view::npos) {
        lo = s.substr(0, dash);
        hi = s.substr(dash + 1);
        if (trim(lo).empty()) return P::fail(found(kSliceExpect, text, "sizes cannot be negative"));
    }
    std::string why;
    auto min = size_core(lo, why);
    if (!min) return P::fail(found(kSliceExpect, text, why));
    auto max = size_core(hi, why);
    if (!max) return P::fail(found(kSliceExpect, text, why));
    if (*min < 1) return P::fail(found(kSliceExpect, text, "must be at least 1"));
    if (*min > *max) {
        return P::fail(found(kSliceExpect, text, "the minimum is larger than the maximum"));
    }
    return P::ok(SliceSize{*min, *max});
}

std::string format_size(uint64_t bytes) {
    if (bytes == 0) return "0";
    static constexpr SizeUnit kFormat[] = {
        {"TiB", 1ull << 40},
        {"GiB", 1ull << 30},
        {"MiB", 1ull << 20},
        {"KiB", 1ull << 10},
        {"TB", 1000ull * 1000 * 1000 * 1000},
        {"GB", 1000ull * 1000 * 1000},
        {"MB", 1000ull * 1000},
        {"KB", 1000ull},
    };
    for (const auto& u : kFormat) {
        if (bytes % u.multiplier == 0)
            return std::to_string(bytes / u.multiplier) + std::string(u.name);
    }
    return std::to_string(bytes);
}

std::string format_duration(Duration d) {
    if (d.count() == 0) return "0s";
    static constexpr DurationUnit kFormat[] = {
        {"h", 3600ll * 1000 * 1000},
        {"m", 60ll * 1000 * 1000},
        {"s", 1000 * 1000},
        {"ms", 1000},
        {"us", 1},
    };
    for (const auto& u : kFormat) {
        if (d.count() % u.micros == 0)
            return std::to_string(d.count() / u.micros) + std::string(u.name);
    }
    return std::to_string(d.count()) + "us";
}

std::string format_rate(uint64_t bytes_per_second) {
    return format_size(bytes_per_second) + "/s";
}

}  // namespace tcpfault::config

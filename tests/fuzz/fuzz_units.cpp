// fuzz_units: the scalar notations of the config file (config/units.hpp) on arbitrary text.
// Invariants beyond "no crash / no sanitizer report":
//  - what parses, formats back (format_*) to text that parses to the same value;
//  - an accepted size / duration / rate has the value an independent long-double evaluation
//    of the same text gives (catches silent wrap-around in the 128-bit arithmetic);
//  - CIDRs and host:port round-trip through str(); slice bounds satisfy 1 <= min <= max.
#include <cctype>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "config/units.hpp"
#include "fuzz_common.hpp"

using namespace tcpfault::config;

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

// `digits[.digits]` as a long double; consumes it from the front of s.
std::optional<long double> ref_number(std::string_view& s) {
    size_t i = 0;
    long double v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') v = v * 10 + (s[i++] - '0');
    size_t int_digits = i;
    if (i < s.size() && s[i] == '.') {
        long double scale = 1;
        size_t j = i + 1;
        while (j < s.size() && s[j] >= '0' && s[j] <= '9') {
            scale /= 10;
            v += (s[j++] - '0') * scale;
        }
        if (j == i + 1) return std::nullopt;
        i = j;
    }
    if (i == 0 || (int_digits == 0 && i == 0)) return std::nullopt;
    s.remove_prefix(i);
    return v;
}

std::string_view ref_unit(std::string_view& s) {
    size_t i = 0;
    while (i < s.size() && (std::isalpha(static_cast<unsigned char>(s[i])) ||
                            static_cast<unsigned char>(s[i]) >= 0x80))
        ++i;
    std::string_view u = s.substr(0, i);
    s.remove_prefix(i);
    return u;
}

// Independent evaluation of a size's text (only used on text parse_size accepted).
std::optional<long double> ref_size(std::string_view text) {
    std::string_view s = trim(text);
    auto v = ref_number(s);
    if (!v) return std::nullopt;
    s = trim(s);
    std::string_view u = ref_unit(s);
    static const std::pair<std::string_view, long double> units[] = {{"", 1},
                                                                     {"B", 1},
                                                                     {"KiB", 1024.0L},
                                                                     {"MiB", 1048576.0L},
                                                                     {"GiB", 1073741824.0L},
                                                                     {"TiB", 1099511627776.0L},
                                                                     {"KB", 1e3L},
                                                                     {"MB", 1e6L},
                                                                     {"GB", 1e9L},
                                                                     {"TB", 1e12L}};
    for (const auto& [name, mult] : units)
        if (iequals(name, u)) return *v * mult;
    return std::nullopt;
}

std::optional<long double> ref_duration_us(std::string_view text) {
    std::string_view s = trim(text);
    long double total = 0;
    while (!s.empty()) {
        auto v = ref_number(s);
        if (!v) return std::nullopt;
        s = trim(s);
        std::string_view u = ref_unit(s);
        s = trim(s);
        long double mult = 0;
        if (u.empty())
            mult = 0;  // only "0" is accepted bare
        else if (u == "us" || u == "\xc2\xb5s" || u == "\xce\xbcs")
            mult = 1;
        else if (u == "ms")
            mult = 1e3L;
        else if (u == "s")
            mult = 1e6L;
        else if (u == "m")
            mult = 60e6L;
        else if (u == "h")
            mult = 3600e6L;
        else
            return std::nullopt;
        total += *v * mult;
    }
    return total;
}

bool close_to(long double ref, uint64_t got) {
    long double g = static_cast<long double>(got);
    return std::fabs(ref - g) <= 1e-9L * std::fmax(ref, 1.0L);
}

bool same_cidr(const Cidr& a, const Cidr& b) {
    return a.v6 == b.v6 && a.prefix == b.prefix && a.addr == b.addr;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 4096) return 0;
    std::string_view text(reinterpret_cast<const char*>(data), size);

    if (auto v = parse_size(text)) {
        auto ref = ref_size(text);
        FUZZ_CHECK(ref.has_value());
        FUZZ_CHECK(close_to(*ref, *v));  // an accepted size has the value its text says
        auto again = parse_size(format_size(*v));
        FUZZ_CHECK(again && *again == *v);
    } else {
        FUZZ_CHECK(!v.error.empty());
    }

    if (auto d = parse_duration(text)) {
        FUZZ_CHECK(d->count() >= 0 && *d <= kMaxDuration);
        auto ref = ref_duration_us(text);
        FUZZ_CHECK(ref.has_value());
        FUZZ_CHECK(close_to(*ref, static_cast<uint64_t>(d->count())));
        auto again = parse_duration(format_duration(*d));
        FUZZ_CHECK(again && *again == *d);
    } else {
        FUZZ_CHECK(!d.error.empty());
    }

    if (auto r = parse_rate(text)) {
        FUZZ_CHECK(*r > 0);
        std::string_view s = trim(text);
        auto ref = ref_size(s.substr(0, s.size() - 2));
        FUZZ_CHECK(ref.has_value());
        FUZZ_CHECK(close_to(*ref, *r));
        auto again = parse_rate(format_rate(*r));
        FUZZ_CHECK(again && *again == *r);
    }

    if (auto c = parse_cidr(text)) {
        FUZZ_CHECK(c->prefix >= 0 && c->prefix <= (c->v6 ? 128 : 32));
        auto again = parse_cidr(c->str());
        FUZZ_CHECK(again && same_cidr(*again, *c));
    }

    for (bool zero_ok : {false, true}) {
        if (auto hp = parse_host_port(text, zero_ok)) {
            FUZZ_CHECK(zero_ok || hp->port != 0);
            FUZZ_CHECK(!hp->host.empty());
            auto again = parse_host_port(hp->str(), zero_ok);
            FUZZ_CHECK(again && again->host == hp->host && again->port == hp->port);
        }
    }

    if (auto sl = parse_slice_size(text)) {
        FUZZ_CHECK(sl->min >= 1 && sl->min <= sl->max);
    }
    return 0;
}

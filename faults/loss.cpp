#include "faults/loss.hpp"

#include <charconv>
#include <cmath>

#include "config/fault_params.hpp"
#include "faults/packet_util.hpp"

namespace tcpfault::faults {

namespace {
// `5%`, `0.5%` or a fraction `0.05`, in steps of 0.01% (what `numgen random mod 10000` can
// draw): the number of packets in 10000, or 0 with `error` set.
uint32_t parse_rate(const std::string& t, std::string* error) {
    bool percent = !t.empty() && t.back() == '%';
    std::string num = percent ? t.substr(0, t.size() - 1) : t;
    double v = 0;
    auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
    if (num.empty() || ec != std::errc{} || end != num.data() + num.size() || !std::isfinite(v)) {
        *error = "expected a share of packets like 5%, 0.5% or 0.05";
        return 0;
    }
    double per_10000 = percent ? v * 100 : v * 10000;
    if (per_10000 <= 0 || per_10000 > 10000) {
        *error = "must be above 0 and at most 100% (1), found \"" + t + "\"";
        return 0;
    }
    double whole = std::round(per_10000);
    if (whole < 1 || std::fabs(per_10000 - whole) > 1e-6) {
        *error = "steps of 0.01% (0.0001) only, found \"" + t + "\"";
        return 0;
    }
    return static_cast<uint32_t>(whole);
}
}  // namespace

std::optional<LossFault> LossFault::parse(const config::FaultParams& p) {
    LossFault x;
    p.require("rate");
    if (auto t = p.scalar("rate", "expected a share of packets like 5%, 0.5% or 0.05")) {
        std::string err;
        x.per_10000 = parse_rate(*t, &err);
        if (x.per_10000 == 0) p.error_at("rate", "fault.rate: " + err);
    }
    p.direction("direction", x.direction);
    p.target("side", x.side);
    return x;
}

std::string LossFault::rate_text() const {
    std::string s = std::to_string(per_10000 / 100);
    if (uint32_t frac = per_10000 % 100; frac != 0)
        s += (frac < 10 ? ".0" : ".") + std::to_string(frac % 10 == 0 ? frac / 10 : frac);
    return s + "%";
}

void LossFault::apply(Connection& c, const std::string& rule) const {
    drop_packets(c, rule, side, direction, per_10000, "loss " + rate_text());
}

}  // namespace tcpfault::faults

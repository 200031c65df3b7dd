#include "faults/bandwidth.hpp"

#include <algorithm>

#include "config/fault_params.hpp"
#include "faults/stage_util.hpp"

namespace tcpfault::faults {

namespace {
class BandwidthStage final : public Stage {
  public:
    BandwidthStage(std::string rule, uint64_t rate) : Stage(std::move(rule)), rate_(rate) {}
    bool shapes() const override { return true; }

    Gate gate(const Held&, const StageContext& ctx) override {
        if (rate_ == 0) return {0, 0, false};
        refill(ctx.now_us);
        if (tokens_ >= 1.0) return {static_cast<size_t>(tokens_), 0, false};
        double wait_us = (1.0 - tokens_) * 1e6 / static_cast<double>(rate_);
        return {0, ctx.now_us + static_cast<uint64_t>(wait_us) + 1, false};
    }
    void on_sent(size_t n, const StageContext&) override {
        tokens_ = std::max(0.0, tokens_ - static_cast<double>(n));
    }
    bool endless() const override { return rate_ == 0; }

  private:
    void refill(uint64_t now) {
        if (refill_us_ == 0) refill_us_ = now;
        double cap = std::max(static_cast<double>(rate_) / 20.0, 1.0);
        tokens_ = std::min(cap, tokens_ + static_cast<double>(now - refill_us_) *
                                              static_cast<double>(rate_) / 1e6);
        refill_us_ = now;
    }

    uint64_t rate_;
    double tokens_ = 0;
    uint64_t refill_us_ = 0;
};
}  // namespace

std::optional<BandwidthFault> BandwidthFault::parse(const config::FaultParams& p) {
    BandwidthFault x;
    p.require("rate");
    p.rate("rate", x.rate);
    p.direction("direction", x.direction);
    return x;
}

void BandwidthFault::apply(Connection& c, const std::string& rule) const {
    add_stages<BandwidthStage>(c, direction, rule, rate);
}

}  // namespace tcpfault::faults

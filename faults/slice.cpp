#include "faults/slice.hpp"

#include <algorithm>
#include <random>

#include "config/fault_params.hpp"
#include "config/units.hpp"
#include "faults/stage_util.hpp"

namespace tcpfault::faults {

namespace {
// A late timer may find several pieces due; it sends them back to back, but never catches up
// more than this much lag (after an idle spell the pace restarts from now).
constexpr uint64_t kMaxCatchUpUs = 1000;

class SliceStage final : public Stage {
  public:
    SliceStage(std::string rule, const SliceFault& f)
        : Stage(std::move(rule)),
          min_(f.min_size),
          max_(f.max_size),
          delay_us_(static_cast<uint64_t>(f.delay.count())) {}
    bool shapes() const override { return true; }

    Gate gate(const Held&, const StageContext& ctx) override {
        if (delay_us_ > 0 && next_us_ > ctx.now_us) return {0, next_us_, true};
        // Drawn once per piece: the gate may be asked again before the piece leaves.
        if (piece_ == 0) piece_ = std::uniform_int_distribution<uint64_t>(min_, max_)(ctx.rng);
        return {static_cast<size_t>(piece_), 0, true};
    }
    void on_sent(size_t, const StageContext& ctx) override {
        piece_ = 0;
        if (delay_us_ == 0) return;
        // Paced on a schedule, not from the last send, so microsecond delays add up exactly.
        uint64_t floor_us = ctx.now_us > kMaxCatchUpUs ? ctx.now_us - kMaxCatchUpUs : 0;
        uint64_t base = next_us_ == 0 ? ctx.now_us : std::max(next_us_, floor_us);
        next_us_ = base + delay_us_;
    }

  private:
    uint64_t min_, max_;
    uint64_t delay_us_;
    uint64_t piece_ = 0;
    uint64_t next_us_ = 0;
};
}  // namespace

std::optional<SliceFault> SliceFault::parse(const config::FaultParams& p) {
    SliceFault x;
    p.require("size");
    if (auto s = p.scalar("size", "expected a slice size like 1 or 1-16")) {
        if (auto v = config::parse_slice_size(*s)) {
            x.min_size = v->min;
            x.max_size = v->max;
        } else {
            p.error_at("size", "fault.size: " + v.error);
        }
    }
    p.duration("delay", x.delay);
    p.direction("direction", x.direction);
    return x;
}

void SliceFault::apply(Connection& c, const std::string& rule) const {
    add_stages<SliceStage>(c, direction, rule, *this);
}

}  // namespace tcpfault::faults

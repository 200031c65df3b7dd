#include "faults/latency.hpp"

#include <algorithm>
#include <random>

#include "config/fault_params.hpp"
#include "faults/stage_util.hpp"

namespace tcpfault::faults {

namespace {
class LatencyStage final : public Stage {
  public:
    LatencyStage(std::string rule, const LatencyFault& f)
        : Stage(std::move(rule)),
          delay_(static_cast<uint64_t>(f.delay.count())),
          jitter_(f.jitter.count()) {}
    bool shapes() const override { return true; }

    // The pipe stamps each chunk with its arrival time; every latency stage adds its delay.
    void on_enqueue(Held& h, const StageContext& ctx) override {
        int64_t d = static_cast<int64_t>(delay_);
        if (jitter_ > 0) d += std::uniform_int_distribution<int64_t>(-jitter_, jitter_)(ctx.rng);
        uint64_t release = h.release_us + static_cast<uint64_t>(std::max<int64_t>(d, 0));
        // Order is preserved: never before the chunk read ahead of it.
        h.release_us = std::max(release, last_release_us_);
        last_release_us_ = h.release_us;
    }

  private:
    uint64_t delay_;
    int64_t jitter_;
    uint64_t last_release_us_ = 0;
};
}  // namespace

std::optional<LatencyFault> LatencyFault::parse(const config::FaultParams& p) {
    LatencyFault x;
    p.require("delay");
    p.duration("delay", x.delay);
    p.duration("jitter", x.jitter);
    p.direction("direction", x.direction);
    return x;
}

void LatencyFault::apply(Connection& c, const std::string& rule) const {
    add_stages<LatencyStage>(c, direction, rule, *this);
}

}  // namespace tcpfault::faults

#include "faults/slow_close.hpp"

#include "config/fault_params.hpp"
#include "faults/stage_util.hpp"

namespace tcpfault::faults {

namespace {
class SlowCloseStage final : public Stage {
  public:
    SlowCloseStage(std::string rule, config::Duration delay)
        : Stage(std::move(rule)), delay_us_(static_cast<uint64_t>(delay.count())) {}
    uint64_t fin_release_us(uint64_t fin_arrival_us) const override {
        return fin_arrival_us + delay_us_;
    }

  private:
    uint64_t delay_us_;
};
}  // namespace

std::optional<SlowCloseFault> SlowCloseFault::parse(const config::FaultParams& p) {
    SlowCloseFault x;
    p.require("delay");
    p.duration("delay", x.delay, true);
    p.direction("direction", x.direction);
    return x;
}

void SlowCloseFault::apply(Connection& c, const std::string& rule) const {
    add_stages<SlowCloseStage>(c, direction, rule, delay);
}

}  // namespace tcpfault::faults

#include "faults/idle.hpp"

#include <memory>

#include "config/fault_params.hpp"

namespace tcpfault::faults {

namespace {
// One watch per connection, seen by a stage on each direction.
struct IdleWatch {
    IdleFault f;
    uint64_t last_activity_us = 0;
    bool tripped = false;
};

class IdleStage final : public Stage {
  public:
    IdleStage(std::string rule, std::shared_ptr<IdleWatch> w)
        : Stage(std::move(rule)), w_(std::move(w)) {}

    Input on_data(size_t, const StageContext& ctx) override {
        if (!w_->tripped) {
            w_->last_activity_us = ctx.now_us;
            return Input::pass;
        }
        trip(ctx);
        return Input::drop;
    }
    void on_end(const StageContext& ctx) override {
        if (!w_->tripped)
            w_->last_activity_us = ctx.now_us;
        else
            trip(ctx);
    }
    // After a drop trip the flow is a blackhole: its FIN or RST goes nowhere.
    bool holds_end() const override {
        return w_->tripped && w_->f.action == IdleFault::Action::drop;
    }
    bool drops_input() const override { return holds_end(); }
    bool endless() const override { return holds_end(); }
    uint64_t wake_us() const override {
        return w_->tripped ? 0
                           : w_->last_activity_us + static_cast<uint64_t>(w_->f.timeout.count());
    }
    void on_wake(const StageContext& ctx) override {
        if (w_->tripped || ctx.now_us < wake_us()) return;  // the other direction's stage won
        w_->tripped = true;
        ctx.conn.log_event("idle timeout", rule(), "");
        if (w_->f.action == IdleFault::Action::close)
            ctx.conn.end({Ending::fin_then_reset, Ending::fin_then_reset}, rule());
    }

  private:
    // A segment after the timeout: the firewall has no state for it.
    void trip(const StageContext& ctx) {
        if (w_->f.action == IdleFault::Action::reset)
            ctx.conn.end({Ending::reset_now, Ending::reset_now}, rule());
    }

    std::shared_ptr<IdleWatch> w_;
};
}  // namespace

std::optional<IdleFault> IdleFault::parse(const config::FaultParams& p) {
    IdleFault x;
    p.require("timeout");
    p.duration("timeout", x.timeout, true);
    p.choice<Action>("action", x.action,
                     {{"reset", Action::reset}, {"drop", Action::drop}, {"close", Action::close}});
    return x;
}

void IdleFault::apply(Connection& c, const std::string& rule) const {
    auto w = std::make_shared<IdleWatch>(IdleWatch{*this, c.now_us(), false});
    c.add_stage(config::Direction::upstream, std::make_unique<IdleStage>(rule, w));
    c.add_stage(config::Direction::downstream, std::make_unique<IdleStage>(rule, w));
}

}  // namespace tcpfault::faults

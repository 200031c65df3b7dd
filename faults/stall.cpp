#include "faults/stall.hpp"

#include <memory>

#include "config/fault_params.hpp"
#include "faults/stage_util.hpp"

namespace tcpfault::faults {

namespace {
const char* then_name(StallFault::Then t) {
    switch (t) {
        case StallFault::Then::resume:
            return "resume";
        case StallFault::Then::reset:
            return "reset";
        case StallFault::Then::close:
            return "close";
    }
    return "resume";
}

class StallStage final : public Stage {
  public:
    // `then_done` is shared by the stages one rule put on both directions: `then` runs once.
    StallStage(std::string rule, const StallFault& f, std::shared_ptr<bool> then_done,
               uint64_t now_us)
        : Stage(std::move(rule)), f_(f), then_done_(std::move(then_done)) {
        if (f_.duration) deadline_us_ = now_us + static_cast<uint64_t>(f_.duration->count());
    }

    bool shapes() const override { return true; }
    bool stops_reading() const override { return f_.mode == StallFault::Mode::hold; }
    bool drops_input() const override { return f_.mode == StallFault::Mode::drop; }
    Input on_data(size_t, const StageContext& ctx) override {
        if (f_.mode == StallFault::Mode::hold) return Input::pass;  // read before it began
        if (f_.renew_on_data && f_.duration)
            deadline_us_ = ctx.now_us + static_cast<uint64_t>(f_.duration->count());
        return Input::drop;
    }
    bool holds_end() const override { return !f_.pass_close; }
    Gate gate(const Held&, const StageContext&) override { return {0, 0, false}; }
    bool endless() const override { return !f_.duration; }
    uint64_t wake_us() const override { return deadline_us_; }
    void on_wake(const StageContext& ctx) override {
        if (deadline_us_ == 0 || ctx.now_us < deadline_us_) return;
        deadline_us_ = 0;
        finish();  // lifted from this direction
        if (*then_done_) return;
        *then_done_ = true;
        ctx.conn.log_event("stall ended", rule(), then_name(f_.then));
        if (f_.then == StallFault::Then::reset)
            ctx.conn.end({Ending::reset_now, Ending::reset_now}, rule());
        else if (f_.then == StallFault::Then::close)
            ctx.conn.end({Ending::fin_then_reset, Ending::fin_then_reset}, rule());
    }

  private:
    StallFault f_;
    std::shared_ptr<bool> then_done_;
    uint64_t deadline_us_ = 0;
};
}  // namespace

std::optional<StallFault> StallFault::parse(const config::FaultParams& p) {
    StallFault x;
    p.direction("direction", x.direction);
    p.duration("duration", x.duration, true);
    p.choice<Mode>("mode", x.mode, {{"hold", Mode::hold}, {"drop", Mode::drop}});
    p.choice<Then>("then", x.then,
                   {{"resume", Then::resume}, {"reset", Then::reset}, {"close", Then::close}});
    // Bytes a drop stall swallowed are gone; resuming after it leaves a hole in the stream that
    // no network makes (a dropping firewall makes the sender retransmit them).
    if (x.mode == Mode::drop && x.then == Then::resume && x.duration)
        p.warn_at("mode",
                  "stall with mode: drop and then: resume loses the bytes sent during the stall "
                  "and then carries on: the peer reads a stream with a hole in it, which no real "
                  "network produces; use mode: hold for a pause, or then: reset / close to end "
                  "the connection after a blackhole");
    // A stall without a duration never ends, so nothing can follow it.
    if (p.has("then") && x.then != Then::resume && !p.has("duration"))
        p.error_at("then",
                   "fault type \"stall\" with then: " + p.text("then") + " requires a duration");
    return x;
}

void StallFault::apply(Connection& c, const std::string& rule) const {
    add_stages<StallStage>(c, direction, rule, *this, std::make_shared<bool>(false), c.now_us());
}

}  // namespace tcpfault::faults

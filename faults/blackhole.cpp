#include "faults/blackhole.hpp"

#include <algorithm>
#include <memory>

#include "config/fault_params.hpp"
#include "faults/packet_util.hpp"

namespace tcpfault::faults {

namespace {
// How long the bytes forwarded before the fault may take to be acknowledged (a peer that
// stopped reading never acknowledges them all), and how often that is looked at.
constexpr uint64_t kFlushBoundUs = 3'000'000;
constexpr uint64_t kFlushPollMaxUs = 16'000;

const char* then_name(BlackholeFault::Then t) {
    switch (t) {
        case BlackholeFault::Then::resume:
            return "resume";
        case BlackholeFault::Then::reset:
            return "reset";
        case BlackholeFault::Then::close:
            return "close";
    }
    return "resume";
}

// One blackhole on one connection, seen by a stage on each direction.
struct Blackhole {
    enum class Phase { flushing, dropping, over };
    BlackholeFault f;
    std::string rule;
    Phase phase = Phase::flushing;
    bool flush_client = false;  // bytes toward the client must arrive before the drop
    bool flush_server = false;
    uint64_t flush_until_us = 0;
    uint64_t next_poll_us = 0;
    uint64_t poll_us = 0;
    uint64_t deadline_us = 0;  // end of the drop (duration), 0: none

    bool flushed(Connection& c) const {
        return (!flush_client || c.unacknowledged(Side::client) == 0) &&
               (!flush_server || c.unacknowledged(Side::server) == 0);
    }

    void start_dropping(Connection& c, uint64_t now, bool timed_out) {
        phase = Phase::dropping;
        std::string what =
            timed_out ? "blackhole (bytes before it still unacknowledged after 3 s)" : "blackhole";
        drop_packets(c, rule, f.side, f.direction, PacketFilter::kAll, what);
        if (f.duration) deadline_us = now + static_cast<uint64_t>(f.duration->count());
    }

    void tick(Connection& c, uint64_t now) {
        if (c.ending()) {
            phase = Phase::over;
            return;
        }
        if (phase == Phase::flushing) {
            if (now < next_poll_us) return;
            bool done = flushed(c);
            if (!done && now < flush_until_us) {
                poll_us = std::min(poll_us == 0 ? 1000 : poll_us * 2, kFlushPollMaxUs);
                next_poll_us = std::min(now + poll_us, flush_until_us);
                return;
            }
            start_dropping(c, now, !done);
            return;
        }
        if (phase == Phase::dropping && deadline_us != 0 && now >= deadline_us) {
            phase = Phase::over;
            c.release_packet_drops(rule);
            c.log_event("blackhole ended", rule, then_name(f.then));
            if (f.then == BlackholeFault::Then::reset)
                c.end({Ending::reset_now, Ending::reset_now}, rule);
            else if (f.then == BlackholeFault::Then::close)
                c.end({Ending::fin_then_reset, Ending::fin_then_reset}, rule);
        }
    }
};

// Holds its direction while the bytes forwarded before the fault are being acknowledged (when
// `gates`), and runs the blackhole's clock.
class BlackholeStage final : public Stage {
  public:
    BlackholeStage(std::shared_ptr<Blackhole> b, bool gates)
        : Stage(b->rule), b_(std::move(b)), gates_(gates), seen_(b_->phase) {}

    bool shapes() const override { return gating(); }
    Gate gate(const Held&, const StageContext& ctx) override {
        if (!gating() || ctx.conn.ending()) return {};
        return {0, b_->next_poll_us, false};
    }
    uint64_t wake_us() const override {
        // The phase changed under the other direction's stage: wake at once, so this pipe
        // counts its shaping stages again.
        if (seen_ != b_->phase) return 1;
        switch (b_->phase) {
            case Blackhole::Phase::flushing:
                return b_->next_poll_us;
            case Blackhole::Phase::dropping:
                return b_->deadline_us;
            case Blackhole::Phase::over:
                return 0;
        }
        return 0;
    }
    void on_wake(const StageContext& ctx) override {
        b_->tick(ctx.conn, ctx.now_us);
        seen_ = b_->phase;
        // The drop itself is held by the connection; the stage is only its clock.
        if (seen_ == Blackhole::Phase::over ||
            (seen_ == Blackhole::Phase::dropping && b_->deadline_us == 0))
            finish();
    }

  private:
    bool gating() const { return gates_ && b_->phase == Blackhole::Phase::flushing; }

    std::shared_ptr<Blackhole> b_;
    bool gates_;
    Blackhole::Phase seen_;
};
}  // namespace

std::optional<BlackholeFault> BlackholeFault::parse(const config::FaultParams& p) {
    BlackholeFault x;
    p.direction("direction", x.direction);
    p.target("side", x.side);
    p.duration("duration", x.duration, true);
    p.choice<Then>("then", x.then,
                   {{"resume", Then::resume}, {"reset", Then::reset}, {"close", Then::close}});
    if (p.has("then") && x.then != Then::resume && !p.has("duration"))
        p.error_at("then", "fault type \"blackhole\" with then: " + p.text("then") +
                               " requires a duration");
    return x;
}

void BlackholeFault::apply(Connection& c, const std::string& rule) const {
    auto b = std::make_shared<Blackhole>();
    b->f = *this;
    b->rule = rule;
    // The sides our packets stop reaching: what was already forwarded to them goes first.
    b->flush_client = hits_client(side) && direction != config::Direction::upstream;
    b->flush_server = hits_server(side) && direction != config::Direction::downstream;
    uint64_t now = c.now_us();
    b->flush_until_us = now + kFlushBoundUs;
    b->next_poll_us = now;
    b->tick(c, now);  // already acknowledged (or nothing to wait for): drops now
    if (b->phase == Blackhole::Phase::dropping && b->deadline_us == 0) return;
    // A stage per direction: the one carrying bytes toward a side being flushed holds them.
    c.add_stage(config::Direction::downstream,
                std::make_unique<BlackholeStage>(b, b->flush_client));
    c.add_stage(config::Direction::upstream, std::make_unique<BlackholeStage>(b, b->flush_server));
}

}  // namespace tcpfault::faults

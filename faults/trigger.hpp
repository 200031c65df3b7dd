// A rule's `when` on one connection: tells the pipe how many bytes of a chunk may pass before
// the fault fires, so `after_bytes` is byte-exact even when the threshold falls inside a read.
//
// Conditions combine as docs/triggers.md says: `data` or `line` is "the match"; `after_bytes`
// and `after` count from the match (or from the start without one). The fault fires at the
// first moment every given condition holds. The bytes that complete a match are forwarded
// before the fault acts. When the byte threshold is reached before the time condition, the
// watched stream is held exactly at the threshold until the time passes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <re2/re2.h>

#include "config/config.hpp"

namespace tcpfault::faults {

// Streaming literal search (KMP): finds `needle` even when split across any chunking.
class LiteralMatcher {
  public:
    explicit LiteralMatcher(std::string needle);
    // Offset just past the first match completed in [data, data+len), or npos.
    size_t feed(const char* data, size_t len);
    // The whole matching state, for Trigger::save/restore.
    size_t state() const { return state_; }
    void set_state(size_t s) { state_ = s; }

  private:
    // KMP over [data, data+len) from the current state.
    size_t step(const char* data, size_t len);

    std::string needle_;
    std::vector<size_t> fail_;
    size_t state_ = 0;
};

// Tests an RE2 regex (linear time, no backtracking) on each line ("\n"-terminated, trailing
// "\r\n" stripped).
class LineMatcher {
  public:
    // Longer lines are matched on their prefix, which also bounds the buffer per connection.
    static constexpr size_t kMaxLine = 4 * 1024;
    explicit LineMatcher(std::shared_ptr<const re2::RE2> re) : re_(std::move(re)) {}
    // Offset just past the first matching line's "\n" in [data, data+len), or npos.
    size_t feed(const char* data, size_t len);

  private:
    std::shared_ptr<const re2::RE2> re_;
    std::string line_;
    bool overflow_ = false;
};

class Trigger {
  public:
    static constexpr size_t npos = static_cast<size_t>(-1);

    // `when` may be null: fires at once (at accept). It watches the rule's direction, or `dir`
    // (one of the two, for `direction: both`, which takes one trigger each).
    explicit Trigger(const config::When* when, std::optional<config::Direction> dir = std::nullopt);

    // matching: waiting for `data`/`line`; counting: bytes and time; armed: every condition
    // holds and `next_byte` waits for a byte to arrive; fired.
    enum class Phase { matching, counting, armed, fired };
    Phase phase() const { return phase_; }
    bool fired() const { return phase_ == Phase::fired; }
    config::Direction direction() const { return dir_; }
    bool watches(config::Direction d) const {
        return phase_ != Phase::fired && dir_ == d && reads_bytes_;
    }

    // True when the time condition (if any) starts counting now; the caller arms a timer for
    // `time_needed()` when this becomes true (at start, or right after a match).
    bool wants_timer() const { return want_timer_; }
    config::Duration time_needed() const { return after_; }
    void timer_armed() { want_timer_ = false; }

    // A rule added to an open connection counts from the connection's start: call before
    // start() with what already happened, so a threshold already passed fires at once.
    // (`data`/`line` can only match bytes still to come.)
    void catch_up(uint64_t bytes_so_far, config::Duration elapsed);

    // Evaluate at start-up: fires immediately when there is nothing to wait for.
    bool start();

    struct Step {
        size_t pass;  // bytes of the chunk that go through before the fault / hold point
        bool fire;    // the fault acts right after `pass` bytes
        bool hold;    // the byte threshold is reached but time is not: hold the rest
    };
    // Feed a chunk of the watched direction. `more`: bytes beyond `len` are already here (the
    // caller feeds only up to where another fault acts), so a next_byte trigger whose
    // conditions hold at `len` fires there.
    Step feed(const char* data, size_t len, bool more = false);

    // Everything feed() changes, for a trigger without a `line` regex (whose line buffer is not
    // worth copying): a chunk can be fed speculatively and undone if another rule's fault
    // fires earlier in it, without copying the trigger.
    struct Saved {
        Phase phase;
        uint64_t counted;
        bool want_timer;
        bool time_ok;
        size_t literal_state;
    };
    bool can_save() const { return !line_.has_value(); }
    Saved save() const {
        return {phase_, counted_, want_timer_, time_ok_, literal_ ? literal_->state() : 0};
    }
    void restore(const Saved& s) {
        phase_ = s.phase;
        counted_ = s.counted;
        want_timer_ = s.want_timer;
        time_ok_ = s.time_ok;
        if (literal_) literal_->set_state(s.literal_state);
    }

    // The `after` timer expired. Returns true if the fault fires now (with next_byte it arms
    // instead: the fault fires on the next byte fed).
    bool time_reached();
    // Bytes counted since the match (or start), for diagnostics.
    uint64_t bytes_counted() const { return counted_; }

  private:
    bool counting_done() const;
    // Every condition holds: fire, or with next_byte wait for the next byte.
    bool conditions_met();

    config::Direction dir_ = config::Direction::upstream;
    Phase phase_ = Phase::counting;
    std::optional<LiteralMatcher> literal_;
    std::optional<LineMatcher> line_;
    std::optional<uint64_t> after_bytes_;
    config::Duration after_{0};
    bool has_after_ = false;
    bool next_byte_ = false;
    bool reads_bytes_ = false;
    bool want_timer_ = false;
    bool time_ok_ = true;
    uint64_t counted_ = 0;
};

}  // namespace tcpfault::faults

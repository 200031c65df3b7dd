// The `when` of every rule applied to one connection, evaluated together (docs/triggers.md).
//
// RuleProgram is what can be worked out once per config snapshot and shared, immutable, by
// every connection that uses it: each rule's conditions flattened, and per direction one
// LiteralSet for all `data` literals and the list of `line` rules. RuleProgram::of() keeps one
// program per snapshot, so a reload or an API change (a new snapshot) gets a new one and the
// old one lives as long as a connection still uses it.
//
// TriggerSet is the per-connection part, kept small: which rules apply and which are done (a
// bit each), per direction the literal automaton's state, the earliest byte threshold and a
// few flags, and the earliest deadline. A rule's trigger state is not stored while it is the
// state it started with, which can be worked out: `matching`, or `counting` from the start
// of the stream (byte offsets are the stream's own, the pipe's forwarded() count) with its
// timer due at the start plus `after`. Only a trigger that left it (a match found, a timer
// passed, armed for next_byte) gets an entry of ~24 bytes.
//
// A chunk is scanned once for all triggers: probe() finds the earliest point where one fires
// or holds the stream (nothing to do in the common case: no literal found, no line matched,
// no threshold inside the chunk, nothing armed), then commit() advances every trigger exactly
// that far, so none counts a byte that a fault firing earlier holds or discards. The result is
// what faults::Trigger (trigger.hpp, the one-rule reference) gives for each rule on its own.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <re2/re2.h>

#include "config/config.hpp"
#include "faults/literal_set.hpp"

namespace tcpfault::faults {

class RuleProgram {
  public:
    // The program of a config snapshot, compiled on first use and shared while in use.
    static std::shared_ptr<const RuleProgram> of(const std::shared_ptr<const config::Proxy>& proxy);
    // The program of one rule of a snapshot, for connections it is added to while open: it
    // holds a copy of that rule alone, so an open connection keeps neither a whole snapshot nor
    // its compiled literals alive per rule added to it (each API change is a new snapshot).
    // Index 0 is the rule.
    static std::shared_ptr<const RuleProgram> of_rule(const config::Proxy& snapshot,
                                                      const config::Rule& rule);
    explicit RuleProgram(std::shared_ptr<const config::Proxy> proxy);

    size_t size() const { return specs_.size(); }
    const config::Rule& rule(size_t i) const { return *specs_[i].rule; }
    // The index of one of this snapshot's rules (by address), or -1.
    long index_of(const config::Rule* r) const;
    const config::Proxy& proxy() const { return *proxy_; }

    // For matching at accept without looking at every rule: the rules every connection gets
    // (enabled, nothing in `match` to check, not proxy-wide), as a bit row of words(); the
    // rules whose `match` must be checked per connection, in order; and whether that has to
    // go rule by rule in order (a `cap` rule, which may hold or reject, is there).
    size_t words() const { return words_; }
    const uint64_t* always() const { return masks_.data(); }
    bool any_always() const { return any_always_; }
    const std::vector<uint32_t>& checked() const { return checked_; }
    bool in_order() const { return in_order_; }
    // Some rule of `applied` is a `clamp` acting on the server socket before it connects.
    bool preconnect_clamp(const uint64_t* applied) const;

    // One rule's `when`, flattened.
    struct Spec {
        const config::Rule* rule = nullptr;
        bool has_when = false;       // false: fires at start
        uint8_t dirs = 0;            // triggers: bit 0 upstream, bit 1 downstream
        bool match = false;          // data or line: waits for a match first
        bool empty_literal = false;  // data: "" matches at the next byte fed
        bool has_after_bytes = false;
        bool timed = false;  // after > 0
        bool next_byte = false;
        bool reads = false;  // reads bytes: data, line, after_bytes or next_byte
        uint64_t after_bytes = 0;
        uint64_t after_us = 0;
        int32_t literal[2] = {-1, -1};  // its literal in each direction's LiteralSet
        const re2::RE2* line = nullptr;
        // What it adds, in its starting state, to TriggerSet's per-direction summary.
        uint8_t flags0[2] = {0, 0};
        uint64_t threshold0[2] = {UINT64_MAX, UINT64_MAX};
        uint64_t timer0 = 0;  // its `after` from the start, when it counts from the start
    };
    const Spec& spec(size_t i) const { return specs_[i]; }
    // Per direction (0 upstream, 1 downstream): the `data` literals (Spec::literal indexes).
    const LiteralSet* literals(int d) const { return literals_[d].get(); }

    // Bit rows: the rules that fire when started at accept (nothing to wait for), and those
    // armed then (next_byte with nothing else to wait for).
    const uint64_t* start_fire() const { return masks_.data() + words_; }
    const uint64_t* start_arm() const { return masks_.data() + 2 * words_; }

  private:
    std::shared_ptr<const config::Proxy> proxy_;
    std::vector<Spec> specs_;
    size_t words_ = 1;
    std::vector<uint64_t> masks_;  // always, start_fire, start_arm, preconnect clamp
    std::vector<uint32_t> checked_;
    bool any_always_ = false;
    bool in_order_ = false;
    std::unique_ptr<LiteralSet> literals_[2];
};

class TriggerSet {
  public:
    // Bytes forwarded so far in each direction (upstream, downstream): the stream offsets.
    using Offsets = std::array<uint64_t, 2>;

    TriggerSet();  // no rules
    explicit TriggerSet(std::shared_ptr<const RuleProgram> program);
    TriggerSet(TriggerSet&&) noexcept;
    TriggerSet& operator=(TriggerSet&&) noexcept;
    ~TriggerSet();

    bool empty() const { return !program_; }
    const RuleProgram* program() const { return program_.get(); }
    // Rules are applied before start(): one, or a bit row of program()->words() words.
    void apply(size_t rule);
    void apply_rows(const uint64_t* rows);
    const uint64_t* applied_rows() const { return big_ ? big_.get() : small_; }
    bool applied(size_t rule) const { return program_ && bit(0, rule); }
    bool done(size_t rule) const { return bit(1, rule); }
    // The applied rules, in order: fn(index).
    template <class Fn>
    void each_applied(Fn&& fn) const;

    // Starts the triggers of every applied rule; the rules that fire right away are appended to
    // `fire`, in order (and count as done). `catch_up`: the rules were added to an open
    // connection, so byte thresholds count from the stream's start and time from
    // `time_base_us` (the connection's start); otherwise time counts from `time_base_us` (now).
    void start(bool catch_up, uint64_t time_base_us, uint64_t now_us, const Offsets& off,
               std::vector<uint32_t>& fire);

    // Some trigger reads the bytes of this direction.
    bool watches(config::Direction d) const { return !empty() && (dir_[index(d)].flags & kWatch); }

    // The earliest point in [p, p+n) (at stream offset `off`) where a trigger fires or holds
    // the stream: Trigger::feed() semantics, ties going to the firing one.
    struct Probe {
        bool event = false;  // something fires or holds inside the chunk
        size_t pass = 0;     // where
        bool fire = false;
        bool hold = false;
        bool touched = false;  // some trigger changes state in this chunk (matched, armed)
    };
    Probe probe(config::Direction d, const char* p, size_t n, uint64_t off) const;
    // Advances this direction's triggers over [p, p+upto), upto <= n being the earliest event
    // of every set's probe of this chunk (n if none), `touched` what this set's probe said.
    // Rules firing at `upto` are appended to `fire`, in order, and count as done. Returns true
    // if the earliest deadline moved.
    bool commit(config::Direction d, const char* p, size_t n, size_t upto, bool touched,
                uint64_t off, uint64_t now_us, std::vector<uint32_t>& fire);

    // The earliest pending `after` deadline (µs of Deadlines::now_us), 0 if none.
    uint64_t next_deadline() const { return deadline_; }
    // The lowest-numbered rule whose timer is due at `now_us`: its time condition now holds.
    // `fire` says whether it fires now (else it may wait for bytes, or be armed).
    struct Due {
        uint32_t rule;
        bool fire;
    };
    std::optional<Due> next_due(uint64_t now_us, const Offsets& off);

    // A rule fired (elsewhere) or was lifted: nothing of it stays.
    void finish(size_t rule);
    // A rule was lifted (disabled, deleted or replaced): done, and no longer applied.
    void lift(size_t rule);

    // For tests and diagnostics: the state of one rule's trigger in a direction.
    enum class Phase : uint8_t { matching, counting, armed, fired };
    Phase phase(size_t rule, config::Direction d) const;

    // A direction's summary flags: some trigger reads it, one is armed, waits on a literal, a
    // line, an empty literal (which matches at the next byte).
    static constexpr uint8_t kWatch = 1, kArmed = 2, kLiteral = 4, kLine = 8, kEmpty = 16;

  private:
    struct DirState {
        uint64_t threshold = UINT64_MAX;  // earliest byte threshold of a counting trigger
        LiteralSet::State ac = 0;         // the literal automaton
        uint8_t flags = 0;
    };
    // A trigger that left its starting state.
    struct Live {
        uint32_t rule;
        uint8_t dir;
        Phase phase;
        bool time_ok;
        uint64_t base;      // stream offset its byte count starts from
        uint64_t deadline;  // its `after` timer, 0 if none pending
    };
    struct Extra;  // live triggers and line buffers, allocated when first needed
    // A trigger's state, materialized.
    struct M {
        Phase phase;
        bool time_ok;
        uint64_t base;
        uint64_t deadline;
    };
    struct Step {
        size_t pass;
        bool fire;
        bool hold;
    };

    static int index(config::Direction d) { return d == config::Direction::upstream ? 0 : 1; }
    bool bit(int which, size_t rule) const;
    // Row 0: applied, row 1: done.
    uint64_t* row(int which) { return (big_ ? big_.get() : small_) + which * program_->words(); }
    void set_bit(int which, size_t rule);
    M initial(size_t rule) const;
    M get(size_t rule, int d) const;
    void put(size_t rule, int d, const M& m);
    Extra& extra();
    void recompute();
    static Step feed(const RuleProgram::Spec& s, M& m, uint64_t off, size_t len, bool more,
                     size_t match_end, uint64_t now_us);
    // First match end (in [0, n]) of each waiting trigger of direction d over [p, p+n).
    void find_matches(int d, const char* p, size_t n) const;
    size_t match_end(size_t rule, int d) const;

    std::shared_ptr<const RuleProgram> program_;
    // Two bit rows (applied, done): inline for up to 64 rules, else on the heap.
    uint64_t small_[2] = {0, 0};
    std::unique_ptr<uint64_t[]> big_;
    uint64_t time_base_us_ = 0;
    uint64_t deadline_ = 0;
    DirState dir_[2];
    std::unique_ptr<Extra> extra_;
};

template <class Fn>
void TriggerSet::each_applied(Fn&& fn) const {
    if (!program_) return;
    const uint64_t* rows = applied_rows();
    for (size_t w = 0; w < program_->words(); ++w)
        for (uint64_t b = rows[w]; b != 0; b &= b - 1)
            fn(w * 64 + static_cast<size_t>(__builtin_ctzll(b)));
}

}  // namespace tcpfault::faults

#include "faults/trigger_set.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "faults/fault_list.hpp"
#include "faults/trigger.hpp"

namespace tcpfault::faults {

namespace {

constexpr size_t kNone = static_cast<size_t>(-1);

// The first match end of each literal and line rule in the chunk being looked at; per
// thread (each loop scans one chunk at a time), reset after use.
struct Scratch {
    std::vector<size_t> literal;  // by literal id
    std::vector<uint32_t> literal_set;
    std::vector<size_t> line;  // by rule index
    std::vector<uint32_t> line_set;
    void clear() {
        for (uint32_t i : literal_set) literal[i] = kNone;
        for (uint32_t i : line_set) line[i] = kNone;
        literal_set.clear();
        line_set.clear();
    }
};
thread_local Scratch g_scratch;

bool line_matches(const re2::RE2& re, std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return RE2::PartialMatch(re2::StringPiece(line.data(), line.size()), re);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RuleProgram

std::shared_ptr<const RuleProgram> RuleProgram::of(
    const std::shared_ptr<const config::Proxy>& proxy) {
    // Keyed by the snapshot's address; an entry whose program has gone (and whose snapshot
    // may have been freed and its address reused) is compiled afresh.
    static std::mutex mu;
    static std::map<const config::Proxy*, std::weak_ptr<const RuleProgram>> cache;
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = cache.begin(); it != cache.end();)
        it = it->second.expired() && it->first != proxy.get() ? cache.erase(it) : std::next(it);
    std::weak_ptr<const RuleProgram>& slot = cache[proxy.get()];
    if (auto p = slot.lock()) return p;
    auto p = std::make_shared<const RuleProgram>(proxy);
    slot = p;
    return p;
}

std::shared_ptr<const RuleProgram> RuleProgram::of_rule(const config::Proxy& snapshot,
                                                        const config::Rule& rule) {
    auto one = std::make_shared<config::Proxy>();
    one->name = snapshot.name;
    one->listen = snapshot.listen;
    one->upstream = snapshot.upstream;
    one->protocol = snapshot.protocol;
    one->connect_timeout = snapshot.connect_timeout;
    one->on_upstream_error = snapshot.on_upstream_error;
    one->pos = snapshot.pos;
    one->upstream_pos = snapshot.upstream_pos;
    one->rules.push_back(rule);
    return std::make_shared<const RuleProgram>(std::move(one));
}

RuleProgram::RuleProgram(std::shared_ptr<const config::Proxy> proxy) : proxy_(std::move(proxy)) {
    std::vector<std::string> lits[2];
    std::unordered_map<std::string, int32_t> ids[2];  // rules with the same literal share it
    specs_.reserve(proxy_->rules.size());
    for (const config::Rule& r : proxy_->rules) {
        Spec s;
        s.rule = &r;
        if (r.when) {
            const config::When& w = *r.when;
            s.has_when = true;
            s.dirs = w.direction == config::Direction::both       ? 3
                     : w.direction == config::Direction::upstream ? 1
                                                                  : 2;
            bool line = w.line && w.line_re;
            s.match = w.data.has_value() || line;
            s.empty_literal = w.data && w.data->empty();
            if (line) s.line = w.line_re.get();
            s.has_after_bytes = w.after_bytes.has_value();
            s.after_bytes = w.after_bytes.value_or(0);
            s.timed = w.after && w.after->count() > 0;
            s.after_us = w.after ? static_cast<uint64_t>(w.after->count()) : 0;
            s.next_byte = w.next_byte;
            s.reads = s.match || s.has_after_bytes || s.next_byte;
            if (w.data && !w.data->empty()) {
                for (int d = 0; d < 2; ++d) {
                    if (!(s.dirs & (1 << d))) continue;
                    auto [it, added] =
                        ids[d].emplace(*w.data, static_cast<int32_t>(lits[d].size()));
                    if (added) lits[d].push_back(*w.data);
                    s.literal[d] = it->second;
                }
            }
        }
        specs_.push_back(s);
    }
    for (int d = 0; d < 2; ++d)
        if (!lits[d].empty()) literals_[d] = std::make_unique<LiteralSet>(std::move(lits[d]));

    words_ = std::max<size_t>(1, (specs_.size() + 63) / 64);
    masks_.assign(4 * words_, 0);
    auto set = [this](int row, size_t i) {
        masks_[row * words_ + i / 64] |= uint64_t{1} << (i % 64);
    };
    for (size_t i = 0; i < specs_.size(); ++i) {
        Spec& s = specs_[i];
        const config::Rule& r = *s.rule;
        // Its starting state, summarized (see TriggerSet::recompute).
        for (int d = 0; d < 2; ++d) {
            if (!s.has_when || !(s.dirs & (1 << d))) continue;
            if (s.reads) s.flags0[d] |= TriggerSet::kWatch;
            if (s.match)
                s.flags0[d] |= s.empty_literal     ? TriggerSet::kEmpty
                               : s.line != nullptr ? TriggerSet::kLine
                                                   : TriggerSet::kLiteral;
        }
        for (int d = 0; d < 2; ++d)
            if (s.has_when && (s.dirs & (1 << d)) && !s.match && s.has_after_bytes)
                s.threshold0[d] = s.after_bytes;
        if (s.has_when && !s.match && s.timed) s.timer0 = s.after_us;
        // Started at accept (offset 0, time from now): fires, or armed, right away?
        bool untimed_counting =
            s.has_when && !s.match && !s.timed && (!s.has_after_bytes || s.after_bytes == 0);
        if (!s.has_when || (untimed_counting && !s.next_byte)) set(1, i);
        if (untimed_counting && s.next_byte) set(2, i);
        const auto* clamp = std::get_if<ClampFault>(&r.fault);
        if (clamp != nullptr && !r.when && hits_server(clamp->side)) set(3, i);
        // Matching at accept.
        bool wide = std::holds_alternative<RefuseFault>(r.fault) ||
                    std::holds_alternative<RestartFault>(r.fault);
        if (std::holds_alternative<CapFault>(r.fault)) in_order_ = true;
        if (!r.enabled || wide) continue;
        const config::Match& m = r.match;
        bool unconditional = m.clients.empty() && m.channel == config::Channel::any &&
                             m.connections.kind == config::ConnectionsMatch::Kind::any &&
                             !m.probability && !m.schedule && !m.limit;
        if (unconditional && !std::holds_alternative<CapFault>(r.fault)) {
            set(0, i);
            any_always_ = true;
        } else {
            checked_.push_back(static_cast<uint32_t>(i));
        }
    }
}

bool RuleProgram::preconnect_clamp(const uint64_t* applied) const {
    for (size_t w = 0; w < words_; ++w)
        if (applied[w] & masks_[3 * words_ + w]) return true;
    return false;
}

long RuleProgram::index_of(const config::Rule* r) const {
    const auto& rules = proxy_->rules;
    if (rules.empty() || r < rules.data() || r >= rules.data() + rules.size()) return -1;
    return static_cast<long>(r - rules.data());
}

// ---------------------------------------------------------------------------------------------
// TriggerSet

struct TriggerSet::Extra {
    std::vector<Live> live;
    // The line being read in each direction (its first kMaxLine bytes), for `line` rules.
    std::string line[2];
};

TriggerSet::TriggerSet(std::shared_ptr<const RuleProgram> program) : program_(std::move(program)) {
    if (program_->size() > 64) {
        size_t words = (program_->size() + 63) / 64;
        big_ = std::make_unique<uint64_t[]>(2 * words);
    }
}

TriggerSet::TriggerSet() = default;
TriggerSet::~TriggerSet() = default;
TriggerSet::TriggerSet(TriggerSet&&) noexcept = default;
TriggerSet& TriggerSet::operator=(TriggerSet&&) noexcept = default;

bool TriggerSet::bit(int which, size_t rule) const {
    if (!big_) return (small_[which] >> rule) & 1;
    size_t words = (program_->size() + 63) / 64;
    return (big_[which * words + rule / 64] >> (rule % 64)) & 1;
}

void TriggerSet::set_bit(int which, size_t rule) {
    if (!big_) {
        small_[which] |= uint64_t{1} << rule;
        return;
    }
    size_t words = (program_->size() + 63) / 64;
    big_[which * words + rule / 64] |= uint64_t{1} << (rule % 64);
}

void TriggerSet::apply(size_t rule) {
    set_bit(0, rule);
}

void TriggerSet::apply_rows(const uint64_t* rows) {
    uint64_t* a = big_ ? big_.get() : small_;
    for (size_t w = 0; w < program_->words(); ++w) a[w] |= rows[w];
}

TriggerSet::Extra& TriggerSet::extra() {
    if (!extra_) extra_ = std::make_unique<Extra>();
    return *extra_;
}

TriggerSet::M TriggerSet::initial(size_t rule) const {
    const RuleProgram::Spec& s = program_->spec(rule);
    if (s.match) return M{Phase::matching, true, 0, 0};
    return M{Phase::counting, !s.timed, 0, s.timed ? time_base_us_ + s.after_us : 0};
}

TriggerSet::M TriggerSet::get(size_t rule, int d) const {
    if (done(rule)) return M{Phase::fired, true, 0, 0};
    if (extra_) {
        for (const Live& l : extra_->live)
            if (l.rule == rule && l.dir == d) return M{l.phase, l.time_ok, l.base, l.deadline};
    }
    return initial(rule);
}

void TriggerSet::put(size_t rule, int d, const M& m) {
    if (m.phase == Phase::fired) {
        finish(rule);
        return;
    }
    M init = initial(rule);
    bool is_init = m.phase == init.phase && m.time_ok == init.time_ok && m.base == init.base &&
                   m.deadline == init.deadline;
    if (!extra_ && is_init) return;
    auto& live = extra().live;
    auto it = std::find_if(live.begin(), live.end(),
                           [&](const Live& l) { return l.rule == rule && l.dir == d; });
    if (is_init) {
        if (it != live.end()) live.erase(it);
        return;
    }
    Live l{static_cast<uint32_t>(rule),
           static_cast<uint8_t>(d),
           m.phase,
           m.time_ok,
           m.base,
           m.deadline};
    if (it != live.end())
        *it = l;
    else
        live.push_back(l);
}

void TriggerSet::finish(size_t rule) {
    if (!program_ || done(rule)) return;
    set_bit(1, rule);
    if (extra_) std::erase_if(extra_->live, [rule](const Live& l) { return l.rule == rule; });
    recompute();
}

void TriggerSet::lift(size_t rule) {
    if (!program_) return;
    finish(rule);
    row(0)[rule / 64] &= ~(uint64_t{1} << (rule % 64));
}

TriggerSet::Phase TriggerSet::phase(size_t rule, config::Direction d) const {
    return get(rule, index(d)).phase;
}

// What the fast paths look at: per direction, whether anything reads it, the earliest byte
// threshold, whether a trigger is armed or waiting on a literal or a line; and the earliest
// deadline.
void TriggerSet::recompute() {
    for (DirState& ds : dir_) {
        ds.threshold = UINT64_MAX;
        ds.flags = 0;
    }
    deadline_ = 0;
    auto deadline = [this](uint64_t t) {
        if (t != 0 && (deadline_ == 0 || t < deadline_)) deadline_ = t;
    };
    // Rules in their starting state: what the program summarized for each, folded.
    const std::vector<Live>* live = extra_ && !extra_->live.empty() ? &extra_->live : nullptr;
    auto is_live = [live](size_t i) {
        return live != nullptr &&
               std::any_of(live->begin(), live->end(), [i](const Live& l) { return l.rule == i; });
    };
    const uint64_t* a = applied_rows();
    const uint64_t* dn = a + program_->words();
    uint64_t timer = UINT64_MAX;
    for (size_t w = 0; w < program_->words(); ++w) {
        for (uint64_t b = a[w] & ~dn[w]; b != 0; b &= b - 1) {
            size_t i = w * 64 + static_cast<size_t>(__builtin_ctzll(b));
            if (is_live(i)) continue;
            const RuleProgram::Spec& s = program_->spec(i);
            dir_[0].flags |= s.flags0[0];
            dir_[1].flags |= s.flags0[1];
            dir_[0].threshold = std::min(dir_[0].threshold, s.threshold0[0]);
            dir_[1].threshold = std::min(dir_[1].threshold, s.threshold0[1]);
            if (s.timer0 != 0) timer = std::min(timer, s.timer0);
        }
    }
    if (timer != UINT64_MAX) deadline(time_base_us_ + timer);
    if (live == nullptr) return;
    // Rules with a trigger past its starting state.
    each_applied([&](size_t i) {
        if (done(i) || !is_live(i)) return;
        const RuleProgram::Spec& s = program_->spec(i);
        for (int d = 0; d < 2; ++d) {
            if (!(s.dirs & (1 << d))) continue;
            M m = get(i, d);
            DirState& ds = dir_[d];
            if (s.reads) ds.flags |= kWatch;
            deadline(m.deadline);
            switch (m.phase) {
                case Phase::matching:
                    ds.flags |= s.empty_literal ? kEmpty : s.line != nullptr ? kLine : kLiteral;
                    break;
                case Phase::counting:
                    if (s.has_after_bytes) {
                        uint64_t t = m.base + s.after_bytes;
                        if (t < m.base) t = UINT64_MAX;  // 16 EiB: never
                        ds.threshold = std::min(ds.threshold, t);
                    }
                    break;
                case Phase::armed:
                    ds.flags |= kArmed;
                    break;
                case Phase::fired:
                    break;
            }
        }
    });
}

void TriggerSet::start(bool catch_up, uint64_t time_base_us, uint64_t now_us, const Offsets& off,
                       std::vector<uint32_t>& fire) {
    if (!program_) return;
    time_base_us_ = time_base_us;
    if (!catch_up && off[0] == 0 && off[1] == 0) {
        // At accept, what each rule does when started is known from the program alone.
        const uint64_t* a = applied_rows();
        const uint64_t* f = program_->start_fire();
        const uint64_t* arm = program_->start_arm();
        for (size_t w = 0; w < program_->words(); ++w) {
            for (uint64_t b = a[w] & f[w] & ~row(1)[w]; b != 0; b &= b - 1) {
                size_t i = w * 64 + static_cast<size_t>(__builtin_ctzll(b));
                set_bit(1, i);
                fire.push_back(static_cast<uint32_t>(i));
            }
            for (uint64_t b = a[w] & arm[w] & ~row(1)[w]; b != 0; b &= b - 1) {
                size_t i = w * 64 + static_cast<size_t>(__builtin_ctzll(b));
                for (int d = 0; d < 2; ++d)
                    if (program_->spec(i).dirs & (1 << d)) put(i, d, M{Phase::armed, true, 0, 0});
            }
        }
        recompute();
        return;
    }
    each_applied([&](size_t i) {
        if (done(i)) return;
        const RuleProgram::Spec& s = program_->spec(i);
        if (!s.has_when) {
            set_bit(1, i);
            fire.push_back(static_cast<uint32_t>(i));
            return;
        }
        bool fires = false;
        for (int d = 0; d < 2; ++d) {
            if (!(s.dirs & (1 << d))) continue;
            M m = initial(i);
            if (m.phase == Phase::counting) {
                // Trigger::catch_up + start: time already passed counts; bytes count from
                // the stream's start (off is 0 for a connection that just opened).
                if (s.timed && catch_up && m.deadline <= now_us) {
                    m.time_ok = true;
                    m.deadline = 0;
                }
                if (m.time_ok && (!s.has_after_bytes || off[d] >= s.after_bytes)) {
                    if (s.next_byte)
                        m.phase = Phase::armed;
                    else
                        fires = true;
                }
            }
            put(i, d, m);
        }
        if (fires) {
            set_bit(1, i);
            if (extra_) std::erase_if(extra_->live, [i](const Live& l) { return l.rule == i; });
            fire.push_back(static_cast<uint32_t>(i));
        }
    });
    recompute();
}

// Trigger::feed() on a materialized state, the match (if any) found by the caller.
TriggerSet::Step TriggerSet::feed(const RuleProgram::Spec& s, M& m, uint64_t off, size_t len,
                                  bool more, size_t match_end, uint64_t now_us) {
    if (m.phase == Phase::armed) {
        if (len == 0 && !more) return {0, false, false};
        m.phase = Phase::fired;
        return {0, true, false};
    }
    size_t pos = 0;
    if (m.phase == Phase::matching) {
        if (match_end == kNone || match_end > len) return {len, false, false};
        pos = match_end;
        m.phase = Phase::counting;
        m.base = off + pos;
        m.time_ok = !s.timed;
        m.deadline = s.timed ? now_us + s.after_us : 0;
    }
    if (m.phase != Phase::counting) return {len, false, false};
    if (s.has_after_bytes) {
        uint64_t counted = off + pos - m.base;
        uint64_t need = s.after_bytes > counted ? s.after_bytes - counted : 0;
        if (need > len - pos) return {len, false, false};
        pos += static_cast<size_t>(need);
    }
    if (m.time_ok) {
        if (s.next_byte && pos == len && !more) {
            m.phase = Phase::armed;  // fires on the next byte
            return {len, false, false};
        }
        m.phase = Phase::fired;
        return {pos, true, false};
    }
    // Only the time condition is missing: hold at the byte threshold if there is one.
    if (s.has_after_bytes) return {pos, false, true};
    return {len, false, false};
}

void TriggerSet::find_matches(int d, const char* p, size_t n) const {
    Scratch& sc = g_scratch;
    sc.clear();
    const DirState& ds = dir_[d];
    if (ds.flags & kLiteral) {
        const LiteralSet& lits = *program_->literals(d);
        if (sc.literal.size() < lits.size()) sc.literal.resize(lits.size(), kNone);
        lits.scan(ds.ac, p, n, [&](size_t end, size_t id) {
            size_t& e = sc.literal[id];
            if (e == kNone) sc.literal_set.push_back(static_cast<uint32_t>(id));
            if (end < e) e = end;
        });
    }
    if (ds.flags & kLine) {
        if (sc.line.size() < program_->size()) sc.line.resize(program_->size(), kNone);
        // The line rules still waiting here, and each line of the chunk (the first one
        // continuing what earlier chunks left) tested against them until each has matched.
        std::vector<uint32_t> waiting;
        each_applied([&](size_t i) {
            const RuleProgram::Spec& s = program_->spec(i);
            if (s.line != nullptr && (s.dirs & (1 << d)) && get(i, d).phase == Phase::matching)
                waiting.push_back(static_cast<uint32_t>(i));
        });
        static const std::string kNothing;
        const std::string& held = extra_ ? extra_->line[d] : kNothing;
        std::string first;
        size_t start = 0;
        while (start < n && !waiting.empty()) {
            const void* nl = std::memchr(p + start, '\n', n - start);
            if (nl == nullptr) break;
            size_t end = static_cast<size_t>(static_cast<const char*>(nl) - p);
            std::string_view line(p + start, end - start);
            if (start == 0 && !held.empty()) {
                first = held;
                first.append(line.substr(
                    0, LineMatcher::kMaxLine - std::min(LineMatcher::kMaxLine, held.size())));
                line = first;
            }
            if (line.size() > LineMatcher::kMaxLine) line = line.substr(0, LineMatcher::kMaxLine);
            std::erase_if(waiting, [&](uint32_t i) {
                if (!line_matches(*program_->spec(i).line, line)) return false;
                sc.line[i] = end + 1;
                sc.line_set.push_back(i);
                return true;
            });
            start = end + 1;
        }
    }
}

size_t TriggerSet::match_end(size_t rule, int d) const {
    const RuleProgram::Spec& s = program_->spec(rule);
    if (s.empty_literal) return 0;
    if (s.line != nullptr) return g_scratch.line.size() > rule ? g_scratch.line[rule] : kNone;
    if (s.literal[d] < 0) return kNone;
    auto id = static_cast<size_t>(s.literal[d]);
    return g_scratch.literal.size() > id ? g_scratch.literal[id] : kNone;
}

TriggerSet::Probe TriggerSet::probe(config::Direction dir, const char* p, size_t n,
                                    uint64_t off) const {
    Probe out;
    int d = index(dir);
    const DirState& ds = dir_[d];
    if (empty() || !(ds.flags & kWatch)) return out;
    bool maybe = (ds.flags & (kArmed | kEmpty)) || ds.threshold <= off + n;
    if (ds.flags & (kLiteral | kLine)) {
        find_matches(d, p, n);
        maybe = maybe || !g_scratch.literal_set.empty() || !g_scratch.line_set.empty();
    }
    if (!maybe) return out;
    // Something may happen in this chunk: each trigger of this direction on its own, as
    // Session's scan did with one Trigger per rule.
    out.touched = true;
    uint64_t now = 0;  // deadlines set here are discarded
    each_applied([&](size_t i) {
        const RuleProgram::Spec& s = program_->spec(i);
        if (done(i) || !s.has_when || !(s.dirs & (1 << d)) || !s.reads) return;
        M m = get(i, d);
        Step st = feed(s, m, off, n, false, match_end(i, d), now);
        if (!(st.fire || st.hold)) return;
        if (!out.event || st.pass < out.pass || (st.pass == out.pass && st.fire)) {
            out.event = true;
            out.pass = st.pass;
            out.fire = st.fire;
            out.hold = st.hold && !st.fire;
        }
    });
    return out;
}

bool TriggerSet::commit(config::Direction dir, const char* p, size_t n, size_t upto, bool touched,
                        uint64_t off, uint64_t now_us, std::vector<uint32_t>& fire) {
    int d = index(dir);
    DirState& ds = dir_[d];
    if (empty() || !(ds.flags & kWatch)) return false;
    uint64_t before = deadline_;
    // Nothing changes state in a chunk no probe touched, whatever part of it goes through.
    if (touched) {
        if (ds.flags & (kLiteral | kLine)) find_matches(d, p, upto);
        bool more = upto < n;
        each_applied([&](size_t i) {
            const RuleProgram::Spec& s = program_->spec(i);
            if (done(i) || !s.has_when || !(s.dirs & (1 << d)) || !s.reads) return;
            M m = get(i, d);
            M was = m;
            Step st = feed(s, m, off, upto, more, match_end(i, d), now_us);
            if (st.fire) {
                set_bit(1, i);
                if (extra_) std::erase_if(extra_->live, [i](const Live& l) { return l.rule == i; });
                fire.push_back(static_cast<uint32_t>(i));
                return;
            }
            if (m.phase != was.phase || m.base != was.base || m.time_ok != was.time_ok ||
                m.deadline != was.deadline)
                put(i, d, m);
        });
    }
    // The literal automaton and the line buffer move on to `upto`.
    if (ds.flags & kLiteral) ds.ac = program_->literals(d)->advance(ds.ac, p, upto);
    if (ds.flags & kLine) {
        std::string& line = extra().line[d];
        const void* nl = upto > 0 ? memrchr(p, '\n', upto) : nullptr;
        size_t from = 0;
        if (nl != nullptr) {
            line.clear();
            from = static_cast<size_t>(static_cast<const char*>(nl) - p) + 1;
        }
        size_t room = LineMatcher::kMaxLine - std::min(LineMatcher::kMaxLine, line.size());
        line.append(p + from, std::min(room, upto - from));
    }
    if (touched) recompute();
    return deadline_ != before;
}

std::optional<TriggerSet::Due> TriggerSet::next_due(uint64_t now_us, const Offsets& off) {
    if (empty() || deadline_ == 0 || deadline_ > now_us) return std::nullopt;
    std::optional<Due> out;
    each_applied([&](size_t i) {
        if (out || done(i)) return;
        const RuleProgram::Spec& s = program_->spec(i);
        if (!s.has_when) return;
        bool due = false;
        for (int d = 0; d < 2; ++d) {
            if (!(s.dirs & (1 << d))) continue;
            M m = get(i, d);
            due = due || (m.deadline != 0 && m.deadline <= now_us);
        }
        if (!due) return;
        // Trigger::time_reached() on each trigger of the rule.
        bool fires = false;
        for (int d = 0; d < 2; ++d) {
            if (!(s.dirs & (1 << d))) continue;
            M m = get(i, d);
            // Each direction's trigger has its own timer (a `both` rule matched in each
            // direction at its own time).
            if (m.deadline == 0 || m.deadline > now_us) continue;
            m.time_ok = true;
            m.deadline = 0;
            if (m.phase == Phase::counting &&
                (!s.has_after_bytes || off[d] - m.base >= s.after_bytes)) {
                if (s.next_byte)
                    m.phase = Phase::armed;
                else
                    fires = true;
            }
            put(i, d, m);
        }
        if (fires) {
            set_bit(1, i);
            if (extra_) std::erase_if(extra_->live, [i](const Live& l) { return l.rule == i; });
        }
        out = Due{static_cast<uint32_t>(i), fires};
    });
    recompute();
    return out;
}

}  // namespace tcpfault::faults

// TriggerSet (all rules of a connection at once, faults/trigger_set.hpp) against the reference:
// one faults::Trigger per rule and direction, scanned the way Session did before the rule
// engine shared its work (probe copies, then feed each exactly to the earliest event), with a
// timer per trigger. Random rules (data, line, after_bytes, after, next_byte, both directions,
// runtime rules catching up), random streams, random chunking, holds released by timers: the
// two must report the same faults at the same stream offsets and times.
#include <doctest/doctest.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <re2/re2.h>

#include "faults/trigger.hpp"
#include "faults/trigger_set.hpp"

using namespace tcpfault;
using faults::Trigger;
using faults::TriggerSet;

namespace {

constexpr config::Direction kDirs[2] = {config::Direction::upstream, config::Direction::downstream};

// What happened: a rule fired (at start, in a scan, on a timer), with both stream offsets.
struct Event {
    int rule;
    char how;  // 's'tart, 'b'ytes, 't'imer
    uint64_t up, down, now;
    bool operator==(const Event&) const = default;
};

std::string show(const std::vector<Event>& v) {
    std::string out;
    for (const Event& e : v)
        out += std::to_string(e.rule) + e.how + "@" + std::to_string(e.up) + "/" +
               std::to_string(e.down) + "t" + std::to_string(e.now) + " ";
    return out;
}

struct ScanOut {
    size_t pass;
    bool fired;
    bool hold;
};

// ---- the reference: Trigger objects, the pre-engine Session algorithm

struct Reference {
    struct Rule {
        int id;
        std::vector<std::pair<int, Trigger>> trig;  // (direction index, trigger)
        std::vector<uint64_t> deadline;
        bool done = false;
    };
    std::vector<Rule> rules;
    std::vector<int> pending;

    void add(const config::Rule& r, int id) {
        Rule x;
        x.id = id;
        const config::When* w = r.when ? &*r.when : nullptr;
        if (w != nullptr && w->direction == config::Direction::both) {
            x.trig.emplace_back(0, Trigger(w, config::Direction::upstream));
            x.trig.emplace_back(1, Trigger(w, config::Direction::downstream));
        } else {
            int d = w != nullptr && w->direction == config::Direction::downstream ? 1 : 0;
            x.trig.emplace_back(d, Trigger(w));
        }
        x.deadline.assign(x.trig.size(), 0);
        rules.push_back(std::move(x));
    }
    void arm(uint64_t now) {
        for (Rule& r : rules)
            for (size_t j = 0; j < r.trig.size(); ++j) {
                Trigger& t = r.trig[j].second;
                if (!t.wants_timer()) continue;
                t.timer_armed();
                r.deadline[j] = now + static_cast<uint64_t>(t.time_needed().count());
            }
    }
    // Starts rules [from, end); catch_up with what the connection already did.
    std::vector<int> start(size_t from, bool catch_up, const uint64_t off[2], uint64_t elapsed,
                           uint64_t now) {
        std::vector<int> fired;
        for (size_t i = from; i < rules.size(); ++i) {
            bool f = false;
            for (auto& [d, t] : rules[i].trig) {
                if (catch_up) t.catch_up(off[d], config::Duration(elapsed));
                f = t.start() || f;
            }
            if (f) {
                rules[i].done = true;
                fired.push_back(rules[i].id);
            }
        }
        arm(now);
        return fired;
    }
    Trigger* trigger(Rule& r, int d) {
        if (r.done) return nullptr;
        for (auto& [td, t] : r.trig)
            if (td == d && t.watches(kDirs[d])) return &t;
        return nullptr;
    }
    bool watches(int d) {
        for (Rule& r : rules)
            if (trigger(r, d) != nullptr) return true;
        return false;
    }
    ScanOut scan(int d, const char* p, size_t n, uint64_t now) {
        size_t best = n;
        bool any = false, hold = false;
        for (Rule& r : rules) {
            Trigger* t = trigger(r, d);
            if (t == nullptr) continue;
            Trigger copy = *t;
            auto st = copy.feed(p, n);
            if ((st.fire || st.hold) && (!any || st.pass < best || (st.pass == best && st.fire))) {
                best = st.pass;
                any = true;
                hold = st.hold && !st.fire;
            }
        }
        if (!any) {
            for (Rule& r : rules)
                if (Trigger* t = trigger(r, d)) t->feed(p, n);
            arm(now);
            return {n, false, false};
        }
        for (Rule& r : rules) {
            Trigger* t = trigger(r, d);
            if (t == nullptr) continue;
            if (t->feed(p, best, best < n).fire) {
                r.done = true;
                pending.push_back(r.id);
            }
        }
        arm(now);
        return {best, !pending.empty(), hold && pending.empty()};
    }
    std::vector<int> take_fired() {
        std::vector<int> out;
        out.swap(pending);
        return out;
    }
    // The first rule with a trigger due: time_reached() on its due triggers.
    std::optional<std::pair<int, bool>> next_due(uint64_t now) {
        for (Rule& r : rules) {
            if (r.done) continue;
            bool due = false, fire = false;
            for (size_t j = 0; j < r.trig.size(); ++j) {
                if (r.deadline[j] == 0 || r.deadline[j] > now) continue;
                due = true;
                r.deadline[j] = 0;
                fire = r.trig[j].second.time_reached() || fire;
            }
            if (!due) continue;
            if (fire) r.done = true;
            return std::make_pair(r.id, fire);
        }
        return std::nullopt;
    }
};

// ---- the engine: TriggerSets, the way Session uses them

struct Engine {
    std::shared_ptr<const faults::RuleProgram> program;
    std::vector<TriggerSet> sets;
    std::vector<int> pending;

    std::vector<int> start_set(size_t k, bool catch_up, const uint64_t off[2], uint64_t t0,
                               uint64_t now) {
        std::vector<uint32_t> f;
        sets[k].start(catch_up, catch_up ? t0 : now, now, {off[0], off[1]}, f);
        std::vector<int> out;
        for (uint32_t i : f) out.push_back(static_cast<int>(i));
        return out;
    }
    bool watches(int d) {
        for (auto& s : sets)
            if (s.watches(kDirs[d])) return true;
        return false;
    }
    ScanOut scan(int d, const char* p, size_t n, uint64_t off, uint64_t now) {
        TriggerSet::Probe best;
        std::vector<bool> touched(sets.size(), false);
        for (size_t k = 0; k < sets.size(); ++k) {
            if (!sets[k].watches(kDirs[d])) continue;
            auto pr = sets[k].probe(kDirs[d], p, n, off);
            touched[k] = pr.touched;
            if (pr.event && (!best.event || pr.pass < best.pass ||
                             (pr.pass == best.pass && pr.fire && !best.fire)))
                best = pr;
            else if (pr.event && pr.pass == best.pass && pr.fire)
                best.fire = true;
        }
        size_t upto = best.event ? best.pass : n;
        for (size_t k = 0; k < sets.size(); ++k) {
            if (!sets[k].watches(kDirs[d])) continue;
            std::vector<uint32_t> f;
            sets[k].commit(kDirs[d], p, n, upto, touched[k], off, now, f);
            for (uint32_t i : f) pending.push_back(static_cast<int>(i));
        }
        bool fired = !pending.empty();
        return {upto, fired, best.event && !best.fire && !fired};
    }
    std::vector<int> take_fired() {
        std::vector<int> out;
        out.swap(pending);
        return out;
    }
    std::optional<std::pair<int, bool>> next_due(uint64_t now, const uint64_t off[2]) {
        for (auto& s : sets)
            if (auto due = s.next_due(now, {off[0], off[1]}))
                return std::make_pair(static_cast<int>(due->rule), due->fire);
        return std::nullopt;
    }
    uint64_t next_deadline() const {
        uint64_t t = 0;
        for (const auto& s : sets)
            if (s.next_deadline() != 0 && (t == 0 || s.next_deadline() < t)) t = s.next_deadline();
        return t;
    }
};

// ---- the driver: a pipe per direction (holding what a trigger holds), a clock, actions

struct Action {
    enum Kind { feed, tick, add } kind;
    int dir = 0;
    std::string bytes;
    uint64_t dt = 0;
    int rule = 0;
};

template <class Model>
struct Driver {
    explicit Driver(Model& model) : m(model) {}
    Model& m;
    uint64_t fwd[2] = {0, 0};
    std::string held[2];
    uint64_t now = 1'000'000;
    uint64_t t0 = 1'000'000;
    std::vector<Event> events;

    void record(const std::vector<int>& rules, char how) {
        for (int r : rules) events.push_back({r, how, fwd[0], fwd[1], now});
    }
    ScanOut scan(int d, const char* p, size_t n);
    // Pipe::process: scan, forward, fire, and hold the rest at a hold point.
    void process(int d, std::string bytes) {
        size_t off = 0;
        while (off < bytes.size()) {
            if (!m.watches(d)) {
                fwd[d] += bytes.size() - off;
                return;
            }
            ScanOut r = scan(d, bytes.data() + off, bytes.size() - off);
            REQUIRE(r.pass <= bytes.size() - off);
            fwd[d] += r.pass;
            off += r.pass;
            record(m.take_fired(), 'b');
            if (r.hold) {
                held[d] = bytes.substr(off);
                holding[d] = true;
                return;
            }
            if (!r.fired) return;
        }
    }
    bool holding[2] = {false, false};
    void release() {
        for (int d = 0; d < 2; ++d) {
            if (!holding[d]) continue;
            holding[d] = false;
            std::string b;
            b.swap(held[d]);
            if (!b.empty()) process(d, b);
        }
    }
};

template <>
ScanOut Driver<Reference>::scan(int d, const char* p, size_t n) {
    return m.scan(d, p, n, now);
}
template <>
ScanOut Driver<Engine>::scan(int d, const char* p, size_t n) {
    return m.scan(d, p, n, fwd[d], now);
}

// Feeding while held: the pipe appends to what it holds (no scan).
template <class Model>
void feed(Driver<Model>& dr, int d, const std::string& b) {
    if (dr.holding[d]) {
        dr.held[d] += b;
        return;
    }
    dr.process(d, b);
}

template <class Model>
void tick(Driver<Model>& dr, uint64_t dt);
template <>
void tick(Driver<Reference>& dr, uint64_t dt) {
    dr.now += dt;
    while (auto due = dr.m.next_due(dr.now)) {
        if (due->second) dr.record({due->first}, 't');
        dr.release();
    }
}
template <>
void tick(Driver<Engine>& dr, uint64_t dt) {
    dr.now += dt;
    while (auto due = dr.m.next_due(dr.now, dr.fwd)) {
        if (due->second) dr.record({due->first}, 't');
        dr.release();
    }
}

// ---- random scenarios

struct Scenario {
    std::shared_ptr<config::Proxy> proxy;
    size_t initial = 0;  // rules [0, initial) at accept; the rest added by actions
    std::vector<Action> actions;
};

const char* kRegexes[] = {"^ab", "b$", "a.*c", "^$", "cc", "^a+$"};

config::Rule random_rule(std::mt19937& rng, int id) {
    config::Rule r;
    r.name = "r" + std::to_string(id);
    if (rng() % 8 == 0) return r;  // no `when`: at start
    config::When w;
    w.direction = kDirs[rng() % 2];
    if (rng() % 4 == 0) w.direction = config::Direction::both;
    switch (rng() % 4) {
        case 0: {
            std::string lit(rng() % 4, 'a');
            for (char& c : lit) c = "abc\n"[rng() % 4];
            w.data = lit;
            break;
        }
        case 1: {
            const char* re = kRegexes[rng() % std::size(kRegexes)];
            w.line = re;
            w.line_re = std::make_shared<RE2>(re);
            break;
        }
        default:
            break;
    }
    if (rng() % 2) w.after_bytes = rng() % 3 == 0 ? 0 : rng() % 60;
    if (rng() % 3 == 0) w.after = std::chrono::microseconds(rng() % 3 == 0 ? 0 : rng() % 5000);
    if (rng() % 4 == 0) w.next_byte = true;
    bool any = w.data || w.line || w.after_bytes || w.after || w.next_byte;
    if (!any) return r;
    if (w.after_bytes == 0u && !w.data && !w.line && !w.after && !w.next_byte) w.after_bytes = 1;
    r.when = w;
    return r;
}

Scenario random_scenario(std::mt19937& rng) {
    Scenario sc;
    sc.proxy = std::make_shared<config::Proxy>();
    size_t n = 1 + rng() % 6;
    size_t added = rng() % 3;
    for (size_t i = 0; i < n + added; ++i) sc.proxy->rules.push_back(random_rule(rng, (int)i));
    sc.initial = n;
    size_t next_add = n;
    size_t steps = 4 + rng() % 30;
    for (size_t s = 0; s < steps; ++s) {
        Action a;
        unsigned k = rng() % 10;
        if (k < 6) {
            a.kind = Action::feed;
            a.dir = rng() % 2;
            a.bytes.resize(rng() % 3 == 0 ? rng() % 400 : 1 + rng() % 12);
            for (char& c : a.bytes) c = "aabbc\n"[rng() % 6];
        } else if (k < 9 || next_add >= sc.proxy->rules.size()) {
            a.kind = Action::tick;
            a.dt = rng() % 3 == 0 ? 0 : rng() % 4000;
        } else {
            a.kind = Action::add;
            a.rule = (int)next_add++;
        }
        sc.actions.push_back(a);
    }
    return sc;
}

std::vector<Event> run_reference(const Scenario& sc) {
    Reference ref;
    Driver<Reference> dr{ref};
    for (size_t i = 0; i < sc.initial; ++i) ref.add(sc.proxy->rules[i], (int)i);
    dr.record(ref.start(0, false, dr.fwd, 0, dr.now), 's');
    for (const Action& a : sc.actions) {
        if (a.kind == Action::feed) feed(dr, a.dir, a.bytes);
        if (a.kind == Action::tick) tick(dr, a.dt);
        if (a.kind == Action::add) {
            size_t from = ref.rules.size();
            ref.add(sc.proxy->rules[(size_t)a.rule], a.rule);
            dr.record(ref.start(from, true, dr.fwd, dr.now - dr.t0, dr.now), 's');
        }
    }
    return dr.events;
}

std::vector<Event> run_engine(const Scenario& sc, const char* kernel) {
    Engine eng;
    auto snapshot = std::shared_ptr<const config::Proxy>(sc.proxy);
    eng.program = std::make_shared<const faults::RuleProgram>(snapshot);
    for (int d = 0; d < 2; ++d)
        if (eng.program->literals(d) != nullptr)
            const_cast<faults::LiteralSet*>(eng.program->literals(d))->use_kernel(kernel);
    Driver<Engine> dr{eng};
    eng.sets.emplace_back(eng.program);
    for (size_t i = 0; i < sc.initial; ++i) eng.sets[0].apply(i);
    dr.record(eng.start_set(0, false, dr.fwd, dr.t0, dr.now), 's');
    for (const Action& a : sc.actions) {
        if (a.kind == Action::feed) feed(dr, a.dir, a.bytes);
        if (a.kind == Action::tick) tick(dr, a.dt);
        if (a.kind == Action::add) {
            eng.sets.emplace_back(eng.program);
            eng.sets.back().apply((size_t)a.rule);
            dr.record(eng.start_set(eng.sets.size() - 1, true, dr.fwd, dr.t0, dr.now), 's');
        }
    }
    return dr.events;
}

}  // namespace

TEST_CASE("trigger set fires what one Trigger per rule fires, at the same offsets and times") {
    std::mt19937 rng(20261207);
    size_t with_events = 0;
    for (int round = 0; round < 20000; ++round) {
        Scenario sc = random_scenario(rng);
        auto want = run_reference(sc);
        with_events += !want.empty();
        for (const char* kernel : {"generic", "avx2", "teddy-avx2"}) {
            auto got = run_engine(sc, kernel);
            INFO("round ", round, " kernel ", std::string(kernel));
            INFO("want ", show(want));
            INFO("got  ", show(got));
            REQUIRE(got == want);
        }
    }
    // The scenarios do exercise firing (not just agreeing on nothing).
    CHECK(with_events > 10000);
}

TEST_CASE("trigger set: rules that cannot fire yet store nothing per connection") {
    auto proxy = std::make_shared<config::Proxy>();
    for (int i = 0; i < 200; ++i) {
        config::Rule r;
        r.name = "r" + std::to_string(i);
        config::When w;
        w.direction = kDirs[i % 2];
        if (i % 3 == 0) w.data = "never-sent-marker-" + std::to_string(i);
        if (i % 3 == 1) w.after_bytes = uint64_t{1} << 40;
        if (i % 3 == 2) w.after = std::chrono::hours(24);
        r.when = w;
        proxy->rules.push_back(r);
    }
    auto program =
        std::make_shared<const faults::RuleProgram>(std::shared_ptr<const config::Proxy>(proxy));
    TriggerSet set(program);
    for (size_t i = 0; i < program->size(); ++i) set.apply(i);
    std::vector<uint32_t> fire;
    set.start(false, 1000, 1000, {0, 0}, fire);
    CHECK(fire.empty());
    CHECK(set.next_deadline() == 1000 + 24ull * 3600 * 1000000);
    std::string chunk(256 * 1024, 'x');
    uint64_t off = 0;
    for (int k = 0; k < 8; ++k) {
        auto pr = set.probe(config::Direction::upstream, chunk.data(), chunk.size(), off);
        CHECK_FALSE(pr.event);
        CHECK_FALSE(pr.touched);
        set.commit(config::Direction::upstream, chunk.data(), chunk.size(), chunk.size(), false,
                   off, 1000, fire);
        off += chunk.size();
    }
    CHECK(fire.empty());
    for (size_t i = 0; i < program->size(); ++i) {
        auto d = kDirs[i % 2];
        CHECK(set.phase(i, d) ==
              (i % 3 == 0 ? TriggerSet::Phase::matching : TriggerSet::Phase::counting));
    }
}

TEST_CASE("trigger set: a lifted rule is done and no longer applied; the others stay") {
    for (int n : {3, 130}) {  // one word of bits, and several
        CAPTURE(n);
        auto proxy = std::make_shared<config::Proxy>();
        for (int i = 0; i < n; ++i) {
            config::Rule r;
            r.name = "r" + std::to_string(i);
            config::When w;
            w.data = "marker";
            r.when = w;
            proxy->rules.push_back(r);
        }
        auto program = std::make_shared<const faults::RuleProgram>(
            std::shared_ptr<const config::Proxy>(proxy));
        TriggerSet set(program);
        for (size_t i = 0; i < program->size(); ++i) set.apply(i);
        std::vector<uint32_t> fire;
        set.start(false, 1000, 1000, {0, 0}, fire);
        size_t last = program->size() - 1;
        set.lift(1);
        set.lift(last);
        CHECK(set.done(1));
        CHECK_FALSE(set.applied(1));
        CHECK_FALSE(set.applied(last));
        CHECK(set.applied(0));
        CHECK_FALSE(set.done(0));
        std::vector<size_t> listed;
        set.each_applied([&](size_t i) { listed.push_back(i); });
        CHECK(listed.size() == program->size() - 2);
        // The rules left still fire on their literal; the lifted ones do not.
        std::string data = "..marker..";
        auto pr = set.probe(config::Direction::upstream, data.data(), data.size(), 0);
        CHECK(pr.fire);
        set.commit(config::Direction::upstream, data.data(), data.size(), pr.pass, pr.touched, 0,
                   1000, fire);
        CHECK(std::find(fire.begin(), fire.end(), 1u) == fire.end());
        CHECK(std::find(fire.begin(), fire.end(), static_cast<uint32_t>(last)) == fire.end());
        CHECK(std::find(fire.begin(), fire.end(), 0u) != fire.end());
    }
}

TEST_CASE("rule program of one rule: a copy of that rule alone, at index 0") {
    auto proxy = std::make_shared<config::Proxy>();
    proxy->name = "p";
    for (int i = 0; i < 5; ++i) {
        config::Rule r;
        r.name = "r" + std::to_string(i);
        proxy->rules.push_back(r);
    }
    auto one = faults::RuleProgram::of_rule(*proxy, proxy->rules[3]);
    REQUIRE(one->size() == 1);
    CHECK(one->rule(0).name == "r3");
    CHECK(&one->rule(0) != &proxy->rules[3]);
    CHECK(one->proxy().name == "p");
    CHECK(one->proxy().rules.size() == 1);
}

// fuzz_trigger: a rule's byte-exact `when` (faults/trigger.hpp) built from the first bytes of
// the input, then fed the rest at fuzzer-chosen split points, the way a pipe feeds reads; the
// same rule through the connection's rule engine (faults/trigger_set.hpp) must do the same.
// Mode 3 checks the engine's multi-literal matcher (faults/literal_set.hpp) on its own.
//
// Input layout: [mode][flags][pattern length][pattern][after_bytes u16][catch-up u16][cuts][stream]
//   mode 0: data literal (<= 64 bytes)  1: line regex (RE2, <= 32 chars)  2: after_bytes only
//   mode 3: [count][len, literal]... (up to 8 literals of up to 16 bytes) [cuts][stream]
//   flags: bit0 after_bytes present, bit1 `after` present (0s), bit2 `after` present (1h, never
//          reached here), bit3 catch_up(bytes) before start (a rule added at runtime),
//          bit4 next_byte (fires on the byte after the conditions hold, never at the very end)
//
// Invariants:
//  - however the stream is split, the bytes passed before the fault fires (or the stream is
//    held at the threshold) add up to what one single read gives, and fire/hold agree;
//  - a step never passes more than its chunk, and passes it all unless it fires or holds;
//  - independent oracles: a literal fires just past its first occurrence; a line regex just
//    past the '\n' of the first line it matches; after_bytes after exactly N bytes;
//  - the rule engine (TriggerSet, probe then commit per read) gives the Trigger's outcome;
//  - mode 3: the LiteralSet reports, over any split and with every SIMD kernel the CPU has,
//    exactly the occurrences (end, literal) a plain search of the whole stream finds.
//
// Regexes are RE2 (linear time whatever the pattern, as the proxy uses them): any pattern RE2
// accepts, on the whole stream; the oracle tests each whole line with RE2 directly, so this
// checks the line splitting and streaming, not RE2 itself.
#include <re2/re2.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "faults/literal_set.hpp"
#include "faults/trigger.hpp"
#include "faults/trigger_set.hpp"
#include "fuzz_common.hpp"

using namespace tcpfault;
using faults::LineMatcher;
using faults::Trigger;

namespace {

struct Outcome {
    bool fired_at_start = false;
    uint64_t passed = 0;
    bool fired = false;
    bool held = false;
    bool operator==(const Outcome&) const = default;
};

Outcome run(const config::When& w, std::string_view stream, const std::vector<size_t>& cuts,
            std::optional<uint64_t> catch_up) {
    Outcome o;
    Trigger t(&w);
    if (catch_up) t.catch_up(*catch_up, config::Duration{0});
    if (t.start()) {
        o.fired_at_start = true;
        return o;
    }
    for (std::string_view chunk : fuzz::split(stream, cuts)) {
        // Empty chunks too: Session::scan re-feeds a trigger 0 bytes when another rule holds
        // the stream at the start of a read.
        Trigger::Step s = t.feed(chunk.data(), chunk.size());
        FUZZ_CHECK(s.pass <= chunk.size());
        FUZZ_CHECK(!(s.fire && s.hold));
        o.passed += s.pass;
        if (s.fire) {
            FUZZ_CHECK(t.fired());
            o.fired = true;
            return o;
        }
        if (s.hold) {
            o.held = true;
            return o;
        }
        FUZZ_CHECK(s.pass == chunk.size());
    }
    return o;
}

// The same through the rule engine: one rule in a TriggerSet, each read probed then committed.
Outcome run_engine(const config::When& w, std::string_view stream, const std::vector<size_t>& cuts,
                   std::optional<uint64_t> catch_up) {
    Outcome o;
    auto proxy = std::make_shared<config::Proxy>();
    config::Rule r;
    r.name = "fuzz";
    r.when = w;
    proxy->rules.push_back(r);
    auto program =
        std::make_shared<const faults::RuleProgram>(std::shared_ptr<const config::Proxy>(proxy));
    faults::TriggerSet set(program);
    set.apply(0);
    std::vector<uint32_t> fire;
    uint64_t off = catch_up.value_or(0);  // stream offsets count from the connection's start
    set.start(catch_up.has_value(), 1000, 1000, {off, 0}, fire);
    if (!fire.empty()) {
        o.fired_at_start = true;
        return o;
    }
    const auto up = config::Direction::upstream;
    for (std::string_view chunk : fuzz::split(stream, cuts)) {
        if (!set.watches(up)) {
            o.passed += chunk.size();
            continue;
        }
        auto pr = set.probe(up, chunk.data(), chunk.size(), off);
        size_t upto = pr.event ? pr.pass : chunk.size();
        FUZZ_CHECK(upto <= chunk.size());
        set.commit(up, chunk.data(), chunk.size(), upto, pr.touched, off, 1000, fire);
        o.passed += upto;
        off += upto;
        FUZZ_CHECK(fire.empty() || (pr.event && pr.fire));
        if (!fire.empty()) {
            o.fired = true;
            return o;
        }
        if (pr.event) {
            FUZZ_CHECK(pr.hold);
            o.held = true;
            return o;
        }
    }
    return o;
}

// Mode 3: every occurrence of several literals, streamed through a LiteralSet vs found plainly.
void check_literal_set(fuzz::Input& in) {
    std::vector<std::string> lits;
    size_t count = 1 + in.byte() % 8;
    for (size_t i = 0; i < count; ++i) {
        std::string l(in.take(1 + in.byte() % 16));
        if (l.empty()) break;
        if (std::find(lits.begin(), lits.end(), l) == lits.end()) lits.push_back(l);
    }
    if (lits.empty()) return;
    std::vector<size_t> cuts = fuzz::read_cuts(in, /*allow_empty=*/true);
    std::string_view stream = in.rest();
    // want[end * count + id]: an occurrence of literal `id` ends at `end`.
    const size_t k = lits.size();
    std::vector<uint8_t> want((stream.size() + 1) * k, 0);
    for (size_t id = 0; id < k; ++id)
        for (size_t at = stream.find(lits[id]); at != std::string_view::npos;
             at = stream.find(lits[id], at + 1))
            want[(at + lits[id].size()) * k + id] = 1;
    faults::LiteralSet set(lits);
    for (const char* kernel :
         {"generic", "avx2", "avx512bw", "teddy-avx2", "teddy-avx512bw", "teddy-generic"}) {
        if (!set.use_kernel(kernel)) continue;
        std::vector<uint8_t> got(want.size(), 0);
        faults::LiteralSet::State st = 0;
        size_t pos = 0;
        for (std::string_view chunk : fuzz::split(stream, cuts)) {
            set.scan(st, chunk.data(), chunk.size(), [&](size_t end, size_t id) {
                FUZZ_CHECK(end >= 1 && end <= chunk.size());
                FUZZ_CHECK(id < k);
                got[(pos + end) * k + id] = 1;
            });
            st = set.advance(st, chunk.data(), chunk.size());
            pos += chunk.size();
        }
        FUZZ_CHECK(got == want);
    }
}

// Offset just past the '\n' of the first line (CR stripped, capped like LineMatcher) matching re.
std::optional<size_t> ref_line(const RE2& re, std::string_view s) {
    size_t start = 0;
    for (;;) {
        size_t nl = s.find('\n', start);
        if (nl == std::string_view::npos) return std::nullopt;
        std::string_view line = s.substr(start, nl - start);
        if (line.size() > LineMatcher::kMaxLine) line = line.substr(0, LineMatcher::kMaxLine);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (RE2::PartialMatch(re2::StringPiece(line.data(), line.size()), re)) return nl + 1;
        start = nl + 1;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 2300) return 0;
    fuzz::Input in(data, size);
    uint8_t mode = in.byte() % 4;
    if (mode == 3) {
        check_literal_set(in);
        return 0;
    }
    uint8_t flags = in.byte();
    size_t plen = in.byte();

    config::When w;
    w.direction = config::Direction::upstream;
    std::shared_ptr<const RE2> re;
    if (mode == 0) {
        std::string_view pat = in.take(1 + plen % 64);  // the loader rejects an empty literal
        if (pat.empty()) return 0;
        w.data = std::string(pat);
    } else if (mode == 1) {
        std::string_view pat = in.take(plen % 33);
        RE2::Options opts;
        opts.set_log_errors(false);
        re = std::make_shared<const RE2>(std::string(pat), opts);
        if (!re->ok()) return 0;  // the loader reports these as config errors
        w.line = std::string(pat);
        w.line_re = re;
    }
    uint16_t after_bytes = in.u16();
    uint16_t catch_up_bytes = in.u16();
    if ((flags & 1) || mode == 2) w.after_bytes = after_bytes;
    if (flags & 2) w.after = config::Duration{0};
    if (flags & 4) w.after = std::chrono::hours(1);  // never reached: holds at the threshold
    std::optional<uint64_t> catch_up;
    if (flags & 8) catch_up = catch_up_bytes;
    w.next_byte = (flags & 16) != 0;
    if (w.next_byte && !w.data && !w.line && !w.after_bytes) return 0;  // covered by unit tests

    std::vector<size_t> cuts = fuzz::read_cuts(in, /*allow_empty=*/true);
    std::string_view stream = in.rest();

    Outcome whole = run(w, stream, {}, catch_up);
    Outcome pieces = run(w, stream, cuts, catch_up);
    FUZZ_CHECK(pieces == whole);
    FUZZ_CHECK(run_engine(w, stream, cuts, catch_up) == pieces);
    FUZZ_CHECK(run_engine(w, stream, {}, catch_up) == whole);

    // Oracles on the single-read outcome.
    bool timed = (flags & 4) != 0;
    if (whole.fired_at_start) {
        // Only a pure counting trigger whose threshold is already met may fire at start.
        FUZZ_CHECK(mode == 2 || !(w.data || w.line));
        FUZZ_CHECK(!timed);
        FUZZ_CHECK(!w.next_byte);
        FUZZ_CHECK(!w.after_bytes || (catch_up ? *catch_up : 0) >= *w.after_bytes);
        return 0;
    }
    std::optional<size_t> match_end;  // end of the match (0: counting from the start)
    if (mode == 0) {
        size_t at = stream.find(*w.data);
        if (at != std::string_view::npos) match_end = at + w.data->size();
    } else if (mode == 1) {
        match_end = ref_line(*re, stream);
    } else {
        match_end = 0;
    }
    uint64_t already = (mode == 2 && catch_up) ? *catch_up : 0;
    if (!match_end) {
        FUZZ_CHECK(!whole.fired && !whole.held && whole.passed == stream.size());
        return 0;
    }
    uint64_t need = w.after_bytes ? (*w.after_bytes > already ? *w.after_bytes - already : 0) : 0;
    uint64_t threshold = *match_end + need;
    // next_byte: it fires on the byte after the threshold, so there must be one.
    if (threshold > stream.size() || (timed && !w.after_bytes) ||
        (w.next_byte && !timed && threshold == stream.size())) {
        // Not reached (or only time is missing and nothing holds the stream): all passes.
        FUZZ_CHECK(!whole.fired && !whole.held && whole.passed == stream.size());
        return 0;
    }
    FUZZ_CHECK(whole.passed == threshold);
    FUZZ_CHECK(whole.fired == !timed);
    FUZZ_CHECK(whole.held == timed);
    return 0;
}

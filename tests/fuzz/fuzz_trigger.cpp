// fuzz_trigger: a rule's byte-exact `when` (faults/trigger.hpp) built from the first bytes of
// the input, then fed the rest at fuzzer-chosen split points, the way a pipe feeds reads.
//
// Input layout: [mode][flags][pattern length][pattern][after_bytes u16][catch-up u16][cuts][stream]
//   mode 0: data literal (<= 64 bytes)  1: line regex (RE2, <= 32 chars)  2: after_bytes only
//   flags: bit0 after_bytes present, bit1 `after` present (0s), bit2 `after` present (1h, never
//          reached here), bit3 catch_up(bytes) before start (a rule added at runtime),
//          bit4 next_byte (fires on the byte after the conditions hold, never at the very end)
//
// Invariants:
//  - however the stream is split, the bytes passed before the fault fires (or the stream is
//    held at the threshold) add up to what one single read gives, and fire/hold agree;
//  - a step never passes more than its chunk, and passes it all unless it fires or holds;
//  - independent oracles: a literal fires just past its first occurrence; a line regex just
//    past the '\n' of the first line it matches; after_bytes after exactly N bytes.
//
// Regexes are RE2 (linear time whatever the pattern, as the proxy uses them): any pattern RE2
// accepts, on the whole stream; the oracle tests each whole line with RE2 directly, so this
// checks the line splitting and streaming, not RE2 itself.
#include <re2/re2.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "faults/trigger.hpp"
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
    uint8_t mode = in.byte() % 3;
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

#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <re2/re2.h>

#include "faults/literal_set.hpp"
#include "faults/trigger.hpp"

using namespace tcpfault;
using faults::LiteralMatcher;
using faults::Trigger;

namespace {
config::When when_bytes(uint64_t n) {
    config::When w;
    w.direction = config::Direction::downstream;
    w.after_bytes = n;
    return w;
}
}  // namespace

TEST_CASE("literal matcher finds a needle split at every possible point") {
    const std::string stream = "USER bob\r\nSTOR file.bin\r\n";
    const size_t end = stream.find("STOR ") + 5;
    for (size_t cut = 0; cut <= stream.size(); ++cut) {
        LiteralMatcher m("STOR ");
        size_t a = m.feed(stream.data(), cut);
        if (a != Trigger::npos) {
            CHECK(a == end);
            continue;
        }
        size_t b = m.feed(stream.data() + cut, stream.size() - cut);
        REQUIRE(b != Trigger::npos);
        CHECK(cut + b == end);
    }
}

TEST_CASE("literal matcher handles self-overlapping needles byte by byte") {
    LiteralMatcher m("aab");
    const std::string s = "aaab";
    size_t hit = Trigger::npos;
    for (size_t i = 0; i < s.size() && hit == Trigger::npos; ++i)
        if (m.feed(&s[i], 1) != Trigger::npos) hit = i;
    CHECK(hit == 3);
}

TEST_CASE("literal matcher agrees with a plain search for every match, over random chunkings") {
    // Small alphabets make partial and overlapping matches common, across chunk edges too.
    std::mt19937 rng(7);
    // Needles shorter and longer than the 16-byte SIMD screen, streams long enough for many
    // screened blocks and a tail.
    const char* needles[] = {"a",
                             "ab",
                             "aab",
                             "abab",
                             "aaaa",
                             "abcab",
                             "abaabab",
                             "bbbbbbba",
                             "aabbcaabbcaabbcaa",
                             "cbacbacbacbacbacbacbab"};
    for (const char* needle : needles) {
        const std::string n = needle;
        for (int round = 0; round < 200; ++round) {
            std::string stream(
                std::uniform_int_distribution<size_t>(0, round % 4 ? 300 : 3000)(rng), 'a');
            for (char& c : stream) c = "aabbc"[rng() % 5];
            // Long needles almost never occur by chance: plant a few.
            for (int k = round % 3; k > 0 && stream.size() > n.size(); --k)
                stream.replace(rng() % (stream.size() - n.size()), n.size(), n);
            // Every match end, as a naive scan sees them (overlaps included).
            std::vector<size_t> want;
            for (size_t i = 0; i + n.size() <= stream.size(); ++i)
                if (stream.compare(i, n.size(), n) == 0) want.push_back(i + n.size());
            LiteralMatcher m(n);
            std::vector<size_t> got;
            size_t pos = 0;
            while (pos < stream.size()) {
                size_t len = std::min(stream.size() - pos, std::uniform_int_distribution<size_t>(
                                                               1, round % 2 ? 20 : 700)(rng));
                size_t hit = m.feed(stream.data() + pos, len);
                if (hit == Trigger::npos) {
                    pos += len;
                } else {
                    // Matching resumes right after the match, as KMP would.
                    got.push_back(pos + hit);
                    pos += hit;
                }
            }
            INFO("needle ", n, " stream ", stream);
            CHECK(got == want);
        }
    }
}

TEST_CASE("after_bytes splits a single large chunk exactly at the threshold") {
    config::When w = when_bytes(716800);
    Trigger t(&w);
    CHECK_FALSE(t.start());
    std::string chunk(1 << 20, 'x');
    auto step = t.feed(chunk.data(), chunk.size());
    CHECK(step.fire);
    CHECK(step.pass == 716800);
    CHECK(t.fired());
}

TEST_CASE("after_bytes counts across chunks of every size") {
    for (size_t piece : {1u, 7u, 4096u, 65536u}) {
        config::When w = when_bytes(100000);
        Trigger t(&w);
        t.start();
        std::string chunk(piece, 'y');
        uint64_t passed = 0;
        while (!t.fired()) {
            auto step = t.feed(chunk.data(), chunk.size());
            passed += step.pass;
        }
        CHECK(passed == 100000);
    }
}

TEST_CASE("after_bytes 0 and no when fire at start") {
    config::When w = when_bytes(0);
    Trigger t(&w);
    CHECK(t.start());
    Trigger none(nullptr);
    CHECK(none.start());
}

TEST_CASE("data match then after_bytes counts from the end of the match") {
    config::When w;
    w.direction = config::Direction::upstream;
    w.data = "DATA\r\n";
    w.after_bytes = 10;
    Trigger t(&w);
    CHECK_FALSE(t.start());
    std::string s = "MAIL FROM:<a>\r\nDA";
    auto a = t.feed(s.data(), s.size());
    CHECK_FALSE(a.fire);
    CHECK(a.pass == s.size());
    std::string s2 = "TA\r\n0123456789abc";
    auto b = t.feed(s2.data(), s2.size());
    CHECK(b.fire);
    CHECK(b.pass == 4 + 10);
}

TEST_CASE("line regex fires at the end of the matching line") {
    config::When w;
    w.line = "^RCPT TO:";
    w.line_re = std::make_shared<RE2>(*w.line);
    Trigger t(&w);
    t.start();
    std::string s = "MAIL FROM:<a@b>\r\nXRCPT TO:<no>\r\nRCPT TO:<c@d>\r\nDATA\r\n";
    auto step = t.feed(s.data(), s.size());
    CHECK(step.fire);
    CHECK(step.pass == s.find("DATA"));
}

TEST_CASE("bytes reached before time: hold at the threshold, fire on the timer") {
    config::When w = when_bytes(5);
    w.after = std::chrono::milliseconds(100);
    Trigger t(&w);
    CHECK_FALSE(t.start());
    CHECK(t.wants_timer());
    std::string s = "0123456789";
    auto step = t.feed(s.data(), s.size());
    CHECK_FALSE(step.fire);
    CHECK(step.hold);
    CHECK(step.pass == 5);
    CHECK(t.time_reached());
}

TEST_CASE("time reached before bytes: fire when the bytes arrive") {
    config::When w = when_bytes(5);
    w.after = std::chrono::milliseconds(100);
    Trigger t(&w);
    t.start();
    CHECK_FALSE(t.time_reached());
    std::string s = "0123456789";
    auto step = t.feed(s.data(), s.size());
    CHECK(step.fire);
    CHECK(step.pass == 5);
}

TEST_CASE("only `after`: the timer alone fires") {
    config::When w;
    w.after = std::chrono::seconds(2);
    Trigger t(&w);
    CHECK_FALSE(t.start());
    CHECK(t.wants_timer());
    CHECK_FALSE(t.watches(config::Direction::upstream));
    CHECK(t.time_reached());
}

TEST_CASE("a rule added mid-connection counts from the connection's start") {
    config::When w = when_bytes(1000);
    Trigger passed(&w);
    passed.catch_up(5000, std::chrono::seconds(1));
    CHECK(passed.start());  // threshold already passed: fires at once

    Trigger pending(&w);
    pending.catch_up(400, std::chrono::seconds(1));
    CHECK_FALSE(pending.start());
    std::string s(1000, 'z');
    auto step = pending.feed(s.data(), s.size());
    CHECK(step.fire);
    CHECK(step.pass == 600);

    config::When t;
    t.after = std::chrono::seconds(3);
    Trigger timed(&t);
    timed.catch_up(0, std::chrono::seconds(1));
    CHECK_FALSE(timed.start());
    CHECK(timed.wants_timer());
    CHECK(timed.time_needed() == std::chrono::seconds(2));
}

TEST_CASE("an empty data needle matches at the next byte (Toxiproxy's reset_peer/limit_data)") {
    config::When w;
    w.data = "";
    w.after_bytes = 0;
    w.after = std::chrono::milliseconds(100);
    Trigger t(&w);
    CHECK_FALSE(t.start());
    CHECK(t.watches(config::Direction::upstream));
    std::string s = "first data";
    auto step = t.feed(s.data(), s.size());
    // Held at offset 0: nothing of the first data passes before the time condition.
    CHECK(step.hold);
    CHECK(step.pass == 0);
    CHECK(t.time_reached());
}

TEST_CASE("a 40 KB line under a `line` rule is matched on its prefix, without overflowing") {
    config::When w;
    w.line = "^RCPT TO:.*";
    w.line_re = std::make_shared<RE2>(*w.line);
    Trigger t(&w);
    t.start();
    std::string s = "RCPT TO:" + std::string(40000, 'x') + "\r\n";
    auto step = t.feed(s.data(), s.size());
    CHECK(step.fire);
    CHECK(step.pass == s.size());
}

// ---------------------------------------------------------------------------------------------
// LiteralSet: every data literal of a direction in one pass, across read boundaries.

namespace {
using faults::LiteralSet;

// Every (end, id) of every occurrence of every literal in the stream, the plain way.
std::set<std::pair<size_t, size_t>> naive_occurrences(const std::string& s,
                                                      const std::vector<std::string>& lits) {
    std::set<std::pair<size_t, size_t>> out;
    for (size_t id = 0; id < lits.size(); ++id)
        for (size_t at = s.find(lits[id]); at != std::string::npos; at = s.find(lits[id], at + 1))
            out.emplace(at + lits[id].size(), id);
    return out;
}

// The same through LiteralSet, the stream cut into the given pieces.
std::set<std::pair<size_t, size_t>> streamed_occurrences(const LiteralSet& set,
                                                         const std::string& s,
                                                         const std::vector<size_t>& pieces) {
    std::set<std::pair<size_t, size_t>> out;
    LiteralSet::State st = 0;
    size_t pos = 0;
    for (size_t len : pieces) {
        set.scan(st, s.data() + pos, len, [&](size_t end, size_t id) {
            REQUIRE(end >= 1);
            REQUIRE(end <= len);
            out.emplace(pos + end, id);
        });
        st = set.advance(st, s.data() + pos, len);
        pos += len;
    }
    return out;
}

std::vector<std::string> random_literals(std::mt19937& rng, const char* alphabet, size_t count,
                                         size_t max_len) {
    std::vector<std::string> lits;
    size_t na = std::strlen(alphabet);
    while (lits.size() < count) {
        std::string l(1 + rng() % max_len, 'x');
        for (char& c : l) c = alphabet[rng() % na];
        if (std::find(lits.begin(), lits.end(), l) == lits.end()) lits.push_back(l);
    }
    return lits;
}
}  // namespace

TEST_CASE("literal set reports exactly the occurrences a plain search finds, for any chunking") {
    std::mt19937 rng(11);
    const std::vector<std::vector<std::string>> fixed = {
        {"a"},
        {"ab", "b", "bab", "abab", "aab"},  // overlapping, nested, suffixes of each other
        {"never-sent-marker-5", "never-sent-marker-10", "never-sent-marker-15"},
        {"STOR ", "RETR ", "RCPT TO:", "DATA\r\n", "QUIT", "\r\n", "\n"},
    };
    for (int round = 0; round < 240; ++round) {
        std::vector<std::string> lits = round < 4
                                            ? fixed[round]
                                            : random_literals(rng, round % 3 ? "ab" : "abc\r\n",
                                                              1 + rng() % 12, round % 5 ? 6 : 40);
        LiteralSet set(lits);
        // Streams long enough for the SIMD filter (reads over 2 x the longest literal + 64),
        // with literals planted so that long ones occur too.
        std::string s(rng() % 2 ? 3000 + rng() % 5000 : rng() % 300, 'a');
        const char* alpha = round % 2 ? "ab" : "abc \r\nSTORQUIT-markerns01";
        for (char& c : s) c = alpha[rng() % std::strlen(alpha)];
        for (int k = 0; k < 6 && !s.empty(); ++k) {
            const std::string& l = lits[rng() % lits.size()];
            if (l.size() < s.size()) s.replace(rng() % (s.size() - l.size()), l.size(), l);
        }
        auto want = naive_occurrences(s, lits);
        for (const char* kernel :
             {"generic", "avx2", "avx512bw", "teddy-avx2", "teddy-avx512bw", "teddy-generic"}) {
            if (!set.use_kernel(kernel)) continue;
            for (int cut = 0; cut < 4; ++cut) {
                std::vector<size_t> pieces;
                for (size_t left = s.size(); left > 0;) {
                    size_t max = cut == 0 ? left : cut == 1 ? 3 : cut == 2 ? 200 : 2000;
                    size_t len = std::min(left, 1 + rng() % max);
                    pieces.push_back(len);
                    left -= len;
                }
                INFO("kernel ", std::string(kernel), " round ", round, " cut ", cut, " literals ",
                     lits.size());
                CHECK(streamed_occurrences(set, s, pieces) == want);
            }
        }
    }
}

TEST_CASE("literal set: a literal split at every byte of a read boundary, big reads around it") {
    LiteralSet set({"RCPT TO:", "TO:<", "never-sent-marker-20"});
    for (const std::string lit : {"RCPT TO:", "never-sent-marker-20"}) {
        std::string s = std::string(5000, 'x') + lit + std::string(5000, 'y');
        for (size_t cut = 4990; cut <= 5000 + lit.size() + 5; ++cut) {
            auto got = streamed_occurrences(set, s, {cut, s.size() - cut});
            CHECK(got.count({5000 + lit.size(), lit == "RCPT TO:" ? 0u : 2u}) == 1);
        }
    }
}

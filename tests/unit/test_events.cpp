// The event timeline's ring (observe/events.hpp): cursors, bounds, dropped counts, threads.
#include <doctest/doctest.h>

#include <string>
#include <thread>
#include <vector>

#include "observe/events.hpp"

using tcpfault::Event;
using tcpfault::EventLog;

namespace {
Event ev(const std::string& rule) {
    Event e;
    e.kind = "fault";
    e.proxy = "p";
    e.rule = rule;
    return e;
}
}  // namespace

TEST_CASE("events: sequence numbers, cursor, newest") {
    EventLog log(10);
    auto p = log.after(0, 100);
    CHECK(p.events.empty());
    CHECK(p.latest == 0);
    CHECK(p.dropped == 0);
    for (int i = 1; i <= 5; ++i) CHECK(log.add(ev("r" + std::to_string(i))) == uint64_t(i));

    p = log.after(0, 100);
    REQUIRE(p.events.size() == 5);
    CHECK(p.events.front().seq == 1);
    CHECK(p.events.back().rule == "r5");
    CHECK(p.events.front().unix_ms > 0);
    CHECK_FALSE(p.more);
    CHECK(p.latest == 5);

    p = log.after(3, 100);
    REQUIRE(p.events.size() == 2);
    CHECK(p.events[0].seq == 4);

    p = log.after(1, 2);  // paged
    REQUIRE(p.events.size() == 2);
    CHECK(p.events[1].seq == 3);
    CHECK(p.more);

    p = log.after(5, 100);  // up to date
    CHECK(p.events.empty());
    CHECK_FALSE(p.more);

    p = log.newest(2);
    REQUIRE(p.events.size() == 2);
    CHECK(p.events[0].seq == 4);  // oldest first
    CHECK(p.events[1].seq == 5);

    // A cursor from a previous process (above anything this one numbered) starts over.
    p = log.after(999, 100);
    CHECK(p.events.size() == 5);
}

TEST_CASE("events: the ring is bounded and says what a slow reader missed") {
    EventLog log(4);
    for (int i = 0; i < 10; ++i) log.add(ev("r"));
    auto p = log.after(0, 100);
    REQUIRE(p.events.size() == 4);
    CHECK(p.events.front().seq == 7);
    CHECK(p.dropped == 6);
    p = log.after(5, 100);
    CHECK(p.dropped == 1);
    CHECK(p.events.front().seq == 7);
    p = log.after(6, 100);
    CHECK(p.dropped == 0);
    CHECK(log.newest(100).events.size() == 4);
}

TEST_CASE("events: writers on several threads, a reader in between") {
    EventLog log(100000);
    constexpr int kThreads = 4;
    constexpr int kEach = 5000;
    std::vector<std::thread> writers;
    for (int t = 0; t < kThreads; ++t)
        writers.emplace_back([&log, t] {
            for (int i = 0; i < kEach; ++i) log.add(ev("t" + std::to_string(t)));
        });
    uint64_t cursor = 0;
    uint64_t seen = 0;
    while (seen < uint64_t(kThreads) * kEach) {
        auto p = log.after(cursor, 1000);
        for (const auto& e : p.events) {
            REQUIRE(e.seq == cursor + 1);  // every event once, in order
            cursor = e.seq;
            ++seen;
        }
        if (p.events.empty()) std::this_thread::yield();
    }
    for (auto& w : writers) w.join();
    CHECK(log.after(0, 1).latest == uint64_t(kThreads) * kEach);
}

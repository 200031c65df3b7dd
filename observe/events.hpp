// The event timeline: a bounded, in-memory ring of what tcpfault did to connections (faults a
// rule or the admin API injected, faults suppressed, the end of a connection that had a fault),
// read by the admin API with a cursor (`GET /api/events?after=N`) and shown by the status page.
//
// Faults fire on every worker loop, so adding and reading take a mutex; an event is built
// before the lock is taken, and the lock is held only to move it into the ring. Each event gets
// a sequence number (1, 2, ...) that never repeats in the life of the process; once the ring is
// full the oldest event gives way, and a reader whose cursor is older is told how many it
// missed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace tcpfault {

struct Event {
    uint64_t seq = 0;      // set by EventLog::add
    uint64_t unix_ms = 0;  // wall clock; set by add when 0
    std::string kind;      // "fault", "suppressed", "closed", "restart"
    std::string proxy;
    uint64_t conn = 0;  // 0: the proxy as a whole
    std::string client;
    std::string rule;   // the rule's name, or the admin API's label
    std::string fault;  // the fault type
    std::string detail;
    uint64_t bytes_up = 0;
    uint64_t bytes_down = 0;
};

class EventLog {
  public:
    static constexpr size_t kDefaultCapacity = 1000;
    explicit EventLog(size_t capacity = kDefaultCapacity) : capacity_(capacity) {}
    EventLog(const EventLog&) = delete;
    EventLog& operator=(const EventLog&) = delete;

    // Thread-safe. Returns the event's sequence number.
    uint64_t add(Event e);

    struct Page {
        std::vector<Event> events;  // oldest first
        uint64_t dropped = 0;       // events after the cursor that the ring no longer holds
        bool more = false;          // events after the last one returned remain
        uint64_t latest = 0;        // the newest sequence number (0: nothing yet)
    };
    // The events with a sequence number above `after`, oldest first, at most `limit`. A cursor
    // above the newest number (a client that outlived a previous process) reads from the start.
    Page after(uint64_t after, size_t limit) const;
    // The newest `limit` events, oldest first.
    Page newest(size_t limit) const;

    size_t capacity() const { return capacity_; }

  private:
    mutable std::mutex mu_;
    size_t capacity_;
    std::deque<Event> ring_;
    uint64_t next_seq_ = 1;
};

}  // namespace tcpfault

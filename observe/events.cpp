#include "observe/events.hpp"

#include <algorithm>
#include <chrono>

namespace tcpfault {

uint64_t EventLog::add(Event e) {
    if (e.unix_ms == 0)
        e.unix_ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
    std::lock_guard<std::mutex> lock(mu_);
    e.seq = next_seq_++;
    if (capacity_ == 0) return e.seq;
    if (ring_.size() == capacity_) ring_.pop_front();
    ring_.push_back(std::move(e));
    return ring_.back().seq;
}

EventLog::Page EventLog::after(uint64_t after, size_t limit) const {
    Page p;
    std::lock_guard<std::mutex> lock(mu_);
    p.latest = next_seq_ - 1;
    if (after > p.latest) after = 0;
    if (ring_.empty()) {
        p.dropped = p.latest - after;
        return p;
    }
    // Sequence numbers in the ring are consecutive: the first one after the cursor is found by
    // arithmetic, not by a search.
    uint64_t oldest = ring_.front().seq;
    if (after + 1 < oldest) p.dropped = oldest - after - 1;
    size_t start = after < oldest ? 0 : static_cast<size_t>(after - oldest + 1);
    size_t n = std::min(limit, ring_.size() - std::min(start, ring_.size()));
    p.events.reserve(n);
    for (size_t i = start; i < start + n; ++i) p.events.push_back(ring_[i]);
    p.more = start + n < ring_.size();
    return p;
}

EventLog::Page EventLog::newest(size_t limit) const {
    Page p;
    std::lock_guard<std::mutex> lock(mu_);
    p.latest = next_seq_ - 1;
    size_t n = std::min(limit, ring_.size());
    p.events.assign(ring_.end() - static_cast<std::ptrdiff_t>(n), ring_.end());
    return p;
}

}  // namespace tcpfault

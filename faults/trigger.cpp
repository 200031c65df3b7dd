#include "faults/trigger.hpp"

#include <string.h>  // memmem (GNU)

#include <algorithm>

namespace tcpfault::faults {

LiteralMatcher::LiteralMatcher(std::string needle) : needle_(std::move(needle)) {
    fail_.assign(needle_.size(), 0);
    for (size_t i = 1, k = 0; i < needle_.size(); ++i) {
        while (k > 0 && needle_[i] != needle_[k]) k = fail_[k - 1];
        if (needle_[i] == needle_[k]) ++k;
        fail_[i] = k;
    }
}

size_t LiteralMatcher::step(const char* data, size_t len) {
    for (size_t i = 0; i < len; ++i) {
        while (state_ > 0 && data[i] != needle_[state_]) state_ = fail_[state_ - 1];
        if (data[i] == needle_[state_]) ++state_;
        if (state_ == needle_.size()) {
            state_ = fail_[state_ - 1];
            return i + 1;
        }
    }
    return Trigger::npos;
}

// Byte-at-a-time KMP cost ~1 ns per byte per rule, which made a few never-firing `data` rules
// the bottleneck of a bulk stream. Only a match straddling the previous chunk needs the
// automaton (it ends within the first m-1 bytes); any other lies inside the chunk, where
// glibc's memmem skips through at tens of GB/s.
size_t LiteralMatcher::feed(const char* data, size_t len) {
    const size_t m = needle_.size();
    if (m == 0) return 0;
    size_t head = std::min(len, m - 1);
    size_t end = step(data, head);
    if (end != Trigger::npos || head == len) return end;
    if (const void* hit = memmem(data, len, needle_.data(), m)) {
        state_ = fail_[m - 1];
        return static_cast<size_t>(static_cast<const char*>(hit) - data) + m;
    }
    // No match anywhere: the partial match carried into the next chunk is the longest needle
    // prefix ending the stream, and it lies within the last m-1 bytes.
    state_ = 0;
    step(data + len - (m - 1), m - 1);
    return Trigger::npos;
}

size_t LineMatcher::feed(const char* data, size_t len) {
    for (size_t i = 0; i < len; ++i) {
        char c = data[i];
        if (c != '\n') {
            if (line_.size() < kMaxLine)
                line_.push_back(c);
            else
                overflow_ = true;
            continue;
        }
        std::string_view line(line_);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        bool hit = RE2::PartialMatch(re2::StringPiece(line.data(), line.size()), *re_);
        line_.clear();
        overflow_ = false;
        if (hit) return i + 1;
    }
    return Trigger::npos;
}

Trigger::Trigger(const config::When* when, std::optional<config::Direction> dir) {
    if (when == nullptr) return;
    dir_ = dir ? *dir
               : (when->direction == config::Direction::both ? config::Direction::upstream
                                                             : when->direction);
    next_byte_ = when->next_byte;
    if (when->data) literal_.emplace(*when->data);
    if (when->line && when->line_re) line_.emplace(when->line_re);
    after_bytes_ = when->after_bytes;
    if (when->after) {
        has_after_ = true;
        after_ = *when->after;
    }
    reads_bytes_ = literal_ || line_ || after_bytes_ || next_byte_;
    phase_ = (literal_ || line_) ? Phase::matching : Phase::counting;
}

bool Trigger::counting_done() const {
    return time_ok_ && (!after_bytes_ || counted_ >= *after_bytes_);
}

void Trigger::catch_up(uint64_t bytes_so_far, config::Duration elapsed) {
    if (phase_ != Phase::counting) return;
    counted_ = bytes_so_far;
    if (has_after_) after_ = elapsed >= after_ ? config::Duration{0} : after_ - elapsed;
}

bool Trigger::conditions_met() {
    phase_ = next_byte_ ? Phase::armed : Phase::fired;
    return phase_ == Phase::fired;
}

bool Trigger::start() {
    if (phase_ == Phase::counting && has_after_ && after_.count() > 0) {
        time_ok_ = false;
        want_timer_ = true;
    }
    if (phase_ == Phase::counting && counting_done()) return conditions_met();
    return false;
}

Trigger::Step Trigger::feed(const char* data, size_t len, bool more) {
    if (phase_ == Phase::armed) {
        if (len == 0 && !more) return {0, false, false};
        phase_ = Phase::fired;
        return {0, true, false};
    }
    size_t pos = 0;
    if (phase_ == Phase::matching) {
        size_t end = literal_ ? literal_->feed(data, len) : line_->feed(data, len);
        if (end == npos) return {len, false, false};
        pos = end;
        phase_ = Phase::counting;
        if (has_after_ && after_.count() > 0) {
            time_ok_ = false;
            want_timer_ = true;
        }
    }
    if (phase_ != Phase::counting) return {len, false, false};
    size_t rest = len - pos;
    if (after_bytes_) {
        uint64_t need = *after_bytes_ > counted_ ? *after_bytes_ - counted_ : 0;
        if (need > rest) {
            counted_ += rest;
            return {len, false, false};
        }
        counted_ += need;
        pos += static_cast<size_t>(need);
    }
    if (time_ok_) {
        if (conditions_met() || pos < len || more) {
            // With next_byte the byte at `pos`, already here, is the one it waited for.
            phase_ = Phase::fired;
            return {pos, true, false};
        }
        return {len, false, false};
    }
    // Only the time condition is missing: hold at the byte threshold if there is one.
    if (after_bytes_) return {pos, false, true};
    counted_ += len - pos;
    return {len, false, false};
}

bool Trigger::time_reached() {
    time_ok_ = true;
    if (phase_ == Phase::counting && counting_done()) return conditions_met();
    return false;
}

}  // namespace tcpfault::faults

#include "proxy/pipe.hpp"

#include <algorithm>
#include <random>

#include "net/endpoint.hpp"
#include "net/uv_util.hpp"
#include "proxy/session.hpp"

namespace tcpfault {

void Pipe::start() {
    // Once a terminal fault acts, nothing more is forwarded: draining shaped bytes must not
    // resume reading a source past the fault's byte.
    if (mode_ == Mode::forward && session_.ending()) return;
    if (source_eof_) return;
    // A blackhole keeps reading (and discarding) whatever holds the stream otherwise.
    if (mode_ == Mode::forward && stall_drops_ > 0) {
        source_.start_reading();
        return;
    }
    if (!paused_ && stall_holds_ == 0 && !holding_for_trigger_) source_.start_reading();
}

void Pipe::set_mode(Mode m) {
    mode_ = m;
    if (m != Mode::forward && !source_eof_) source_.start_reading();
}

bool Pipe::shaping() const {
    return latency_.count() > 0 || jitter_.count() > 0 || rate_ > 0 || slice_max_ > 0 ||
           stalled() || !queue_empty();
}

void Pipe::on_read(Chunk& chunk, ssize_t nread) {
    session_.on_activity();
    if (nread > 0) {
        size_t n = static_cast<size_t>(nread);
        bytes_ += n;
        session_.on_bytes(dir_, n);
        switch (mode_) {
            case Mode::forward:
                if (session_.ending()) break;  // read before the fault stopped it: dropped
                if (stall_drops_ > 0) break;   // blackholed
                if (filter_ != nullptr) {
                    std::string out;
                    filter_->feed(chunk.get(), n, out);
                    process(out.data(), out.size(), nullptr);
                } else {
                    process(chunk.get(), n, &chunk);
                }
                break;
            case Mode::drop:
                break;
            case Mode::reset_on_data:
            case Mode::reset_on_segment:
                session_.on_data_after_close(source_);
                break;
        }
        return;
    }
    if (nread == UV_EOF) {
        source_eof_ = true;
        session_.trace(dir_ == config::Direction::upstream ? "client eof" : "server eof");
        if (mode_ == Mode::reset_on_segment) {
            session_.on_data_after_close(source_);
            return;
        }
        if (mode_ != Mode::forward) {
            session_.on_eof_after_close(source_);
            return;
        }
        // Under a stall the FIN waits (maybe_pass_fin) until the stall ends; a blackhole
        // (drop) has read it, but lets it through no more than the bytes before it.
        if (filter_ != nullptr) {
            std::string rest;
            filter_->flush(rest);
            if (!rest.empty()) process(rest.data(), rest.size(), nullptr);
        }
        maybe_pass_fin();
        return;
    }
    // ECONNRESET and friends: the source is gone abruptly. Mirror it, never turn it into a FIN;
    // a blackhole swallows it like any segment, until the stall ends.
    if (mode_ == Mode::forward && stall_drops_ > 0 && !close_passes() && !session_.ending()) {
        source_eof_ = true;  // nothing more comes from this socket
        source_error_ = static_cast<int>(nread);
        session_.trace(dir_ == config::Direction::upstream ? "client reset held by stall"
                                                           : "server reset held by stall");
        return;
    }
    session_.on_peer_reset(source_, static_cast<int>(nread));
}

// Runs the chunk past every trigger watching this direction, forwarding byte-exact segments
// between the points where faults fire.
void Pipe::process(const char* p, size_t n, Chunk* owner) {
    if (holding_for_trigger_) {
        trigger_hold_.append(p, n);
        apply_backpressure();
        return;
    }
    if (!session_.watches(dir_)) {
        emit(p, n, owner);
        return;
    }
    size_t off = 0;
    while (off < n) {
        Session::ScanResult r = session_.scan(dir_, p + off, n - off);
        emit(p + off, r.pass, owner);
        off += r.pass;
        if (r.hold) {
            holding_for_trigger_ = true;
            trigger_hold_.assign(p + off, n - off);
            source_.stop_reading();
            return;
        }
        if (!r.fired) break;
        // A fault fires after exactly `off` bytes; what follows goes through the pipe as the
        // fault left it.
        session_.fire_pending();
        if (mode_ != Mode::forward || !sink_.usable() || session_.ending()) return;
        if (!session_.watches(dir_)) {
            emit(p + off, n - off, owner);
            return;
        }
    }
}

void Pipe::release_trigger_hold() {
    if (!holding_for_trigger_) return;
    holding_for_trigger_ = false;
    std::string held;
    held.swap(trigger_hold_);
    if (mode_ == Mode::forward && !held.empty()) process(held.data(), held.size(), nullptr);
    if (!holding_for_trigger_) start();
    maybe_pass_fin();
}

void Pipe::emit(const char* p, size_t n, Chunk* owner) {
    if (n == 0 || mode_ != Mode::forward) return;
    forwarded_ += n;
    if (!shaping()) {
        int err = sink_.write(p, n, owner);
        if (err != 0) {
            session_.on_peer_reset(sink_, err);
            return;
        }
        apply_backpressure();
        return;
    }
    // Counted in µs from uv_hrtime: the loop's cached millisecond clock both lags real time
    // and truncates, and a delay counted from it would end up to a millisecond early.
    uint64_t now = uv_hrtime() / 1000;
    uint64_t delay_us = static_cast<uint64_t>(latency_.count());
    if (jitter_.count() > 0) {
        std::uniform_int_distribution<int64_t> d(-jitter_.count(), jitter_.count());
        int64_t v = static_cast<int64_t>(delay_us) + d(session_.rng());
        delay_us = v < 0 ? 0 : static_cast<uint64_t>(v);
    }
    // Order is preserved: a chunk never leaves before the one read ahead of it.
    uint64_t release = std::max(now + delay_us, last_release_us_);
    last_release_us_ = release;
    if (!queue_) queue_ = std::make_unique<std::deque<Held>>();
    queue_->push_back(Held{std::string(p, n), 0, release});
    queued_held_ += n;
    apply_backpressure();
    pump();
}

void Pipe::pump() {
    if (!sink_.usable() || slice_wait_ || stalled()) return;
    uint64_t now_us = uv_hrtime() / 1000;
    uint64_t now = uv_now(session_.loop());
    while (!queue_empty()) {
        if (sink_.queued_bytes() >= kHighWatermark) return;  // on_write_done pumps again
        Held& h = queue_->front();
        if (h.release_us > now_us) {
            // Rounded up; a libuv timer may still fire up to 1 ms early (its clock truncates
            // to ms), in which case this check re-arms it for the remainder.
            arm_timer((h.release_us - now_us + 999) / 1000);
            return;
        }
        size_t n = h.bytes.size() - h.off;
        // Linux autocorks small writes made while an earlier one is still queued, merging
        // the pieces back into one segment: the next piece waits until the last has left.
        if (slice_max_ > 0 && unsent_bytes(sink_.tcp()) > 0) {
            slice_wait_ = true;
            arm_timer(0);
            return;
        }
        if (slice_max_ > 0) {
            std::uniform_int_distribution<uint64_t> d(slice_min_, slice_max_);
            n = std::min<size_t>(n, d(session_.rng()));
        }
        if (rate_ > 0) {
            // Token bucket holding at most 50 ms of rate, so bursts stay small.
            double cap = std::max<double>(static_cast<double>(rate_) / 20.0, 1.0);
            tokens_ =
                std::min(cap, tokens_ + static_cast<double>(now - refill_ms_) * rate_ / 1000.0);
            refill_ms_ = now;
            if (tokens_ < 1.0) {
                uint64_t wait = static_cast<uint64_t>((1.0 - tokens_) * 1000.0 / rate_) + 1;
                arm_timer(wait);
                return;
            }
            n = std::min<size_t>(n, static_cast<size_t>(tokens_));
            tokens_ -= static_cast<double>(n);
        }
        int err = sink_.write(h.bytes.data() + h.off, n, nullptr);
        if (err != 0) {
            session_.on_peer_reset(sink_, err);
            return;
        }
        h.off += n;
        queued_held_ -= n;
        if (h.off == h.bytes.size()) queue_->pop_front();
        if (slice_max_ > 0 && !queue_empty()) {
            // One piece per timer turn: pieces leave as separate segments (TCP_NODELAY).
            slice_wait_ = true;
            arm_timer(slice_delay_ms_);
            break;
        }
    }
    apply_backpressure();
    maybe_pass_fin();
    try_fin();
}

void Pipe::arm_timer(uint64_t delay_ms) {
    if (!timer_open_) {
        uv_timer_init(session_.loop(), &timer_);
        timer_.data = this;
        timer_open_ = true;
        session_.handle_opened();
    }
    uv_timer_start(&timer_, on_timer, delay_ms, 0);
}

void Pipe::on_timer(uv_timer_t* t) {
    auto* self = static_cast<Pipe*>(t->data);
    self->slice_wait_ = false;
    self->pump();
}

void Pipe::close_timer() {
    if (!timer_open_) return;
    timer_open_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_timer_closed);
}

void Pipe::on_timer_closed(uv_handle_t* h) {
    auto* self = static_cast<Pipe*>(h->data);
    self->session_.timer_closed();
}

void Pipe::add_latency(config::Duration delay, config::Duration jitter) {
    latency_ += delay;
    jitter_ += jitter;
}

void Pipe::set_bandwidth(uint64_t bytes_per_sec) {
    rate_ = bytes_per_sec;
    tokens_ = 0;
    refill_ms_ = uv_now(session_.loop());
}

void Pipe::set_slice(uint64_t min_size, uint64_t max_size, config::Duration delay) {
    slice_min_ = min_size;
    slice_max_ = max_size;
    slice_delay_ms_ = static_cast<uint64_t>((delay.count() + 999) / 1000);
}

void Pipe::stall(config::StallFault::Mode mode, bool pass_close) {
    if (mode == config::StallFault::Mode::hold) {
        ++stall_holds_;
    } else {
        ++stall_drops_;
        if (pass_close) ++stall_passing_;
    }
    apply_stall_reading();
}

void Pipe::unstall(config::StallFault::Mode mode, bool pass_close) {
    int& n = mode == config::StallFault::Mode::hold ? stall_holds_ : stall_drops_;
    if (n > 0) --n;
    if (mode == config::StallFault::Mode::drop && pass_close && stall_passing_ > 0)
        --stall_passing_;
    if (!stalled() && source_error_ != 0 && mode_ == Mode::forward) {
        session_.on_peer_reset(source_, source_error_);
        return;
    }
    apply_stall_reading();
    if (stalled()) return;
    pump();
    maybe_pass_fin();  // a FIN the stall held, when pump had nothing to send
}

// Reading after a stall began or ended: a drop stall reads (and discards) whatever else would
// hold the source; without one, a hold stall, backpressure or a trigger's hold point stop it.
// Stalls only decide this while the pipe forwards; the terminal modes read on their own.
void Pipe::apply_stall_reading() {
    if (mode_ != Mode::forward) return;
    if (stall_drops_ == 0 && (stall_holds_ > 0 || paused_ || holding_for_trigger_))
        source_.stop_reading();
    start();
}

void Pipe::discard_pending(bool keep_shaped) {
    trigger_hold_.clear();
    holding_for_trigger_ = false;
    if (keep_shaped && !stalled()) return;
    queue_.reset();
    queued_held_ = 0;
}

void Pipe::finish_with_fin() {
    fin_wanted_ = true;
    try_fin();
}

void Pipe::try_fin() {
    if (!fin_wanted_ || !queue_empty() || !sink_.usable() || sink_.fin_requested()) return;
    if (sink_.shutdown_write() != 0) sink_.reset();
}

void Pipe::apply_backpressure() {
    size_t queued = sink_.queued_bytes() + held_bytes();
    if (!paused_ && queued >= kHighWatermark) {
        paused_ = true;
        if (stall_drops_ == 0) source_.stop_reading();  // a blackhole reads on
        session_.on_backpressure(true);
    } else if (paused_ && queued <= kLowWatermark) {
        paused_ = false;
        session_.on_backpressure(false);
        start();
    }
}

void Pipe::on_write_done(int status) {
    if (status != 0) {
        // EPIPE/ECONNRESET: the sink reset us while bytes were in flight.
        session_.on_peer_reset(sink_, status);
        return;
    }
    apply_backpressure();
    pump();
    maybe_pass_fin();
    session_.on_write_drained();
}

void Pipe::maybe_pass_fin() {
    if (!source_eof_ || source_error_ != 0 || mode_ != Mode::forward || sink_.fin_requested() ||
        !sink_.usable())
        return;
    if (sink_.queued_bytes() != 0 || held_bytes() != 0 || (stalled() && !close_passes()) ||
        holding_for_trigger_)
        return;
    if (fin_delay_ms_ > 0) {
        uint64_t now = uv_now(session_.loop());
        if (fin_due_ms_ == 0) fin_due_ms_ = now + fin_delay_ms_;
        if (now < fin_due_ms_) {
            arm_timer(fin_due_ms_ - now);  // on_timer -> pump -> here again
            return;
        }
    }
    int err = sink_.shutdown_write();
    if (err != 0) session_.on_peer_reset(sink_, err);
}

void Pipe::on_fin_sent(int status) {
    if (status != 0) {
        session_.on_peer_reset(sink_, status);
        return;
    }
    fin_done_ = true;
    session_.trace(dir_ == config::Direction::upstream ? "fin passed to server"
                                                       : "fin passed to client");
    session_.on_direction_done();
}

}  // namespace tcpfault

#include "proxy/pipe.hpp"

#include <algorithm>

namespace tcpfault {

namespace {
// Once terminated, bytes a stage still holds must move this often, else they are dropped so
// the sink's ending can go ahead.
constexpr uint64_t kDrainBoundUs = 3'000'000;
}  // namespace

Pipe::~Pipe() {
    deadlines_.clear(this);
}

bool Pipe::held_endlessly() const {
    return std::any_of(stages_.begin(), stages_.end(), [](const auto& s) { return s->endless(); });
}

void Pipe::start() {
    update_reading();
}

void Pipe::hold_reading(bool held) {
    reading_held_ = held;
    update_reading();
}

// Whether the source is read: a blackhole reads (and discards) whatever holds the stream
// otherwise; a hold stall, a full sink or a trigger's hold point stop it.
void Pipe::update_reading() {
    bool want = !terminated_ && !source_eof_ && source_error_ == 0 && !reading_held_;
    if (want) {
        bool drops = false, stops = false;
        for (const auto& s : stages_) {
            drops = drops || s->drops_input();
            stops = stops || s->stops_reading();
        }
        want = drops || (!stops && !paused_ && !holding_for_trigger_);
    }
    if (want)
        source_.start_reading();
    else
        source_.stop_reading();
}

void Pipe::add_stage(std::unique_ptr<faults::Stage> s) {
    if (terminated_) return;
    stages_.push_back(std::move(s));
    stages_changed();
}

void Pipe::lift(const std::string& rule) {
    size_t before = stages_.size();
    std::erase_if(stages_, [&](const auto& s) { return s->rule() == rule; });
    if (stages_.size() != before) stages_changed();
}

// After a stage came or went: reading, the queue, a held FIN or RST and the deadline.
void Pipe::stages_changed() {
    std::erase_if(stages_, [](const auto& s) { return s->finished(); });
    shaping_stages_ = static_cast<int>(
        std::count_if(stages_.begin(), stages_.end(), [](const auto& s) { return s->shapes(); }));
    update_reading();
    pump();
    // A RST a stage swallowed passes once no stage keeps it.
    if (source_error_ != 0 && !terminated_ &&
        std::none_of(stages_.begin(), stages_.end(), [](const auto& s) { return s->holds_end(); }))
        events_.on_source_reset(dir_, source_error_);
}

void Pipe::on_data(Chunk& chunk, size_t n, bool fin_follows) {
    bytes_ += n;
    events_.on_bytes(dir_, n);
    if (terminated_) return;  // read before the fault stopped it: dropped
    bool drop = false;
    if (!stages_.empty()) {
        faults::StageContext ctx = events_.stage_context();
        for (auto& s : stages_) drop = s->on_data(n, ctx) == faults::Stage::Input::drop || drop;
        if (terminated_) return;  // a stage ended the connection
    }
    if (drop) return;
    if (filter_ != nullptr) {
        std::string out;
        filter_->feed(chunk.get(), n, out);
        process(out.data(), out.size(), nullptr);
    } else {
        // The read's last bytes may wait for the FIN behind them and leave in one segment with
        // it, when no stage can act on the FIN first (on_eof uncorks them in any case).
        fin_end_ = fin_follows && stages_.empty() ? chunk.get() + n : nullptr;
        process(chunk.get(), n, &chunk);
        fin_end_ = nullptr;
    }
}

void Pipe::on_eof() {
    source_eof_ = true;
    fin_arrival_us_ = Deadlines::now_us();
    events_.trace(dir_ == config::Direction::upstream ? "client eof" : "server eof");
    if (!stages_.empty()) {
        faults::StageContext ctx = events_.stage_context();
        for (auto& s : stages_) s->on_end(ctx);
    }
    if (!terminated_) {
        if (filter_ != nullptr) {
            std::string rest;
            filter_->flush(rest);
            if (!rest.empty()) process(rest.data(), rest.size(), nullptr);
        }
        maybe_pass_fin();
    }
    sink_.uncork();  // bytes written to leave with the FIN, if it could not follow them
}

// ECONNRESET and friends: the source is gone abruptly. Mirrored as a RST, never turned into a
// FIN; a stage that keeps the stream's end (a blackhole) swallows it until it goes.
void Pipe::on_read_error(int err) {
    source_error_ = err;
    if (!stages_.empty()) {
        faults::StageContext ctx = events_.stage_context();
        for (auto& s : stages_) s->on_end(ctx);
    }
    if (terminated_) return;
    if (std::any_of(stages_.begin(), stages_.end(), [](const auto& s) { return s->holds_end(); })) {
        events_.trace(dir_ == config::Direction::upstream ? "client reset held by stage"
                                                          : "server reset held by stage");
        return;
    }
    events_.on_source_reset(dir_, err);
}

// Runs the chunk past every trigger watching this direction, forwarding byte-exact segments
// between the points where faults fire.
void Pipe::process(const char* p, size_t n, Chunk* owner) {
    if (holding_for_trigger_) {
        trigger_hold_.append(p, n);
        apply_backpressure();
        return;
    }
    size_t off = 0;
    while (off < n) {
        if (!events_.watches(dir_)) {
            emit(p + off, n - off, owner, push_for(p + n));
            return;
        }
        ScanResult r = events_.scan(dir_, p + off, n - off);
        // Only the chunk's last segment may take the chunk over: the bytes after a fault's
        // point are read from it once this segment is queued. Nor may it wait for the FIN when
        // a fault fires after it.
        bool last = off + r.pass == n;
        emit(p + off, r.pass, last ? owner : nullptr,
             last && !r.fired && !r.hold ? push_for(p + n) : Endpoint::Push::now);
        off += r.pass;
        if (r.hold) {
            holding_for_trigger_ = true;
            trigger_hold_.assign(p + off, n - off);
            update_reading();
            return;
        }
        if (!r.fired) return;
        // A fault fires after exactly `off` bytes; what follows goes through the pipe as the
        // fault left it.
        events_.fire_pending();
        if (terminated_) return;
    }
}

void Pipe::release_trigger_hold() {
    if (!holding_for_trigger_) return;
    holding_for_trigger_ = false;
    std::string held;
    held.swap(trigger_hold_);
    if (!terminated_ && !held.empty()) process(held.data(), held.size(), nullptr);
    update_reading();
    maybe_pass_fin();
}

void Pipe::emit(const char* p, size_t n, Chunk* owner, Endpoint::Push push) {
    if (n == 0 || terminated_) return;
    forwarded_ += n;
    if (!shaping()) {
        int err = sink_.write(p, n, owner, push);
        if (err != 0) {
            events_.on_sink_error(dir_, err);
            return;
        }
        apply_backpressure();
        return;
    }
    faults::StageContext ctx = events_.stage_context();
    if (!queue_) queue_ = std::make_unique<std::deque<faults::Held>>();
    faults::Held h;
    h.len = n;
    h.release_us = ctx.now_us;
    if (BufferPool::worth_taking(owner, n)) {
        h.chunk = std::move(*owner);
        h.begin = p;
    } else {
        h.copy.assign(p, n);
    }
    for (auto& s : stages_) s->on_enqueue(h, ctx);
    queue_->push_back(std::move(h));
    queued_held_ += n;
    apply_backpressure();
    pump();
}

void Pipe::pump() {
    pump_wake_us_ = 0;
    if (!sink_.usable() || sink_.fin_requested()) {
        rearm();
        return;
    }
    faults::StageContext ctx = events_.stage_context();
    size_t writes = 0;
    while (!queue_empty()) {
        if (sink_.queued_cost() >= kHighWatermark) break;  // on_write_done pumps again
        faults::Held& h = queue_->front();
        if (h.release_us > ctx.now_us) {
            pump_wake_us_ = h.release_us;
            hold_drain_deadline_until(h.release_us);
            break;
        }
        faults::Stage::Gate g;
        uint64_t wake = 0;
        for (auto& s : stages_) {
            faults::Stage::Gate sg = s->gate(h, ctx);
            g.allow = std::min(g.allow, sg.allow);
            g.own_segment = g.own_segment || sg.own_segment;
            if (sg.allow == 0 && sg.wake_us != 0 && (wake == 0 || sg.wake_us < wake))
                wake = sg.wake_us;
        }
        if (g.allow == 0) {
            pump_wake_us_ = wake;  // 0: until a stage changes
            hold_drain_deadline_until(wake);
            break;
        }
        // Separate segments get a turn of the loop each, so a reader that keeps up sees them
        // apart; plain writes go up to a bound per turn.
        if (writes == kMaxWritesPerTurn || (g.own_segment && writes > 0)) {
            next_turn_ = true;
            break;
        }
        size_t n = std::min(h.left(), g.allow);
        // The last write of a held read may hand its buffer on to the socket's write queue.
        Chunk* owner = h.chunk && n == h.left() ? &h.chunk : nullptr;
        int err = sink_.write(h.data() + h.off, n, owner,
                              g.own_segment ? Endpoint::Push::alone : Endpoint::Push::now);
        if (err != 0) {
            // A buffer the failed write took is gone with it, and so is this entry: nothing may
            // read it again, whatever the error's handling does next.
            if (owner != nullptr && !h.chunk) {
                queued_held_ -= h.left();
                queue_->pop_front();
            }
            events_.on_sink_error(dir_, err);
            return;
        }
        ++writes;
        for (auto& s : stages_) s->on_sent(n, ctx);
        h.off += n;
        queued_held_ -= n;
        if (h.off == h.len) {
            if (h.chunk) loop_buffer_pool().give(std::move(h.chunk));
            queue_->pop_front();
        }
        if (terminated_) drain_deadline_us_ = ctx.now_us + kDrainBoundUs;
    }
    // An emptied queue goes: a shaped connection that falls idle keeps no deque (~600 bytes).
    if (queue_ && queue_->empty()) queue_.reset();
    apply_backpressure();
    maybe_pass_fin();
    rearm();
    if (next_turn_) {
        next_turn_ = false;
        deadlines_.next_turn(this);
    }
    check_drained();
}

void Pipe::apply_backpressure() {
    size_t queued = sink_.queued_cost() + held_cost();
    if (!paused_ && queued >= kHighWatermark) {
        paused_ = true;
        update_reading();
    } else if (paused_ && queued <= kLowWatermark) {
        paused_ = false;
        update_reading();
    }
}

void Pipe::on_write_done() {
    apply_backpressure();
    pump();
}

void Pipe::maybe_pass_fin() {
    fin_wake_us_ = 0;
    if (!source_eof_ || source_error_ != 0 || terminated_ || sink_.fin_requested() ||
        !sink_.usable())
        return;
    if (held_bytes() != 0 || holding_for_trigger_) return;
    uint64_t release = 0;
    for (const auto& s : stages_) {
        if (s->holds_end()) return;
        release = std::max(release, s->fin_release_us(fin_arrival_us_));
    }
    if (release > Deadlines::now_us()) {
        fin_wake_us_ = release;
        rearm();
        return;
    }
    // The FIN leaves after whatever the sink still queues.
    int err = sink_.shutdown_write();
    if (err != 0) events_.on_sink_error(dir_, err);
}

void Pipe::on_fin_sent() {
    fin_done_ = true;
    events_.trace(dir_ == config::Direction::upstream ? "fin passed to server"
                                                      : "fin passed to client");
    events_.on_direction_done(dir_);
}

void Pipe::terminate(bool keep_shaped) {
    if (terminated_) return;
    terminated_ = true;
    trigger_hold_.clear();
    holding_for_trigger_ = false;
    bool stalled = std::any_of(stages_.begin(), stages_.end(), [](const auto& s) {
        return s->stops_reading() || s->drops_input();
    });
    if (!keep_shaped || stalled) {
        queue_.reset();
        queued_held_ = 0;
    }
    drain_deadline_us_ = Deadlines::now_us() + kDrainBoundUs;
    fin_wake_us_ = 0;
    pump();
}

// Held bytes due later (a latency, a pace) wait on the fault's schedule, not on the peer: its
// 3 s to take them count from when they are due. Only while the peer has taken everything
// written so far: a peer that is not reading is what the bound is for, whatever the schedule.
// A zero rate (no wake) leaves the bound as is.
void Pipe::hold_drain_deadline_until(uint64_t due_us) {
    if (terminated_ && due_us != 0 && sink_.queued_bytes() == 0)
        drain_deadline_us_ = std::max(drain_deadline_us_, due_us + kDrainBoundUs);
}

void Pipe::check_drained() {
    if (terminated_ && queue_empty()) events_.on_drained(dir_);
}

void Pipe::rearm() {
    uint64_t next = 0;
    auto consider = [&](uint64_t t) {
        if (t != 0 && (next == 0 || t < next)) next = t;
    };
    consider(pump_wake_us_);
    consider(fin_wake_us_);
    for (const auto& s : stages_) consider(s->wake_us());
    if (terminated_ && !queue_empty()) consider(drain_deadline_us_);
    deadlines_.set(this, next);
}

void Pipe::on_deadline(uint64_t now) {
    if (terminated_ && !queue_empty() && drain_deadline_us_ != 0 && now >= drain_deadline_us_) {
        // The peer (or a zero rate) took nothing for too long: what is left is dropped.
        queue_.reset();
        queued_held_ = 0;
    }
    bool woke = false;
    if (!stages_.empty()) {
        faults::StageContext ctx = events_.stage_context();
        // By index: a stage's wake-up may end the connection, never remove stages.
        for (size_t i = 0; i < stages_.size(); ++i) {
            uint64_t w = stages_[i]->wake_us();
            if (w != 0 && w <= now) {
                stages_[i]->on_wake(ctx);
                woke = true;
            }
        }
    }
    if (woke) {
        stages_changed();  // removes finished stages, pumps
        return;
    }
    pump();
}

}  // namespace tcpfault

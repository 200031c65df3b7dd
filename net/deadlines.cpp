#include "net/deadlines.hpp"

#include <algorithm>

namespace tcpfault {

void Deadlines::set(Client* c, uint64_t at_us) {
    if (closed_) return;
    auto it = std::find_if(entries_.begin(), entries_.end(),
                           [c](const Entry& e) { return e.client == c; });
    if (at_us == 0) {
        if (it == entries_.end()) return;
        entries_.erase(it);
    } else if (it == entries_.end()) {
        entries_.push_back(Entry{c, at_us});
    } else {
        if (it->at_us == at_us) return;
        it->at_us = at_us;
    }
    if (!firing_) rearm();
}

void Deadlines::clear(Client* c) {
    if (turn_) std::erase(turn_->clients, c);
    set(c, 0);
}

void Deadlines::next_turn(Client* c) {
    if (closed_) return;
    if (!turn_) {
        turn_ = std::make_unique<Turn>();
        turn_->deadlines = this;
        uv_idle_init(loop_, &turn_->idle);
        turn_->idle.data = turn_.get();
        owner_.handle_opened();
    }
    auto& waiting = turn_->clients;
    if (std::find(waiting.begin(), waiting.end(), c) == waiting.end()) waiting.push_back(c);
    if (!turn_->active) {
        uv_idle_start(&turn_->idle, on_idle);
        turn_->active = true;
    }
}

void Deadlines::on_idle(uv_idle_t* h) {
    static_cast<Turn*>(h->data)->deadlines->run_turn();
}

void Deadlines::run_turn() {
    std::vector<Client*> now;
    now.swap(turn_->clients);
    for (Client* c : now) {
        if (closed_) break;
        c->on_deadline(now_us());
    }
    if (turn_ && turn_->clients.empty() && turn_->active) {
        uv_idle_stop(&turn_->idle);
        turn_->active = false;
    }
}

void Deadlines::rearm() {
    uint64_t next = 0;
    for (const Entry& e : entries_)
        if (next == 0 || e.at_us < next) next = e.at_us;
    if (next == 0) {
        if (open_ && armed_for_us_ != 0) uv_timer_stop(&timer_);
        armed_for_us_ = 0;
        return;
    }
    if (next == armed_for_us_) return;
    if (!open_) {
        uv_timer_init(loop_, &timer_);
        timer_.data = this;
        open_ = true;
        owner_.handle_opened();
    }
    uint64_t now = now_us();
    uint64_t ms = next > now ? (next - now + 999) / 1000 : 1;
    uv_timer_start(&timer_, on_timer, std::max<uint64_t>(ms, 1), 0);
    armed_for_us_ = next;
}

void Deadlines::on_timer(uv_timer_t* t) {
    static_cast<Deadlines*>(t->data)->fire();
}

void Deadlines::fire() {
    armed_for_us_ = 0;
    firing_ = true;
    // The clients due now, each told once, in deadline order. A callback may set any deadline
    // (its own included: one set due again waits for the next pass, at least 1 ms away), clear
    // another client's, or close everything.
    uint64_t now = now_us();
    // The list is borrowed from the loop's thread (one owner fires at a time; a callback that
    // made another fire would find it empty and use a list of its own).
    thread_local std::vector<Entry> spare;
    std::vector<Entry> due;
    due.swap(spare);
    due.clear();
    for (const Entry& e : entries_)
        if (e.at_us <= now) due.push_back(e);
    std::sort(due.begin(), due.end(),
              [](const Entry& a, const Entry& b) { return a.at_us < b.at_us; });
    for (const Entry& d : due) {
        if (closed_) break;
        auto it = std::find_if(entries_.begin(), entries_.end(), [&](const Entry& e) {
            return e.client == d.client && e.at_us <= now;
        });
        if (it == entries_.end()) continue;  // cleared or moved by an earlier callback
        entries_.erase(it);
        d.client->on_deadline(now);
    }
    due.clear();
    spare.swap(due);
    firing_ = false;
    if (!closed_) rearm();
}

void Deadlines::close() {
    if (closed_) return;
    closed_ = true;
    entries_.clear();
    if (turn_) {
        turn_->clients.clear();
        // Owned by its close callback from here on.
        Turn* t = turn_.release();
        uv_close(reinterpret_cast<uv_handle_t*>(&t->idle), on_idle_closed);
    }
    if (!open_) {
        // Opened only to be closed: the owner is told in a callback, never synchronously.
        uv_timer_init(loop_, &timer_);
        timer_.data = this;
        open_ = true;
        owner_.handle_opened();
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_closed);
}

void Deadlines::on_idle_closed(uv_handle_t* h) {
    std::unique_ptr<Turn> t(static_cast<Turn*>(h->data));
    Owner& owner = t->deadlines->owner_;
    t.reset();
    owner.handle_closed();
}

void Deadlines::on_closed(uv_handle_t* h) {
    auto* self = static_cast<Deadlines*>(h->data);
    self->open_ = false;
    self->owner_.handle_closed();
}

}  // namespace tcpfault

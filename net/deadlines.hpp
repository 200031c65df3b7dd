// Every timed thing of one owner (a session: its connect timeout, rule timers, stages, the
// endings of its two sockets) on ONE libuv timer, armed for the earliest deadline.
//
// Deadlines are in µs of uv_hrtime (the loop's cached millisecond clock lags and truncates).
// The timer is never armed for 0 ms: libuv 1.44 runs a timer re-armed at 0 ms again in the
// same pass, so a deadline that is already due is served at least 1 ms later, after the loop
// has polled for I/O. A late or early wake-up just re-arms for what is left.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace tcpfault {

class Deadlines {
  public:
    // Something with a deadline; it is told when the deadline has passed.
    class Client {
      public:
        virtual void on_deadline(uint64_t now_us) = 0;

      protected:
        ~Client() = default;
    };

    // Reports handle open/close to the owner, which may be freed only once every handle it
    // owns has closed.
    class Owner {
      public:
        virtual void handle_opened() = 0;
        virtual void handle_closed() = 0;

      protected:
        ~Owner() = default;
    };

    Deadlines(uv_loop_t* loop, Owner& owner) : loop_(loop), owner_(owner) {}
    Deadlines(const Deadlines&) = delete;
    Deadlines& operator=(const Deadlines&) = delete;

    static uint64_t now_us() { return uv_hrtime() / 1000; }

    // Sets (or moves) `c`'s deadline; 0 clears it. Never calls back synchronously.
    void set(Client* c, uint64_t at_us);
    // Calls `c` on the loop's next turn, after it has polled for I/O (a uv_idle, made on first
    // use): for work that made progress and has more to do now. Cleared by clear() too.
    void next_turn(Client* c);
    void clear(Client* c);
    // Closes the timer for good (the owner is ending); later sets are ignored. The owner's
    // handle_closed() always follows from a close callback, even if no deadline was ever set.
    void close();
    bool closed() const { return closed_; }

  private:
    struct Entry {
        Client* client;
        uint64_t at_us;
    };
    void rearm();
    void fire();
    void run_turn();
    static void on_timer(uv_timer_t* t);
    static void on_idle(uv_idle_t* h);
    static void on_closed(uv_handle_t* h);
    static void on_idle_closed(uv_handle_t* h);

    // The idle handle and who waits for it, only for owners that ever need a next turn; freed
    // in its close callback.
    struct Turn {
        uv_idle_t idle{};
        Deadlines* deadlines = nullptr;
        bool active = false;
        std::vector<Client*> clients;
    };

    uv_loop_t* loop_;
    Owner& owner_;
    std::vector<Entry> entries_;  // a handful per owner: a linear scan is cheapest
    std::unique_ptr<Turn> turn_;
    uv_timer_t timer_{};
    bool open_ = false;  // the timer handle exists
    bool closed_ = false;
    bool firing_ = false;
    uint64_t armed_for_us_ = 0;  // the deadline the timer is armed for, 0 = stopped
};

}  // namespace tcpfault

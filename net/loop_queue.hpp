// Hands work to an event loop from another thread: tasks queue under a mutex and a uv_async_t
// wakes the loop to run them in order. The only way threads talk to each other's loops.
#pragma once

#include <uv.h>

#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace tcpfault {

class LoopQueue {
  public:
    using Task = std::function<void()>;

    // Must be called on `loop`'s thread.
    explicit LoopQueue(uv_loop_t* loop);
    ~LoopQueue();
    LoopQueue(const LoopQueue&) = delete;
    LoopQueue& operator=(const LoopQueue&) = delete;

    // Runs `t` on the loop's thread, later; callable from any thread. False (and `t` dropped)
    // once the queue is closed.
    bool post(Task t);
    // Runs `t` on the loop's thread and waits for it (inline when already on that thread).
    // Never call it from a loop that the target loop itself may wait on: only the main loop
    // waits for workers, never the reverse. False if the queue was closed and `t` never ran.
    bool run_sync(const Task& t);
    // Closes the wake-up handle; on the loop's thread. Pending tasks still run first.
    void close();
    bool on_loop_thread() const { return std::this_thread::get_id() == owner_; }

  private:
    static void on_async(uv_async_t* a);
    static void on_closed(uv_handle_t* h);
    void drain();

    uv_async_t async_{};
    std::thread::id owner_;
    std::mutex mu_;
    std::deque<Task> tasks_;
    bool closed_ = false;       // no more posts accepted
    bool handle_open_ = false;  // until the close callback ran
};

}  // namespace tcpfault

// Extra event-loop threads (`workers: N`). Each runs its own libuv loop holding one replica of
// every proxy (an SO_REUSEPORT listener and the sessions the kernel hands it); the main loop
// keeps the admin API, signals and the rule clock, and reaches a worker only through its
// queue.
#pragma once

#include <uv.h>

#include <functional>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "net/loop_queue.hpp"

namespace tcpfault {

class Worker {
  public:
    explicit Worker(unsigned index);
    ~Worker();  // stops and joins
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    uv_loop_t* loop() { return &loop_; }
    LoopQueue& queue() { return *queue_; }
    unsigned index() const { return index_; }
    // Ends the thread once every handle on its loop is closed; waits for it.
    void stop();

  private:
    void run(std::promise<void>* ready);

    unsigned index_;
    uv_loop_t loop_{};
    std::unique_ptr<LoopQueue> queue_;
    std::thread thread_;
    bool stopped_ = false;
};

// The workers beside the main loop, plus how a worker tells the main loop that something it
// owns may be reapable.
struct WorkerPool {
    std::vector<std::unique_ptr<Worker>> workers;
    LoopQueue* main = nullptr;
    std::function<void()> on_idle;  // runs on the main loop
};

}  // namespace tcpfault

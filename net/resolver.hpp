// Upstream name lookups, off the event loops and off libuv's shared thread pool.
//
// getaddrinfo() blocks and cannot be cancelled. On libuv's 4-thread pool a name whose DNS
// server never answers took every thread, so a *different* proxy's `localhost` lookups queued
// behind it, and the requests kept the loop (and SIGTERM) waiting. Here:
// - lookups run on the resolver's own threads (up to kMaxThreads), which never keep a loop
//   alive and are left behind at exit;
// - a name is looked up once at a time: connections arriving meanwhile wait for the same
//   answer, and an answer (an error too) is reused for kCacheTtl, so a storm of connections
//   makes at most one lookup per name per second;
// - a waiter can walk away at any time (its connection ended or timed out): its callback is
//   then never run.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "net/loop_queue.hpp"

namespace tcpfault {

class Resolver {
  public:
    static constexpr auto kCacheTtl = std::chrono::seconds(1);
    static constexpr size_t kMaxThreads = 8;

    struct Result {
        int status = 0;  // 0 or a libuv error (UV_EAI_*)
        std::vector<sockaddr_storage> addrs;
    };
    using Done = std::function<void(const Result&)>;

    // A lookup in progress for one caller; cancel() (or dropping it) means `done` never runs.
    class Ticket {
      public:
        void cancel();

      private:
        friend class Resolver;
        std::mutex mu;
        Done done;
        LoopQueue* queue = nullptr;
    };

    // The process's resolver (never destroyed: its threads may still be inside getaddrinfo at
    // exit).
    static Resolver& instance();

    // Resolves host:port; `done` runs on `queue`'s loop, never synchronously.
    std::shared_ptr<Ticket> resolve(const std::string& host, uint16_t port, LoopQueue& queue,
                                    Done done);

  private:
    struct Lookup {
        std::string host;
        uint16_t port = 0;
        bool running = false;
        std::vector<std::shared_ptr<Ticket>> waiters;
        std::chrono::steady_clock::time_point answered;
        bool has_answer = false;
        Result answer;
    };
    using Key = std::pair<std::string, uint16_t>;

    Resolver() = default;
    void worker();
    static void deliver(const std::shared_ptr<Ticket>& t, const Result& r);

    std::mutex mu_;
    std::condition_variable cv_;
    std::map<Key, Lookup> lookups_;  // in flight, or answered within kCacheTtl
    std::deque<Key> pending_;        // lookups waiting for a thread
    size_t threads_ = 0;
    size_t idle_ = 0;
};

}  // namespace tcpfault

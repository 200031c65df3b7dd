#include "net/loop_queue.hpp"

#include <future>

namespace tcpfault {

LoopQueue::LoopQueue(uv_loop_t* loop) : owner_(std::this_thread::get_id()) {
    uv_async_init(loop, &async_, on_async);
    async_.data = this;
    handle_open_ = true;
}

LoopQueue::~LoopQueue() = default;  // the owner closes first and runs the loop to the callback

bool LoopQueue::post(Task t) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        if (closed_) return false;
        tasks_.push_back(std::move(t));
    }
    uv_async_send(&async_);
    return true;
}

bool LoopQueue::run_sync(const Task& t) {
    if (on_loop_thread()) {
        t();
        return true;
    }
    std::promise<void> done;
    std::future<void> f = done.get_future();
    bool queued = post([&] {
        try {
            t();
            done.set_value();
        } catch (...) {
            done.set_exception(std::current_exception());
        }
    });
    if (!queued) return false;
    f.get();
    return true;
}

void LoopQueue::close() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        closed_ = true;
    }
    drain();
    if (handle_open_ && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&async_)))
        uv_close(reinterpret_cast<uv_handle_t*>(&async_), on_closed);
}

void LoopQueue::on_async(uv_async_t* a) {
    static_cast<LoopQueue*>(a->data)->drain();
}

void LoopQueue::on_closed(uv_handle_t* h) {
    static_cast<LoopQueue*>(h->data)->handle_open_ = false;
}

void LoopQueue::drain() {
    std::deque<Task> now;
    {
        std::lock_guard<std::mutex> lock(mu_);
        now.swap(tasks_);
    }
    for (auto& t : now) t();
}

}  // namespace tcpfault

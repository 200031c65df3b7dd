#include "net/worker.hpp"

#include <future>

#include "observe/log.hpp"

namespace tcpfault {

Worker::Worker(unsigned index) : index_(index) {
    std::promise<void> ready;
    std::future<void> started = ready.get_future();
    thread_ = std::thread([this, &ready] { run(&ready); });
    // The queue is made on the worker's own thread; nothing may post before it exists.
    started.get();
}

Worker::~Worker() {
    stop();
}

void Worker::run(std::promise<void>* ready) {
    uv_loop_init(&loop_);
    queue_ = std::make_unique<LoopQueue>(&loop_);
    ready->set_value();
    // Runs until stop() closes the queue's handle and every replica has closed its own.
    uv_run(&loop_, UV_RUN_DEFAULT);
    int err = uv_loop_close(&loop_);
    if (err != 0)
        log::error("worker loop closed with handles open",
                   {{"worker", index_}, {"error", uv_err_name(err)}});
}

void Worker::stop() {
    if (stopped_) return;
    stopped_ = true;
    LoopQueue* q = queue_.get();
    q->post([q] { q->close(); });
    thread_.join();
    queue_.reset();
}

}  // namespace tcpfault

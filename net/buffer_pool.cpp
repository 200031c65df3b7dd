#include "net/buffer_pool.hpp"

namespace tcpfault {

Chunk BufferPool::take() {
    if (free_.empty()) return std::make_unique_for_overwrite<char[]>(kChunkSize);
    Chunk c = std::move(free_.back());
    free_.pop_back();
    return c;
}

void BufferPool::give(Chunk c) {
    if (c && free_.size() < kMaxFree) free_.push_back(std::move(c));
}

BufferPool& loop_buffer_pool() {
    thread_local BufferPool pool;
    return pool;
}

}  // namespace tcpfault

// Read buffers for the data path. Reads borrow a chunk; a chunk whose bytes were written
// at once goes straight back, so pass-through does no heap allocation per read.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace tcpfault {

using Chunk = std::unique_ptr<char[]>;

class BufferPool {
  public:
    static constexpr size_t kChunkSize = 64 * 1024;
    // Enough to recycle the chunks in flight for many busy connections without
    // holding memory once they go idle.
    static constexpr size_t kMaxFree = 64;

    Chunk take();
    void give(Chunk c);

  private:
    std::vector<Chunk> free_;
};

// One pool per event loop (the data path is single-threaded per loop).
BufferPool& loop_buffer_pool();

}  // namespace tcpfault

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
    // One read takes what loopback TCP has queued, up to this: 256 KiB reads (and writes)
    // moved 1 bulk stream at ~19 Gbit/s where 64 KiB gave ~15 (bench/, 2-core VM). A read
    // borrows a chunk only for as long as its bytes are unwritten; idle connections hold none.
    static constexpr size_t kChunkSize = 256 * 1024;
    // Enough to recycle the chunks in flight for busy connections without holding more
    // than 4 MiB per loop once they go idle.
    static constexpr size_t kMaxFree = 16;

    Chunk take();
    void give(Chunk c);

    // Whether `n` of a chunk's bytes, waiting for a slow peer, keep the chunk itself (taken
    // over from `owner`) rather than a copy: only when they fill a quarter of it, so a few bytes
    // never pin a whole chunk and memory stays close to the bytes actually held.
    static bool worth_taking(const Chunk* owner, size_t n) {
        return owner != nullptr && *owner && n >= kChunkSize / 4;
    }

  private:
    std::vector<Chunk> free_;
};

// One pool per event loop (the data path is single-threaded per loop).
BufferPool& loop_buffer_pool();

}  // namespace tcpfault

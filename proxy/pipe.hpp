// One direction of a session: bytes read from `source` are written to `sink`, in order.
// Pass-through is this pipe with no fault stages. It owns the direction's flow control
// (pause the source above the sink's high watermark, resume below the low one) and its
// half-close: the source's FIN is passed on only once everything before it was written.
#pragma once

#include <cstddef>
#include <cstdint>

#include "config/config.hpp"
#include "proxy/buffer_pool.hpp"

namespace tcpfault {

class Endpoint;
class Session;

class Pipe {
  public:
    // Envoy's ratio: resume at half the pause mark, so a draining queue does not flap.
    static constexpr size_t kHighWatermark = 256 * 1024;
    static constexpr size_t kLowWatermark = kHighWatermark / 2;

    Pipe(Session& session, Endpoint& source, Endpoint& sink, config::Direction dir)
        : session_(session), source_(source), sink_(sink), dir_(dir) {}

    config::Direction direction() const { return dir_; }
    uint64_t bytes() const { return bytes_; }
    bool source_eof() const { return source_eof_; }
    bool done() const { return fin_done_; }  // FIN passed on and acknowledged by the kernel

    void start();  // begin reading the source
    // Read and drop everything from the source (a sink that must not get bytes any more).
    void set_discard(bool on) { discard_ = on; }

    // Endpoint callbacks.
    void on_read(Chunk& chunk, ssize_t nread);
    void on_write_done(int status);
    void on_fin_sent(int status);

  private:
    void forward(Chunk& chunk, size_t len);
    void apply_backpressure();
    void maybe_pass_fin();

    Session& session_;
    Endpoint& source_;
    Endpoint& sink_;
    config::Direction dir_;
    uint64_t bytes_ = 0;
    bool paused_ = false;  // reading stopped because the sink is full
    bool source_eof_ = false;
    bool fin_done_ = false;
    bool discard_ = false;
};

}  // namespace tcpfault

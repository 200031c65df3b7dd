// One direction of a session: bytes read from `source` are written to `sink`, in order.
// Pass-through is this pipe with no fault stages: a read goes straight to a write. Faults that
// shape the stream (latency, bandwidth, slice, stall) make the pipe queue bytes and release
// them from its timer; those held bytes count toward the same high/low watermarks that pause
// and resume reading the source, so memory stays bounded under every fault.
// The pipe also owns the direction's half-close: the source's FIN is passed on only once every
// byte before it was written.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "config/config.hpp"
#include "ftp/ftp_rewrite.hpp"
#include "net/buffer_pool.hpp"

namespace tcpfault {

class Endpoint;
class Session;

class Pipe {
  public:
    // Envoy's ratio: resume at half the pause mark, so a draining queue does not flap.
    static constexpr size_t kHighWatermark = 256 * 1024;
    static constexpr size_t kLowWatermark = kHighWatermark / 2;

    // What happens to bytes read from the source.
    enum class Mode {
        forward,        // normal
        drop,           // read and discard (stall drop, idle drop, close then discard)
        reset_on_data,  // the first byte is answered with RST (close then reset)
        // Any segment, data or FIN, is answered with RST: a firewall that forgot the flow
        // (idle reset).
        reset_on_segment,
    };

    Pipe(Session& session, Endpoint& source, Endpoint& sink, config::Direction dir)
        : session_(session), source_(source), sink_(sink), dir_(dir) {}

    config::Direction direction() const { return dir_; }
    uint64_t bytes() const { return bytes_; }          // read from the source
    uint64_t forwarded() const { return forwarded_; }  // let through toward the sink
    bool source_eof() const { return source_eof_; }
    bool done() const { return fin_done_; }  // FIN passed on and handed to the kernel
    size_t held_bytes() const { return queued_held_ + trigger_hold_.size(); }

    void start();  // begin reading the source
    // A protocol filter (FTP control channel) that may rewrite the stream before faults see it.
    void set_filter(faults::FtpLineFilter* f) { filter_ = f; }
    void set_mode(Mode m);
    Mode mode() const { return mode_; }

    // Shaping stages; each stays for the rest of the connection.
    void add_latency(config::Duration delay, config::Duration jitter);
    void set_bandwidth(uint64_t bytes_per_sec);
    void set_slice(uint64_t min_size, uint64_t max_size, config::Duration delay);
    // slow_close: the source's FIN is passed on this long after it arrived.
    void set_fin_delay(config::Duration d) {
        fin_delay_ms_ = static_cast<uint64_t>(d.count() / 1000);
    }
    // Stall: hold stops reading (backpressure, nothing lost); drop reads and discards what
    // arrives, a FIN or RST included (a blackhole). Stalls are counted: several rules may stall
    // one direction, and it moves again only once each of them has ended (unstall with the
    // same mode). While any drop stall is on, arriving bytes are discarded. Bytes read before
    // the stall, and a FIN or RST it swallowed, are passed on when the last stall ends.
    // `pass_close`: a drop stall that lets the source's FIN or RST through (Toxiproxy's
    // timeout toxic); it applies while every stall on this direction is such a one.
    void stall(config::StallFault::Mode mode, bool pass_close = false);
    void unstall(config::StallFault::Mode mode, bool pass_close = false);
    bool stalled() const { return stall_holds_ + stall_drops_ > 0; }
    // Only drop stalls that let the close through hold this direction.
    bool close_passes() const {
        return stall_holds_ == 0 && stall_drops_ > 0 && stall_passing_ == stall_drops_;
    }
    // A reset or close fault ends the stream. Bytes behind a trigger's hold point were never
    // let through and are dropped; bytes a shaping fault already let through (latency,
    // bandwidth, slice) are still delivered when `keep_shaped`, unless a stall holds them.
    void discard_pending(bool keep_shaped);
    // FIN to the sink once every byte let through has been written (close fault).
    void finish_with_fin();
    // A trigger that held this direction (bytes reached, time not yet) is released.
    void release_trigger_hold();
    void close_timer();

    // Endpoint callbacks.
    void on_read(Chunk& chunk, ssize_t nread);
    void on_write_done(int status);
    void on_fin_sent(int status);

  private:
    struct Held {
        std::string bytes;
        size_t off = 0;
        uint64_t release_us = 0;  // uv_hrtime() µs
    };

    void process(const char* p, size_t n, Chunk* owner);
    void emit(const char* p, size_t n, Chunk* owner);
    void pump();
    bool shaping() const;
    void arm_timer(uint64_t delay_ms);
    void apply_backpressure();
    void apply_stall_reading();
    void maybe_pass_fin();
    void try_fin();
    static void on_timer(uv_timer_t* t);
    static void on_timer_closed(uv_handle_t* h);

    Session& session_;
    Endpoint& source_;
    Endpoint& sink_;
    config::Direction dir_;
    uint64_t bytes_ = 0;
    uint64_t forwarded_ = 0;
    bool paused_ = false;  // reading stopped because the sink is full
    bool source_eof_ = false;
    bool fin_done_ = false;
    Mode mode_ = Mode::forward;
    faults::FtpLineFilter* filter_ = nullptr;

    // Shaping state.
    // Allocated on first use: an empty std::deque already costs ~600 bytes of heap, and most
    // connections never shape a byte.
    std::unique_ptr<std::deque<Held>> queue_;
    bool queue_empty() const { return !queue_ || queue_->empty(); }
    size_t queued_held_ = 0;
    std::string trigger_hold_;  // bytes behind a hold point, not yet scanned by triggers
    bool holding_for_trigger_ = false;
    config::Duration latency_{0};
    config::Duration jitter_{0};
    uint64_t last_release_us_ = 0;
    uint64_t rate_ = 0;
    double tokens_ = 0;
    uint64_t refill_ms_ = 0;
    uint64_t slice_min_ = 0;
    uint64_t slice_max_ = 0;
    uint64_t slice_delay_ms_ = 0;
    bool slice_wait_ = false;  // a slice delay is running
    int stall_holds_ = 0;      // stalls (hold) in force on this direction
    int stall_drops_ = 0;      // stalls (drop) in force on this direction
    int stall_passing_ = 0;    // of those, the ones that let a FIN or RST through
    int source_error_ = 0;     // a RST (libuv error) from the source that a drop stall swallowed
    bool fin_wanted_ = false;
    uint64_t fin_delay_ms_ = 0;
    uint64_t fin_due_ms_ = 0;  // when a delayed FIN may pass; 0 = not yet scheduled
    uv_timer_t timer_{};
    bool timer_open_ = false;
};

}  // namespace tcpfault

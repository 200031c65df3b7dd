// One direction of a session: bytes read from `source` are written to `sink`, in order.
//
// The byte path: source -> (FTP filter) -> triggers (byte-exact fault points) -> stages ->
// sink. Pass-through is this pipe with no stage shaping bytes: a read goes straight to a
// write. Stages (faults/contracts.hpp: latency, bandwidth, slice, stall, ...) make the pipe
// queue bytes and release them as every stage's gate allows; held bytes count toward the same
// high/low watermarks that pause and resume reading the source, so memory stays bounded under
// every fault.
//
// The pipe owns the direction's half-close: the source's FIN is passed on only once every byte
// before it was written and no stage holds it. Once the session ends the connection the pipe
// is terminated: nothing more is forwarded, bytes already let through still leave on their
// stages' schedule (bounded: 3 s without progress drops them), and the session is told when
// the pipe has drained so the sink's ending can go ahead.
//
// Timers: one deadline (the session's Deadlines) for the head of the queue, the delayed FIN
// and the stages' own wake-ups; never 0 ms, and no re-arming without progress.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "config/types.hpp"
#include "faults/contracts.hpp"
#include "ftp/ftp_rewrite.hpp"
#include "net/buffer_pool.hpp"
#include "net/deadlines.hpp"
#include "net/endpoint.hpp"

namespace tcpfault {

class Pipe final : private Deadlines::Client {
  public:
    // Envoy's ratio: resume at half the pause mark, so a draining queue does not flap.
    static constexpr size_t kHighWatermark = 256 * 1024;
    static constexpr size_t kLowWatermark = kHighWatermark / 2;
    // Writes per turn of the loop (a piece sent as its own segment gets a turn to itself);
    // more wait for the next turn, after the loop has polled for I/O.
    static constexpr size_t kMaxWritesPerTurn = 256;

    struct ScanResult {
        size_t pass;  // bytes to forward first
        bool fired;   // then fire the pending faults
        bool hold;    // then hold the rest until a time condition passes
    };

    // What the pipe reports to (and asks of) its session.
    class Events {
      public:
        virtual void on_bytes(config::Direction dir, size_t n) = 0;  // read from the source
        virtual bool watches(config::Direction dir) const = 0;       // triggers read it
        virtual ScanResult scan(config::Direction dir, const char* p, size_t n) = 0;
        virtual void fire_pending() = 0;
        virtual void on_source_reset(config::Direction dir, int err) = 0;  // pass the RST on
        virtual void on_sink_error(config::Direction dir, int err) = 0;
        virtual void on_direction_done(config::Direction dir) = 0;  // FIN passed and handed over
        virtual void on_drained(config::Direction dir) = 0;         // terminated and nothing held
        virtual faults::StageContext stage_context() = 0;
        virtual void trace(const char* event) = 0;

      protected:
        ~Events() = default;
    };

    Pipe(Events& events, Endpoint& source, Endpoint& sink, config::Direction dir,
         Deadlines& deadlines)
        : events_(events), source_(source), sink_(sink), dir_(dir), deadlines_(deadlines) {}
    ~Pipe();
    Pipe(const Pipe&) = delete;
    Pipe& operator=(const Pipe&) = delete;

    config::Direction direction() const { return dir_; }
    uint64_t bytes() const { return bytes_; }          // read from the source
    uint64_t forwarded() const { return forwarded_; }  // let through toward the sink
    bool source_eof() const { return source_eof_; }
    bool done() const { return fin_done_; }  // FIN passed on and handed to the kernel
    size_t held_bytes() const { return queued_held_ + trigger_hold_.size(); }
    // What holding them costs, for flow control: each held read is also an entry (a stream
    // read 1 byte at a time and delayed is mostly entries).
    size_t held_cost() const {
        return held_bytes() + (queue_ ? queue_->size() * sizeof(faults::Held) : 0);
    }
    bool terminated() const { return terminated_; }
    bool drained() const { return terminated_ && queue_empty(); }
    // A stage holds this direction with no end of its own (endless stall, zero rate).
    bool held_endlessly() const;

    void start();  // begin reading the source
    // Reading the source held (true) or allowed again (false): while the sink's peer is known
    // gone but the other direction still passes on what it sent (see Session::on_connected).
    void hold_reading(bool held);
    bool reading_held() const { return reading_held_; }
    // A protocol filter (FTP control channel) that may rewrite the stream before faults see it.
    void set_filter(faults::FtpLineFilter* f) { filter_ = f; }

    void add_stage(std::unique_ptr<faults::Stage> s);
    // Lifts the stages of a rule that was disabled or deleted.
    void lift(const std::string& rule);
    // A trigger that held this direction (bytes reached, time not yet) is released.
    void release_trigger_hold();
    // Nothing more is forwarded: bytes behind a trigger's hold point are dropped; bytes stages
    // already let through still leave (unless a stall holds them, or `keep_shaped` is false).
    void terminate(bool keep_shaped);

    // From the source endpoint.
    void on_data(Chunk& chunk, size_t n, bool fin_follows);
    void on_eof();
    void on_read_error(int err);
    // From the sink endpoint.
    void on_write_done();
    void on_fin_sent();

  private:
    bool queue_empty() const { return !queue_ || queue_->empty(); }
    bool shaping() const { return shaping_stages_ > 0 || !queue_empty(); }
    void process(const char* p, size_t n, Chunk* owner);
    void emit(const char* p, size_t n, Chunk* owner, Endpoint::Push push);
    // How a segment ending at `end` is written: with the FIN, when it ends the read the FIN
    // follows (fin_end_).
    Endpoint::Push push_for(const char* end) const {
        return end == fin_end_ ? Endpoint::Push::with_fin : Endpoint::Push::now;
    }
    void pump();
    void update_reading();
    void apply_backpressure();
    void maybe_pass_fin();
    void check_drained();
    void hold_drain_deadline_until(uint64_t due_us);
    void stages_changed();
    void rearm();
    void on_deadline(uint64_t now_us) override;

    Events& events_;
    Endpoint& source_;
    Endpoint& sink_;
    config::Direction dir_;
    Deadlines& deadlines_;
    uint64_t bytes_ = 0;
    uint64_t forwarded_ = 0;
    bool paused_ = false;        // reading stopped because the sink is full
    bool reading_held_ = false;  // see hold_reading()
    bool source_eof_ = false;
    int source_error_ = 0;  // a RST from the source, held while a stage keeps the end
    bool fin_done_ = false;
    bool terminated_ = false;
    bool holding_for_trigger_ = false;
    faults::FtpLineFilter* filter_ = nullptr;
    // While on_data processes a read the source's FIN follows: the read's end, else null.
    const char* fin_end_ = nullptr;

    std::vector<std::unique_ptr<faults::Stage>> stages_;
    int shaping_stages_ = 0;
    // Allocated while something is held: an empty std::deque already costs ~600 bytes of heap,
    // most connections never shape a byte, and an idle shaped one holds nothing.
    std::unique_ptr<std::deque<faults::Held>> queue_;
    size_t queued_held_ = 0;
    std::string trigger_hold_;  // bytes behind a hold point, not yet scanned by triggers
    uint64_t fin_arrival_us_ = 0;
    // Wanted wake-ups (µs; 0 = none); the earliest, with the stages', is the deadline.
    uint64_t pump_wake_us_ = 0;
    uint64_t fin_wake_us_ = 0;
    uint64_t drain_deadline_us_ = 0;  // terminated: held bytes must move by then
    bool next_turn_ = false;          // more could be written now: on the loop's next turn
};

}  // namespace tcpfault

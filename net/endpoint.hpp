// One socket of a session, the client's or the server's, and its explicit state:
//
//   unopened -> open -> ending -> closing -> closed
//
// open: bytes flow both ways; each half may close on its own (the peer's FIN: peer_fin();
// ours: shutdown_write(), the pass-through half-close). ending: one of the close kinds
// (net/ending.hpp) is being carried out; from here on the endpoint reads for itself (and drops
// what it reads) or not at all, and nothing it reads is reported up. closing: uv_close was
// called; closed: its close callback ran and the socket may be freed.
//
// end(kind) is the one way to leave `open`, and it is idempotent: a weaker or equal kind asked
// later is refused (false), a stronger one takes over (a graceful FIN may become a reset, never
// the reverse). Every wait inside an ending is bounded: the peer must acknowledge some progress
// every 3 s, and a graceful FIN waits at most 2 s of silence (30 s in all) for the peer's FIN.
//
// Reports go up through Events only; the endpoint never knows who owns it.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>

#include "net/buffer_pool.hpp"
#include "net/deadlines.hpp"
#include "net/ending.hpp"

namespace tcpfault {

class Endpoint final : private Deadlines::Client {
  public:
    enum class Side { client, server };
    enum class State { unopened, open, ending, closing, closed };

    class Events {
      public:
        virtual void on_opened(Endpoint&) = 0;  // a handle now exists (counted by the owner)
        // May steal the chunk. `fin_follows`: the peer's FIN is right behind these bytes, and
        // on_eof() comes next, in the same turn of the loop (unless this call ended the socket).
        virtual void on_data(Endpoint&, Chunk& chunk, size_t n, bool fin_follows) = 0;
        virtual void on_eof(Endpoint&) = 0;                  // the peer's FIN
        virtual void on_read_error(Endpoint&, int err) = 0;  // e.g. the peer's RST
        virtual void on_write_done(Endpoint&) = 0;           // a queued write completed: room again
        virtual void on_write_error(Endpoint&, int err) = 0;
        virtual void on_fin_sent(Endpoint&) = 0;  // shutdown_write()'s FIN is handed over
        virtual void on_discarded(Endpoint&, size_t n) = 0;  // read and dropped while ending
        virtual void on_closed(Endpoint&) = 0;               // the close callback ran

      protected:
        ~Events() = default;
    };

    Endpoint(Side side, Events& events, Deadlines& deadlines)
        : side_(side), events_(events), deadlines_(deadlines) {}
    Endpoint(const Endpoint&) = delete;
    Endpoint& operator=(const Endpoint&) = delete;

    // With a family, the socket exists at once, so options can be set before connect().
    int init(uv_loop_t* loop, unsigned family = AF_UNSPEC);
    // After the close callback ran: ready for init() again (the next upstream address).
    void recycle();

    uv_tcp_t* tcp() { return &tcp_; }
    uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }
    int fd() const;
    Side side() const { return side_; }
    State state() const { return state_; }
    Ending ending() const { return kind_; }
    // The handle exists and is not closing: its socket can be used.
    bool usable() const { return state_ == State::open || state_ == State::ending; }
    bool open() const { return state_ == State::open; }
    bool peer_fin() const { return peer_fin_; }
    bool fin_requested() const { return fin_requested_; }
    bool fin_sent() const { return fin_sent_; }

    // Reading while open (flow control belongs to the pipe reading this socket); ignored in
    // an ending, which reads for itself.
    void start_reading();
    void stop_reading();
    bool reading() const { return reading_; }
    // While reading: one read right away instead of on the loop's next turn, for a socket that
    // has most likely something already (a client that sent its request while the upstream
    // connection was being made). Reports as any read does; nothing there costs one read(2).
    void read_now();
    // The peer reset the connection before anything was read from it, and the error was taken
    // (libuv's connect check reads it): the EOF this socket reads after the bytes still in it
    // is reported as `err`, as a read error.
    void reset_taken(int err) { reset_taken_ = err; }
    // Caps the size of each read (clamp's read_size); 0 restores the default.
    void set_max_read(size_t n) { max_read_ = n; }

    // How written bytes leave. now: as soon as the kernel can send them. alone: as a segment of
    // their own, never merged with what follows (MSG_EOR). with_fin: the caller passes the FIN
    // on next, in the same turn of the loop, and the bytes wait in the kernel (MSG_MORE) to
    // leave in one segment with it, as a server's last reply and its FIN often do; uncork()
    // sends them if the FIN does not follow after all.
    enum class Push : uint8_t { now, alone, with_fin };

    // Writes [p, p+len). Tries a direct write first; what the kernel does not take is queued,
    // stealing `owner` (the chunk p points into) when the rest is large, else copying.
    // Returns 0 or a libuv error if the socket failed synchronously. Allowed until the FIN is
    // requested.
    int write(const char* p, size_t len, Chunk* owner, Push push = Push::now);
    size_t queued_bytes() const { return queued_; }
    // What the queue costs in memory: its bytes, and per queued write its request and the
    // copy's allocation. Flow control counts this, so a stream of tiny writes (`slice` of 1
    // byte, reads clamped to 1 byte) to a peer that does not read is bounded as bytes are
    // (without it, 256 KiB of 1-byte writes were some 80 MB of requests).
    size_t queued_cost() const { return queued_ + queued_writes_ * kQueuedWriteCost; }
    static constexpr size_t kQueuedWriteCost = 256;
    // Sends what a with_fin write left waiting, when no FIN took it along. Idempotent.
    void uncork();

    // The pass-through half-close: FIN after everything queued; reading goes on. Idempotent.
    // With nothing queued the FIN is sent at once and on_fin_sent() is called before this
    // returns; otherwise once the queue has drained.
    int shutdown_write();

    // Ends the socket the way `kind` says (Ending::none means fin). False when refused: the
    // endpoint is already closing, or already ending at least as strongly.
    bool end(Ending kind);

  private:
    struct WriteReq;
    static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
    static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
    static void on_write(uv_write_t* req, int status);
    static void on_shutdown(uv_shutdown_t* req, int status);
    // The FIN: shutdown(2) right away when nothing is queued (fin_sent() is then true), else a
    // libuv request after the queued writes. 0 or a libuv error.
    int send_fin();
    static void on_close(uv_handle_t* h);

    // What is next to read after one of the socket's first reads came back short (a peek):
    // UV_EOF for the peer's FIN, a libuv error for its RST (the peek took the socket's error,
    // so only this call can report it), 0 for nothing, more bytes, or not looked.
    ssize_t end_behind(size_t nread, size_t asked);
    // What an EOF that libuv made up stands for. libuv reports a hang-up seen right after a
    // short read as EOF without reading again, and a RST behind the bytes hangs up too.
    ssize_t eof_or_reset() const;
    // What an EOF read from the socket stands for (`made_up`: libuv's, see eof_or_reset()).
    ssize_t eof_kind(bool made_up) const;
    void read_while_ending(ssize_t nread);
    void fin_handed_over();
    // One step of an ending: finishes it when it can, else polls (bounded).
    void advance();
    void poll_later(uint64_t now);
    void on_deadline(uint64_t now_us) override;
    void close_handle(bool with_reset);
    bool peer_gone() const;    // the kernel has torn the connection down (the peer's RST)
    uint64_t unacked() const;  // sent, not yet acknowledged (SIOCOUTQ)
    uint64_t unsent() const;   // written, not yet sent; includes a queued FIN (SIOCOUTQNSD)

    Side side_;
    Events& events_;
    Deadlines& deadlines_;
    uv_tcp_t tcp_{};
    State state_ = State::unopened;
    Ending kind_ = Ending::none;
    size_t queued_ = 0;
    size_t queued_writes_ = 0;  // requests in libuv's queue
    size_t max_read_ = 0;
    bool reading_ = false;
    bool peer_fin_ = false;
    bool fin_requested_ = false;
    bool fin_sent_ = false;
    bool corked_ = false;       // a with_fin write waits in the kernel for the FIN
    uint8_t reads_peeked_ = 0;  // see end_behind()
    int reset_taken_ = 0;       // see reset_taken()
    // Bounds inside an ending (µs of uv_hrtime).
    uint64_t progress_deadline_us_ = 0;  // no progress by then: reset
    uint64_t linger_deadline_us_ = 0;    // fin: the peer's FIN by then, else close
    uint64_t linger_cap_us_ = 0;         // fin: and in any case by then
    uint64_t last_pending_ = 0;          // bytes still ours at the last look
    uint32_t poll_ms_ = 0;
};

}  // namespace tcpfault

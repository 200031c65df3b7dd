// One socket of a session: the client's or the server's. Owns its uv_tcp_t (embedded, freed
// with the session once its close callback ran) and the primitives faults are built from:
// write, shutdownWrite (FIN), close, reset (RST), pause/resume reading.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>

#include "net/buffer_pool.hpp"

namespace tcpfault {

class Session;
class Pipe;

class Endpoint {
  public:
    enum class Side { client, server };

    Endpoint(Session& session, Side side) : session_(session), side_(side) {}
    Endpoint(const Endpoint&) = delete;
    Endpoint& operator=(const Endpoint&) = delete;

    // With a family, the socket exists at once, so options can be set before connect().
    int init(uv_loop_t* loop, unsigned family = AF_UNSPEC);
    uv_tcp_t* tcp() { return &tcp_; }
    uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }
    Side side() const { return side_; }
    Session& session() { return session_; }

    // The pipe that reads from this socket and the pipe that writes to it.
    void attach(Pipe* source_of, Pipe* sink_of) {
        source_of_ = source_of;
        sink_of_ = sink_of;
    }

    bool usable() const { return initialized_ && !closing_; }
    bool closing() const { return closing_; }

    void start_reading();
    void stop_reading();
    bool reading() const { return reading_; }

    // Writes [p, p+len). Tries a direct write first; what the kernel does not take is queued,
    // stealing `owner` (the chunk p points into) when the rest is large, else copying.
    // Returns 0 or a libuv error if the socket failed synchronously.
    int write(const char* p, size_t len, Chunk* owner);
    // Caps the size of each read (clamp's read_size); 0 restores the default.
    void set_max_read(size_t n) { max_read_ = n; }
    size_t queued_bytes() const { return queued_; }

    // FIN after everything queued. Idempotent.
    int shutdown_write();
    bool fin_requested() const { return fin_requested_; }

    // After the close callback ran, makes the endpoint initialisable again (a new connect
    // attempt to the upstream's next address).
    void recycle();

    void close();  // plain close: FIN if nothing unread, else the kernel sends RST
    void reset();  // RST now, unsent data discarded

  private:
    struct WriteReq;
    static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
    static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
    static void on_write(uv_write_t* req, int status);
    static void on_shutdown(uv_shutdown_t* req, int status);
    static void on_close(uv_handle_t* h);

    Session& session_;
    Side side_;
    uv_tcp_t tcp_{};
    uv_shutdown_t shutdown_req_{};
    Pipe* source_of_ = nullptr;
    Pipe* sink_of_ = nullptr;
    size_t queued_ = 0;
    size_t max_read_ = 0;
    bool initialized_ = false;
    bool closing_ = false;
    bool reading_ = false;
    bool fin_requested_ = false;
};

}  // namespace tcpfault

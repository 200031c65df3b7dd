#include "net/endpoint.hpp"

#include <cstring>
#include <memory>

#include "net/uv_util.hpp"
#include "proxy/pipe.hpp"
#include "proxy/session.hpp"

namespace tcpfault {

// A queued write owns its bytes until libuv calls back (also with UV_ECANCELED on close).
struct Endpoint::WriteReq {
    uv_write_t req{};
    Chunk data;
    size_t len = 0;
    bool pooled = false;  // data is a pool chunk, returned to the pool when done
    Endpoint* endpoint = nullptr;
};

int Endpoint::init(uv_loop_t* loop, unsigned family) {
    int err = uv_tcp_init_ex(loop, &tcp_, family);
    if (err != 0) return err;
    tcp_.data = this;
    initialized_ = true;
    session_.handle_opened();
    return 0;
}

void Endpoint::start_reading() {
    if (!usable() || reading_) return;
    if (uv_read_start(stream(), on_alloc, on_read) == 0) reading_ = true;
}

void Endpoint::stop_reading() {
    if (!usable() || !reading_) return;
    uv_read_stop(stream());
    reading_ = false;
}

void Endpoint::on_alloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* self = static_cast<Endpoint*>(h->data);
    Chunk c = loop_buffer_pool().take();
    size_t n = BufferPool::kChunkSize;
    if (self->max_read_ > 0 && self->max_read_ < n) n = self->max_read_;
    *buf = uv_buf_init(c.release(), static_cast<unsigned>(n));
}

void Endpoint::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    // Own the buffer before any branch so every path returns it to the pool.
    Chunk chunk(buf->base);
    auto* self = static_cast<Endpoint*>(s->data);
    if (nread < 0) self->reading_ = false;  // libuv stops reading on EOF and errors
    if (nread != 0 && self->source_of_ != nullptr) self->source_of_->on_read(chunk, nread);
    if (chunk) loop_buffer_pool().give(std::move(chunk));
}

int Endpoint::write(const char* p, size_t len, Chunk* owner) {
    if (!usable()) return UV_EPIPE;
    if (queued_ == 0) {
        uv_buf_t b = uv_buf_init(const_cast<char*>(p), static_cast<unsigned>(len));
        int n = uv_try_write(stream(), &b, 1);
        if (n == static_cast<int>(len)) return 0;
        if (n < 0 && n != UV_EAGAIN) return n;
        if (n > 0) {
            p += n;
            len -= n;
        }
    }
    auto req = std::make_unique<WriteReq>();
    req->endpoint = this;
    req->len = len;
    // A small remainder is copied so a mostly-empty 64 KiB chunk is not pinned while the
    // peer is slow; memory accounting then stays close to the bytes actually held.
    const char* base;
    if (owner != nullptr && *owner && len >= BufferPool::kChunkSize / 4) {
        req->data = std::move(*owner);
        req->pooled = true;
        base = p;
    } else {
        req->data = std::make_unique_for_overwrite<char[]>(len);
        std::memcpy(req->data.get(), p, len);
        base = req->data.get();
    }
    uv_buf_t b = uv_buf_init(const_cast<char*>(base), static_cast<unsigned>(len));
    req->req.data = req.get();
    int err = uv_write(&req->req, stream(), &b, 1, on_write);
    if (err != 0) return err;  // the request (and the bytes) die here; the session is failing
    queued_ += len;
    req.release();  // reclaimed in on_write
    return 0;
}

void Endpoint::on_write(uv_write_t* r, int status) {
    std::unique_ptr<WriteReq> req(static_cast<WriteReq*>(r->data));
    Endpoint* self = req->endpoint;
    self->queued_ -= req->len;
    if (req->pooled) loop_buffer_pool().give(std::move(req->data));
    if (status == UV_ECANCELED) return;  // the handle is closing; nothing to report
    if (self->sink_of_ != nullptr) self->sink_of_->on_write_done(status);
}

int Endpoint::shutdown_write() {
    if (!usable()) return UV_EPIPE;
    if (fin_requested_) return 0;
    fin_requested_ = true;
    shutdown_req_.data = this;
    return uv_shutdown(&shutdown_req_, stream(), on_shutdown);
}

void Endpoint::on_shutdown(uv_shutdown_t* req, int status) {
    auto* self = static_cast<Endpoint*>(req->data);
    if (status == UV_ECANCELED) return;
    if (self->sink_of_ != nullptr) self->sink_of_->on_fin_sent(status);
}

void Endpoint::close() {
    if (!initialized_ || closing_) return;
    closing_ = true;
    reading_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), on_close);
}

void Endpoint::reset() {
    if (!initialized_ || closing_) return;
    set_linger_zero(&tcp_);
    close();
}

void Endpoint::recycle() {
    initialized_ = closing_ = reading_ = fin_requested_ = false;
    queued_ = 0;
}

void Endpoint::on_close(uv_handle_t* h) {
    auto* self = static_cast<Endpoint*>(h->data);
    self->session_.endpoint_closed(*self);
}

}  // namespace tcpfault

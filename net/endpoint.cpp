#include "net/endpoint.hpp"

#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "net/uv_util.hpp"

namespace tcpfault {

namespace {
// An ending gives the peer this long to take some of what we still hold for it (bytes, FIN)
// before it gives up and resets; each bit of progress renews it.
constexpr uint64_t kProgressBoundUs = 3'000'000;
// A graceful FIN waits this long after the peer's last byte for the peer's own FIN, and never
// longer than kLingerMaxUs in all (a peer that streams forever cannot keep the socket).
constexpr uint64_t kLingerUs = 2'000'000;
constexpr uint64_t kLingerMaxUs = 30'000'000;
// Polls of the kernel's queues back off from 1 ms to this.
constexpr uint32_t kMaxPollMs = 50;
// Only a socket's first reads look for a FIN right behind them (end_behind): that is where a
// short exchange ends, and a long stream would pay a system call per read for its one FIN.
constexpr uint8_t kFinPeekReads = 4;

bool is_fin_kind(Ending k) {
    return k == Ending::fin || k == Ending::fin_then_discard || k == Ending::fin_then_reset;
}
}  // namespace

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
    state_ = State::open;
    events_.on_opened(*this);
    return 0;
}

void Endpoint::recycle() {
    state_ = State::unopened;
    kind_ = Ending::none;
    reading_ = peer_fin_ = fin_requested_ = fin_sent_ = false;
    queued_ = 0;
    queued_writes_ = 0;
    reset_taken_ = 0;
}

int Endpoint::fd() const {
    return usable() ? tcp_fd(&tcp_) : -1;
}

void Endpoint::start_reading() {
    if (state_ != State::open || reading_ || peer_fin_) return;
    if (uv_read_start(stream(), on_alloc, on_read) == 0) reading_ = true;
}

void Endpoint::stop_reading() {
    if (state_ != State::open || !reading_) return;
    uv_read_stop(stream());
    reading_ = false;
}

void Endpoint::read_now() {
    if (state_ != State::open || !reading_) return;
    uv_buf_t buf;
    on_alloc(reinterpret_cast<uv_handle_t*>(&tcp_), 0, &buf);
    ssize_t n = ::read(fd(), buf.base, buf.len);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        loop_buffer_pool().give(Chunk(buf.base));
        return;
    }
    ssize_t nread = n > 0 ? n : n == 0 ? UV_EOF : uv_translate_sys_error(errno);
    // libuv stops reading on an EOF or error it reads itself; this one it did not read.
    if (nread < 0) uv_read_stop(stream());
    on_read(stream(), nread, &buf);
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
    // No buffer: libuv's own EOF after a short read and a hang-up, which a RST also causes.
    if (nread == UV_EOF) nread = self->eof_kind(buf->base == nullptr);
    if (nread < 0) self->reading_ = false;  // libuv stops reading on EOF and errors
    if (self->state_ == State::ending) {
        if (chunk) loop_buffer_pool().give(std::move(chunk));
        self->read_while_ending(nread);
        return;
    }
    if (self->state_ == State::open) {
        if (nread > 0) {
            // A FIN right behind the bytes is taken now rather than on the next turn of the
            // loop, so the pipe can pass both on together. The kernel answers read() with 0
            // from here on, and libuv would stop reading on it anyway. A RST right behind them
            // is reported after them here: the peek took the error the next read would return.
            ssize_t end = self->end_behind(static_cast<size_t>(nread), buf->len);
            bool fin = end == UV_EOF;
            if (end != 0) {
                uv_read_stop(s);
                self->reading_ = false;
                self->peer_fin_ = fin;
            }
            self->events_.on_data(*self, chunk, static_cast<size_t>(nread), fin);
            if (end != 0 && self->state_ == State::open) {
                if (fin)
                    self->events_.on_eof(*self);
                else
                    self->events_.on_read_error(*self, static_cast<int>(end));
            } else if (end != 0 && self->state_ == State::ending) {
                self->read_while_ending(end);  // ended meanwhile: as if read there
            }
        } else if (nread == UV_EOF) {
            self->peer_fin_ = true;
            self->events_.on_eof(*self);
        } else if (nread < 0) {
            self->events_.on_read_error(*self, static_cast<int>(nread));
        }
    }
    if (chunk) loop_buffer_pool().give(std::move(chunk));
}

ssize_t Endpoint::end_behind(size_t nread, size_t asked) {
    if (reads_peeked_ == kFinPeekReads) return 0;
    ++reads_peeked_;
    // A full read says nothing about what follows; a short one emptied the socket, and a peek
    // tells a FIN (0) or a RST (an error) from nothing yet (EAGAIN) or more bytes.
    if (nread >= asked) return 0;
    char c;
    ssize_t n = ::recv(fd(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return eof_kind(false);
    if (n > 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    return uv_translate_sys_error(errno);
}

ssize_t Endpoint::eof_kind(bool made_up) const {
    if (reset_taken_ != 0) return reset_taken_;
    if (made_up) return eof_or_reset();
    return UV_EOF;
}

ssize_t Endpoint::eof_or_reset() const {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0) return UV_EOF;
    // EPIPE: the RST came after the peer's FIN, which a reader meets first (EOF), as the
    // kernel's own reads and the peek report it.
    if (err == EPIPE) return UV_EOF;
    return uv_translate_sys_error(err);
}

int Endpoint::write(const char* p, size_t len, Chunk* owner, Push push) {
    if (!usable() || fin_requested_) return UV_EPIPE;
    if (len == 0) return 0;
    corked_ = false;  // any write sends what an earlier with_fin write left waiting
    if (queued_ == 0) {
        ssize_t n;
        if (push != Push::now) {
            // MSG_EOR: the kernel neither corks these bytes nor appends later writes to them.
            // MSG_MORE: it holds them for what comes next (the FIN).
            int flags = (push == Push::alone ? MSG_EOR : MSG_MORE) | MSG_DONTWAIT | MSG_NOSIGNAL;
            n = ::send(fd(), p, len, flags);
            if (n < 0) n = (errno == EAGAIN || errno == EWOULDBLOCK) ? UV_EAGAIN : -errno;
        } else {
            uv_buf_t b = uv_buf_init(const_cast<char*>(p), static_cast<unsigned>(len));
            n = uv_try_write(stream(), &b, 1);
        }
        if (n == static_cast<ssize_t>(len)) {
            corked_ = push == Push::with_fin;
            return 0;
        }
        if (n < 0 && n != UV_EAGAIN) return static_cast<int>(n);
        if (n > 0) {
            p += n;
            len -= static_cast<size_t>(n);
        }
    }
    static_assert(sizeof(WriteReq) <= kQueuedWriteCost);
    auto req = std::make_unique<WriteReq>();
    req->endpoint = this;
    req->len = len;
    const char* base;
    if (BufferPool::worth_taking(owner, len)) {
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
    if (err != 0) return err;  // the request (and the bytes) die here; the caller ends us
    queued_ += len;
    ++queued_writes_;
    req.release();  // reclaimed in on_write
    return 0;
}

void Endpoint::on_write(uv_write_t* r, int status) {
    std::unique_ptr<WriteReq> req(static_cast<WriteReq*>(r->data));
    Endpoint* self = req->endpoint;
    self->queued_ -= req->len;
    --self->queued_writes_;
    if (req->pooled) loop_buffer_pool().give(std::move(req->data));
    if (status == UV_ECANCELED) return;  // the handle is closing; nothing to report
    if (self->state_ == State::ending) {
        if (status != 0)
            self->close_handle(true);
        else
            self->advance();
        return;
    }
    if (self->state_ != State::open) return;
    if (status != 0)
        self->events_.on_write_error(*self, status);
    else
        self->events_.on_write_done(*self);
}

void Endpoint::uncork() {
    if (!corked_) return;
    corked_ = false;
    if (!usable() || fin_requested_) return;  // the FIN took the bytes along
    // Clearing TCP_CORK pushes whatever waits, whether or not it was set (MSG_MORE).
    int off = 0;
    setsockopt(fd(), IPPROTO_TCP, TCP_CORK, &off, sizeof off);
}

int Endpoint::shutdown_write() {
    if (state_ != State::open) return UV_EPIPE;
    if (fin_requested_) return 0;
    int err = send_fin();
    if (err == 0 && fin_sent_) events_.on_fin_sent(*this);
    return err;
}

int Endpoint::send_fin() {
    fin_requested_ = true;
    if (queued_ == 0) {
        // Nothing in libuv's queue: no request, no extra epoll_ctl, no wait for the next turn
        // of the loop (uv_shutdown defers the shutdown(2) until then).
        if (::shutdown(fd(), SHUT_WR) != 0) return uv_translate_sys_error(errno);
        fin_sent_ = true;
        return 0;
    }
    // Freed in on_shutdown, which libuv also calls (UV_ECANCELED) when the handle closes first.
    auto req = std::make_unique<uv_shutdown_t>();
    req->data = this;
    int err = uv_shutdown(req.get(), stream(), on_shutdown);
    if (err == 0) req.release();
    return err;
}

void Endpoint::on_shutdown(uv_shutdown_t* req, int status) {
    std::unique_ptr<uv_shutdown_t> owned(req);
    auto* self = static_cast<Endpoint*>(req->data);
    if (status == UV_ECANCELED) return;
    if (self->state_ == State::ending) {
        if (status != 0) {
            self->close_handle(true);
            return;
        }
        self->fin_sent_ = true;
        self->advance();
        return;
    }
    if (self->state_ != State::open) return;
    if (status != 0) {
        self->events_.on_write_error(*self, status);
        return;
    }
    self->fin_sent_ = true;
    self->events_.on_fin_sent(*self);
}

bool Endpoint::end(Ending kind) {
    if (kind == Ending::none) kind = Ending::fin;
    if (state_ == State::unopened || state_ == State::closing || state_ == State::closed)
        return false;
    if (state_ == State::ending && ending_strength(kind) <= ending_strength(kind_)) return false;
    uncork();  // bytes already forwarded leave before any ending, a FIN's or a RST's
    kind_ = kind;
    state_ = State::ending;
    // The common end of a connection: both FINs have passed and nothing is left to send.
    // advance() would close right away too; this spares it two system calls (SIOCOUTQ and
    // TCP_INFO), whose answers cannot change the outcome.
    if ((kind == Ending::fin || kind == Ending::fin_then_discard) && fin_sent_ && peer_fin_ &&
        queued_ == 0) {
        close_handle(false);
        return true;
    }
    switch (kind) {
        case Ending::reset_now:
            close_handle(true);
            return true;
        case Ending::close_now:
            close_handle(false);
            return true;
        case Ending::reset:
            // Nothing more is read: the RST discards it anyway.
            if (reading_) uv_read_stop(stream());
            reading_ = false;
            break;
        default:
            // FIN kinds read (and drop) what still arrives, so closing never meets unread
            // bytes the kernel would answer with a RST.
            if (!reading_ && !peer_fin_ && uv_read_start(stream(), on_alloc, on_read) == 0)
                reading_ = true;
            if (!fin_requested_ && send_fin() != 0) {
                close_handle(true);
                return true;
            }
            break;
    }
    uint64_t now = Deadlines::now_us();
    progress_deadline_us_ = now + kProgressBoundUs;
    last_pending_ = queued_ + unacked();
    poll_ms_ = 0;
    advance();
    return true;
}

void Endpoint::read_while_ending(ssize_t nread) {
    if (nread > 0) {
        events_.on_discarded(*this, static_cast<size_t>(nread));
        if (kind_ == Ending::fin) linger_deadline_us_ = Deadlines::now_us() + kLingerUs;
        return;
    }
    if (nread == UV_EOF) {
        peer_fin_ = true;
        advance();
        return;
    }
    if (nread < 0) close_handle(false);  // the peer is gone: nothing left to end
}

void Endpoint::advance() {
    if (state_ != State::ending) return;
    if (peer_gone()) {
        close_handle(false);  // reset by the peer meanwhile: nothing left to deliver
        return;
    }
    uint64_t now = Deadlines::now_us();
    uint64_t pending = queued_ + unacked();
    if (pending < last_pending_) progress_deadline_us_ = now + kProgressBoundUs;
    last_pending_ = pending;

    if (kind_ == Ending::reset) {
        if (queued_ == 0 && unacked() == 0) {
            close_handle(true);
            return;
        }
    } else if (is_fin_kind(kind_) && fin_sent_) {
        switch (kind_) {
            case Ending::fin_then_reset:
                // Closed once the FIN is on the wire: the kernel answers the peer's next
                // segment with RST, and the FIN can no longer be overtaken by it.
                if (unsent() == 0) {
                    close_handle(false);
                    return;
                }
                break;
            case Ending::fin_then_discard:
                if (peer_fin_) {
                    close_handle(false);
                    return;
                }
                deadlines_.clear(this);  // half-open for as long as the peer likes
                return;
            default:  // fin
                if (peer_fin_) {
                    close_handle(false);
                    return;
                }
                if (linger_deadline_us_ == 0) linger_deadline_us_ = now + kLingerUs;
                if (linger_cap_us_ == 0) linger_cap_us_ = now + kLingerMaxUs;
                if (now >= linger_deadline_us_ || now >= linger_cap_us_) {
                    close_handle(false);
                    return;
                }
                deadlines_.set(this, std::min(linger_deadline_us_, linger_cap_us_));
                return;
        }
    }
    if (now >= progress_deadline_us_) {
        close_handle(true);  // the peer took nothing for too long: give up
        return;
    }
    poll_later(now);
}

void Endpoint::poll_later(uint64_t now) {
    poll_ms_ = poll_ms_ == 0 ? 1 : std::min(poll_ms_ * 2, kMaxPollMs);
    deadlines_.set(this, std::min<uint64_t>(now + poll_ms_ * 1000ULL, progress_deadline_us_));
}

void Endpoint::on_deadline(uint64_t) {
    advance();
}

void Endpoint::close_handle(bool with_reset) {
    if (state_ == State::closing || state_ == State::closed || state_ == State::unopened) return;
    deadlines_.clear(this);
    state_ = State::closing;
    reading_ = false;
    if (with_reset) set_linger_zero(&tcp_);
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), on_close);
}

void Endpoint::on_close(uv_handle_t* h) {
    auto* self = static_cast<Endpoint*>(h->data);
    self->state_ = State::closed;
    self->events_.on_closed(*self);
}

bool Endpoint::peer_gone() const {
    int f = fd();
    tcp_info info{};
    socklen_t len = sizeof info;
    return f >= 0 && getsockopt(f, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 &&
           info.tcpi_state == TCP_CLOSE;
}

uint64_t Endpoint::unacked() const {
    int n = 0;
    int f = fd();
    if (f < 0 || ioctl(f, SIOCOUTQ, &n) != 0 || n < 0) return 0;
    return static_cast<uint64_t>(n);
}

uint64_t Endpoint::unsent() const {
    int n = 0;
    int f = fd();
    if (f < 0 || ioctl(f, SIOCOUTQNSD, &n) != 0 || n < 0) return 0;
    return static_cast<uint64_t>(n);
}

}  // namespace tcpfault

#include "api/http_server.hpp"

#include <netdb.h>
#include <sys/socket.h>

#include <cassert>
#include <cstring>
#include <exception>

#include "net/buffer_pool.hpp"
#include "net/uv_util.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {

constexpr int kBacklog = 511;

const char* reason_phrase(int status) {
    switch (status) {
        case 100:
            return "Continue";
        case 200:
            return "OK";
        case 201:
            return "Created";
        case 202:
            return "Accepted";
        case 204:
            return "No Content";
        case 301:
            return "Moved Permanently";
        case 302:
            return "Found";
        case 304:
            return "Not Modified";
        case 400:
            return "Bad Request";
        case 401:
            return "Unauthorized";
        case 403:
            return "Forbidden";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 408:
            return "Request Timeout";
        case 409:
            return "Conflict";
        case 411:
            return "Length Required";
        case 413:
            return "Content Too Large";
        case 415:
            return "Unsupported Media Type";
        case 422:
            return "Unprocessable Content";
        case 429:
            return "Too Many Requests";
        case 431:
            return "Request Header Fields Too Large";
        case 500:
            return "Internal Server Error";
        case 501:
            return "Not Implemented";
        case 502:
            return "Bad Gateway";
        case 503:
            return "Service Unavailable";
        case 505:
            return "HTTP Version Not Supported";
        default:
            return "Status";
    }
}

bool ascii_icontains(std::string_view s, std::string_view needle) {
    for (size_t i = 0; i + needle.size() <= s.size(); ++i)
        if (ascii_iequals(s.substr(i, needle.size()), needle)) return true;
    return false;
}

// Header text we emit must not be able to split the response.
bool safe_header_text(std::string_view s) {
    for (unsigned char c : s)
        if (c == '\r' || c == '\n' || c == '\0') return false;
    return true;
}

bool safe_header_name(std::string_view s) {
    if (s.empty()) return false;
    for (unsigned char c : s)
        if (c <= 0x20 || c >= 0x7f || c == ':') return false;
    return true;
}

std::string error_body(std::string_view reason) {
    return "{\"error\":\"" + log::json_escape(reason) + "\"}";
}

// Serialises `resp` as the answer to a request made with `method`; clears *keep_alive when
// the response asks to close.
std::string serialize(std::string_view method, int version_minor, HttpResponse resp,
                      bool* keep_alive) {
    if (resp.status < 200 || resp.status > 999) {
        // 1xx would make the client wait for another response; below 100 is not a status.
        resp.status = 500;
        resp.content_type = "application/json";
        resp.body = error_body("invalid response status");
    }
    for (const auto& [name, value] : resp.headers)
        if (ascii_iequals(name, "connection") && ascii_icontains(value, "close"))
            *keep_alive = false;
    const bool no_body = resp.status == 204 || resp.status == 304;
    const bool head = method == "HEAD";

    std::string out;
    out.reserve(128 + resp.body.size());
    out += "HTTP/1.1 ";
    out += std::to_string(resp.status);
    out += ' ';
    out += reason_phrase(resp.status);
    out += "\r\n";
    if (!resp.content_type.empty() && safe_header_text(resp.content_type)) {
        out += "Content-Type: ";
        out += resp.content_type;
        out += "\r\n";
    }
    if (!no_body) {
        out += "Content-Length: ";
        out += std::to_string(resp.body.size());
        out += "\r\n";
    }
    for (const auto& [name, value] : resp.headers) {
        if (!safe_header_name(name) || !safe_header_text(value)) continue;
        if (ascii_iequals(name, "content-length") || ascii_iequals(name, "transfer-encoding") ||
            ascii_iequals(name, "connection") || ascii_iequals(name, "content-type"))
            continue;
        out += name;
        out += ": ";
        out += value;
        out += "\r\n";
    }
    if (!*keep_alive)
        out += "Connection: close\r\n";
    else if (version_minor == 0)
        out += "Connection: keep-alive\r\n";
    out += "\r\n";
    if (!no_body && !head) out += resp.body;
    return out;
}

}  // namespace

// One accepted socket: its uv_tcp_t and its timer, freed by the server once both close
// callbacks ran.
class HttpServer::Connection {
  public:
    explicit Connection(HttpServer& server)
        : server_(server),
          parser_({server.limits_.max_header_bytes, server.limits_.max_body_bytes}) {}
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    // Accepts the pending connection; a rejected one is closed at once. False if no handle
    // could be created (nothing to close; the caller frees the connection).
    bool start(uv_stream_t* listener, bool reject);
    void close_now(bool reset);
    bool counted() const { return counted_; }

  private:
    enum class Phase { none, head, body, idle, write, linger };

    // A queued write owns its bytes until libuv calls back (also with UV_ECANCELED on close).
    struct WriteReq {
        uv_write_t req{};
        std::string data;
        Connection* conn = nullptr;
    };

    uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }
    const HttpServer::Limits& limits() const { return server_.limits_; }

    static void on_alloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
    static void on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
    static void on_write(uv_write_t* req, int status);
    static void on_shutdown(uv_shutdown_t* req, int status);
    static void on_timeout(uv_timer_t* t);
    static void on_close(uv_handle_t* h);

    void process();
    void respond(const HttpRequest& req, HttpResponse resp);
    void send_error(int status, std::string_view reason);
    int write(std::string data);
    void finish();
    void update_reading();
    void update_timer();
    void arm(Phase phase, uint64_t ms);

    HttpServer& server_;
    uv_tcp_t tcp_{};
    uv_timer_t timer_{};
    uv_shutdown_t shutdown_req_{};
    HttpRequestParser parser_;
    int live_ = 0;            // handles whose close callback has not run
    int pending_writes_ = 0;  // uv_write requests not yet called back
    uint64_t requests_ = 0;
    Phase phase_ = Phase::none;
    bool counted_ = false;  // admitted (counts toward max_connections)
    bool reading_ = false;
    bool closing_ = false;    // uv_close called
    bool draining_ = false;   // last response queued; FIN follows it, nothing more is parsed
    bool lingering_ = false;  // FIN sent; the peer's bytes are read and dropped
    bool continue_sent_ = false;
};

bool HttpServer::Connection::start(uv_stream_t* listener, bool reject) {
    uv_loop_t* loop = server_.loop_;
    if (uv_tcp_init(loop, &tcp_) != 0) return false;
    tcp_.data = this;
    ++live_;
    uv_timer_init(loop, &timer_);
    timer_.data = this;
    ++live_;
    int err = uv_accept(listener, stream());
    if (err != 0 || reject) {
        if (err != 0) log::warn("admin accept failed", {{"error", uv_error_string(err)}});
        close_now(false);
        return true;
    }
    counted_ = true;
    ++server_.active_;
    uv_tcp_nodelay(&tcp_, 1);
    arm(Phase::head, limits().header_timeout_ms);  // the first request's head starts now
    update_reading();
    return true;
}

void HttpServer::Connection::close_now(bool reset) {
    if (closing_) return;
    closing_ = true;
    reading_ = false;
    if (reset) set_linger_zero(&tcp_);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_close);
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), on_close);
}

void HttpServer::Connection::on_close(uv_handle_t* h) {
    auto* self = static_cast<Connection*>(h->data);
    if (--self->live_ == 0) self->server_.connection_finished(self);  // frees self
}

void HttpServer::Connection::on_alloc(uv_handle_t*, size_t, uv_buf_t* buf) {
    Chunk c = loop_buffer_pool().take();
    *buf = uv_buf_init(c.release(), static_cast<unsigned>(BufferPool::kChunkSize));
}

void HttpServer::Connection::on_read(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
    // Own the buffer before any branch so every path returns it to the pool.
    Chunk chunk(buf->base);
    auto* self = static_cast<Connection*>(s->data);
    if (nread > 0 && !self->draining_)
        self->parser_.feed(std::string_view(chunk.get(), static_cast<size_t>(nread)));
    if (chunk) loop_buffer_pool().give(std::move(chunk));
    if (nread == 0 || self->closing_) return;
    if (nread < 0) {
        // EOF or error. Every complete request was answered before reading resumed, so what
        // is left is at most a partial request nobody will finish.
        self->reading_ = false;
        self->close_now(false);
        return;
    }
    if (self->draining_) return;  // lingering: the peer's leftovers are dropped
    self->process();
}

// Answers every complete buffered request, one response in flight at most.
void HttpServer::Connection::process() {
    while (!closing_ && !draining_ && pending_writes_ == 0) {
        HttpRequest req;
        HttpRequestParser::Status st = parser_.next(req);
        if (st == HttpRequestParser::Status::need_more) break;
        if (st == HttpRequestParser::Status::error) {
            log::debug("admin request rejected",
                       {{"status", parser_.error_status()}, {"reason", parser_.error_reason()}});
            send_error(parser_.error_status(), parser_.error_reason());
            return;
        }
        ++requests_;
        continue_sent_ = false;
        phase_ = Phase::none;  // the next request gets fresh timers
        HttpResponse resp = server_.call_handler(req);
        if (closing_) return;  // the handler closed the server
        respond(req, std::move(resp));
    }
    if (closing_ || draining_) return;
    if (pending_writes_ == 0 && parser_.expects_continue() && !continue_sent_) {
        continue_sent_ = true;
        if (write("HTTP/1.1 100 Continue\r\n\r\n") != 0) {
            close_now(false);
            return;
        }
    }
    update_reading();
    update_timer();
}

void HttpServer::Connection::respond(const HttpRequest& req, HttpResponse resp) {
    bool keep_alive = req.keep_alive;
    std::string out = serialize(req.method, req.version_minor, std::move(resp), &keep_alive);
    if (write(std::move(out)) != 0) {
        close_now(false);
        return;
    }
    if (!keep_alive) finish();
}

void HttpServer::Connection::send_error(int status, std::string_view reason) {
    HttpResponse resp;
    resp.status = status;
    resp.body = error_body(reason);
    bool keep_alive = false;
    if (write(serialize("", 1, std::move(resp), &keep_alive)) != 0) {
        close_now(false);
        return;
    }
    finish();
}

int HttpServer::Connection::write(std::string data) {
    if (closing_) return UV_EPIPE;
    size_t offset = 0;
    if (pending_writes_ == 0) {
        uv_buf_t b = uv_buf_init(data.data(), static_cast<unsigned>(data.size()));
        int n = uv_try_write(stream(), &b, 1);
        if (n >= 0 && static_cast<size_t>(n) == data.size()) return 0;
        if (n < 0 && n != UV_EAGAIN) return n;
        if (n > 0) offset = static_cast<size_t>(n);
    }
    auto req = std::make_unique<WriteReq>();
    req->conn = this;
    req->data = std::move(data);
    req->req.data = req.get();
    uv_buf_t b =
        uv_buf_init(req->data.data() + offset, static_cast<unsigned>(req->data.size() - offset));
    int err = uv_write(&req->req, stream(), &b, 1, on_write);
    if (err != 0) return err;  // the request and its bytes die here; the caller closes
    ++pending_writes_;
    req.release();  // reclaimed in on_write
    update_reading();
    return 0;
}

void HttpServer::Connection::on_write(uv_write_t* r, int status) {
    std::unique_ptr<WriteReq> req(static_cast<WriteReq*>(r->data));
    Connection* self = req->conn;
    --self->pending_writes_;
    req.reset();  // the bytes are no longer needed
    if (status == UV_ECANCELED || self->closing_) return;
    if (status < 0) {  // e.g. ECONNRESET, EPIPE: the peer is gone
        self->close_now(false);
        return;
    }
    if (self->pending_writes_ > 0 || self->draining_) return;  // on_shutdown takes over
    self->process();
}

// The response just queued is the last: FIN after it, then drop whatever the peer still
// sends until its FIN or linger_ms, so our close does not turn into a RST that could
// destroy the response in the client's receive queue.
void HttpServer::Connection::finish() {
    if (closing_ || draining_) return;
    draining_ = true;
    update_reading();
    shutdown_req_.data = this;
    if (uv_shutdown(&shutdown_req_, stream(), on_shutdown) != 0) {
        close_now(false);
        return;
    }
    arm(Phase::write, limits().idle_timeout_ms);  // bounds the flush of the last response
}

void HttpServer::Connection::on_shutdown(uv_shutdown_t* req, int status) {
    auto* self = static_cast<Connection*>(req->data);
    if (status == UV_ECANCELED || self->closing_) return;
    if (status < 0 || self->limits().linger_ms == 0) {
        self->close_now(false);
        return;
    }
    self->lingering_ = true;
    self->arm(Phase::linger, self->limits().linger_ms);
    self->update_reading();
}

void HttpServer::Connection::update_reading() {
    if (closing_) return;
    bool want = lingering_ || (!draining_ && pending_writes_ == 0);
    if (want && !reading_) {
        if (uv_read_start(stream(), on_alloc, on_read) == 0) reading_ = true;
    } else if (!want && reading_) {
        uv_read_stop(stream());
        reading_ = false;
    }
}

void HttpServer::Connection::update_timer() {
    if (closing_ || draining_) return;
    Phase want = Phase::head;
    uint64_t ms = limits().header_timeout_ms;
    if (pending_writes_ > 0) {
        want = Phase::write;
        ms = limits().idle_timeout_ms;
    } else if (parser_.in_body()) {
        want = Phase::body;
        ms = limits().idle_timeout_ms;
    } else if (parser_.idle() && requests_ > 0) {
        want = Phase::idle;
        ms = limits().idle_timeout_ms;
    }
    if (want != phase_) arm(want, ms);
}

void HttpServer::Connection::arm(Phase phase, uint64_t ms) {
    phase_ = phase;
    uv_timer_start(&timer_, on_timeout, ms, 0);
}

void HttpServer::Connection::on_timeout(uv_timer_t* t) {
    auto* self = static_cast<Connection*>(t->data);
    if (self->closing_) return;
    switch (self->phase_) {
        case Phase::head:
            // Nothing of a request yet: a silent close, as for an idle connection.
            if (self->parser_.idle())
                self->close_now(false);
            else
                self->send_error(408, "request header timeout");
            return;
        case Phase::body:
            self->send_error(408, "request body timeout");
            return;
        case Phase::write:
            // The peer does not take its response: drop it (and the kernel's copy) now.
            self->close_now(true);
            return;
        case Phase::idle:
        case Phase::linger:
            self->close_now(false);
            return;
        case Phase::none:
            return;
    }
}

HttpServer::HttpServer(uv_loop_t* loop, HttpHandler handler, Limits limits)
    : loop_(loop), handler_(std::move(handler)), limits_(limits) {}

HttpServer::HttpServer(uv_loop_t* loop, HttpHandler handler)
    : HttpServer(loop, std::move(handler), Limits{}) {}

HttpServer::~HttpServer() {
    // Handles still open would call back into freed memory.
    assert(closed() && "HttpServer destroyed before close() completed");
}

int HttpServer::listen(const std::string& host, uint16_t port) {
    if (listened_ || closing_) return UV_EINVAL;
    std::string h = host;
    if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
    sockaddr_storage ss{};
    if (uv_ip4_addr(h.c_str(), port, reinterpret_cast<sockaddr_in*>(&ss)) != 0 &&
        uv_ip6_addr(h.c_str(), port, reinterpret_cast<sockaddr_in6*>(&ss)) != 0) {
        std::memset(&ss, 0, sizeof ss);
        uv_getaddrinfo_t req;
        addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        int err =
            uv_getaddrinfo(loop_, &req, nullptr, h.c_str(), std::to_string(port).c_str(), &hints);
        if (err != 0) return err;
        std::memcpy(&ss, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
        uv_freeaddrinfo(req.addrinfo);
    }
    int err = uv_tcp_init(loop_, &listener_);
    if (err != 0) return err;
    listener_.data = this;
    listener_open_ = true;
    listened_ = true;
    err = uv_tcp_bind(&listener_, reinterpret_cast<const sockaddr*>(&ss), 0);
    if (err == 0)
        err = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), kBacklog, on_connection);
    if (err != 0) {
        listener_closing_ = true;
        uv_close(reinterpret_cast<uv_handle_t*>(&listener_), on_listener_closed);
        return err;
    }
    address_ = sock_name(&listener_);
    return 0;
}

std::string HttpServer::address() const {
    return address_;
}

void HttpServer::close(std::function<void()> done) {
    done_ = std::move(done);
    closing_ = true;
    if (listener_open_ && !listener_closing_) {
        listener_closing_ = true;
        uv_close(reinterpret_cast<uv_handle_t*>(&listener_), on_listener_closed);
    }
    std::vector<Connection*> open;
    open.reserve(conns_.size());
    for (auto& [c, owned] : conns_) open.push_back(c);
    for (Connection* c : open) c->close_now(false);
    maybe_done();
}

void HttpServer::on_listener_closed(uv_handle_t* h) {
    auto* self = static_cast<HttpServer*>(h->data);
    self->listener_open_ = false;
    self->listener_closing_ = false;
    self->maybe_done();
}

void HttpServer::on_connection(uv_stream_t* listener, int status) {
    auto* self = static_cast<HttpServer*>(listener->data);
    if (status != 0) {
        // EMFILE/ENFILE: libuv already accepted-and-closed the pending connection with its
        // reserve fd, so the listener does not spin.
        log::warn("admin accept error", {{"error", uv_error_string(status)}});
        return;
    }
    auto conn = std::make_unique<Connection>(*self);
    Connection* c = conn.get();
    bool reject = self->closing_ || self->active_ >= self->limits_.max_connections;
    if (!c->start(listener, reject)) {
        log::warn("admin connection: cannot create a handle");
        return;  // no handle was created: nothing can call back into `conn`
    }
    self->conns_.emplace(c, std::move(conn));
}

void HttpServer::connection_finished(Connection* c) {
    if (c->counted()) --active_;
    conns_.erase(c);
    maybe_done();
}

void HttpServer::maybe_done() {
    if (!closing_ || !closed() || !done_) return;
    std::function<void()> done = std::move(done_);
    done_ = nullptr;
    done();
}

HttpResponse HttpServer::call_handler(const HttpRequest& req) {
    std::string what = "unknown exception";
    try {
        return handler_(req);
    } catch (const std::exception& e) {
        what = e.what();
    } catch (...) {
    }
    log::error("admin handler failed",
               {{"method", req.method}, {"path", req.path}, {"error", what}});
    HttpResponse resp;
    resp.status = 500;
    resp.body = error_body("internal error");
    return resp;
}

}  // namespace tcpfault

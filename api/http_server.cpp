#include "api/http_server.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <exception>

#include "net/buffer_pool.hpp"
#include "net/uv_util.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {

// Room for a burst of connections while they are accepted accepts_per_turn at a time (the
// kernel caps it at net.core.somaxconn): a full queue drops SYNs, and a client whose SYN is
// dropped waits a second before it tries again.
constexpr int kBacklog = 4096;

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

// Read size: bounds what one connection buffers beyond its current request.
constexpr size_t kReadBytes = 16 * 1024;
static_assert(kReadBytes <= BufferPool::kChunkSize);

constexpr uint64_t kLimitWarningIntervalMs = 60000;

// The address a connection counts against: an IPv4 address (also when mapped into IPv6), or
// the /64 of an IPv6 address, since one host usually has a whole /64. "" if unknown.
std::string client_key(const uv_tcp_t* tcp) {
    sockaddr_storage ss{};
    int len = sizeof ss;
    if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
    if (ss.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
        return std::string("4") + std::string(reinterpret_cast<const char*>(&a->sin_addr), 4);
    }
    if (ss.ss_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
        const auto* b = reinterpret_cast<const unsigned char*>(&a->sin6_addr);
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (std::memcmp(b, mapped, sizeof mapped) == 0)
            return std::string("4") + std::string(reinterpret_cast<const char*>(b + 12), 4);
        return std::string("6") + std::string(reinterpret_cast<const char*>(b), 8);
    }
    return "";
}

bool is_loopback_sockaddr(const sockaddr* sa) {
    if (sa->sa_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(sa);
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
        if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr)) return true;
        const auto* b = reinterpret_cast<const unsigned char*>(&a->sin6_addr);
        return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && b[12] == 127;
    }
    return false;
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

    // Accepts the pending connection (closed at once if uv_accept fails: then accepted() is
    // false). False if no handle could be created (nothing to close; the caller frees it).
    bool start(uv_stream_t* listener);
    bool accepted() const { return !closing_; }
    // Counted by the server: arm the first request's timer and start reading.
    void admit();
    void close_now(bool reset);
    // Made room for another connection: closed, with a reset if a response is unsent.
    void evict() { close_now(evict_rank() >= 3); }
    // Its turn came in the server's ready queue.
    void resume() {
        queued_ = false;
        process();
    }

    bool counted() const { return counted_; }
    void set_counted(bool c) { counted_ = c; }
    bool queued() const { return queued_; }
    void set_queued() { queued_ = true; }
    const std::string& client() const { return client_; }
    // Which connection gives way first (lowest rank, then oldest mark); see the header.
    int evict_rank() const;
    uint64_t mark() const { return mark_; }

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
    void mark_progress() { mark_ = ++server_.progress_seq_; }

    HttpServer& server_;
    uv_tcp_t tcp_{};
    uv_timer_t timer_{};
    uv_shutdown_t shutdown_req_{};
    HttpRequestParser parser_;
    std::string client_;  // client_key() of the peer
    uint64_t mark_ = 0;  // when (in server-wide order) accepted, a request taken or a response sent
    int live_ = 0;       // handles whose close callback has not run
    int pending_writes_ = 0;  // uv_write requests not yet called back
    uint64_t requests_ = 0;
    Phase phase_ = Phase::none;
    bool counted_ = false;  // admitted (counts toward the connection limits)
    bool queued_ = false;   // in the server's ready queue (not read meanwhile)
    bool reading_ = false;
    bool closing_ = false;    // uv_close called
    bool draining_ = false;   // last response queued; FIN follows it, nothing more is parsed
    bool lingering_ = false;  // FIN sent; the peer's bytes are read and dropped
    bool continue_sent_ = false;
};

bool HttpServer::Connection::start(uv_stream_t* listener) {
    uv_loop_t* loop = server_.loop_;
    if (uv_tcp_init(loop, &tcp_) != 0) return false;
    tcp_.data = this;
    ++live_;
    uv_timer_init(loop, &timer_);
    timer_.data = this;
    ++live_;
    mark_progress();
    int err = uv_accept(listener, stream());
    if (err != 0) {
        log::warn("admin accept failed", {{"error", uv_error_string(err)}});
        close_now(false);
        return true;
    }
    client_ = client_key(&tcp_);
    return true;
}

void HttpServer::Connection::admit() {
    uv_tcp_nodelay(&tcp_, 1);
    arm(Phase::head, limits().header_timeout_ms);  // the first request's head starts now
    update_reading();
}

int HttpServer::Connection::evict_rank() const {
    if (lingering_ || (draining_ && pending_writes_ == 0)) return 0;  // answered, FIN sent
    if (queued_) return 4;                          // requests waiting for their turn
    if (pending_writes_ > 0) return 3;              // the peer does not take its response
    if (requests_ > 0 && parser_.idle()) return 1;  // idle keep-alive
    return 2;                                       // waiting for (the rest of) a request
}

void HttpServer::Connection::close_now(bool reset) {
    if (closing_) return;
    closing_ = true;
    reading_ = false;
    server_.uncount(this);  // also leaves the ready queue
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
    *buf = uv_buf_init(c.release(), static_cast<unsigned>(kReadBytes));
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

// Answers buffered requests, one response in flight at most, within the server's budgets:
// beyond them the connection waits in the ready queue, unread, for a later loop turn.
void HttpServer::Connection::process() {
    unsigned slice = 0;
    while (!closing_ && !draining_ && pending_writes_ == 0 && parser_.pending() > 0) {
        if (slice >= limits().requests_per_slice || !server_.budget_left()) {
            server_.enqueue(this);
            break;
        }
        HttpRequest req;
        HttpRequestParser::Status st = parser_.next(req);
        if (st == HttpRequestParser::Status::need_more) break;
        server_.spend_budget();
        if (st == HttpRequestParser::Status::error) {
            log::debug("admin request rejected",
                       {{"status", parser_.error_status()}, {"reason", parser_.error_reason()}});
            send_error(parser_.error_status(), parser_.error_reason());
            return;
        }
        ++slice;
        ++requests_;
        mark_progress();
        continue_sent_ = false;
        phase_ = Phase::none;  // the next request gets fresh timers
        HttpResponse resp = server_.call_handler(req);
        if (closing_) return;  // the handler closed the server
        respond(req, std::move(resp));
    }
    if (closing_ || draining_) return;
    if (pending_writes_ == 0 && !queued_ && parser_.expects_continue() && !continue_sent_) {
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
    self->mark_progress();
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
    bool want = lingering_ || (!draining_ && pending_writes_ == 0 && !queued_);
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
    : loop_(loop),
      handler_(std::move(handler)),
      limits_(limits),
      budget_(limits.requests_per_turn) {
    // Zero would stall every connection: at least one request and one accept per turn.
    limits_.requests_per_turn = std::max(1u, limits_.requests_per_turn);
    limits_.requests_per_slice = std::max(1u, limits_.requests_per_slice);
    limits_.accepts_per_turn = std::max(1u, limits_.accepts_per_turn);
    budget_ = limits_.requests_per_turn;
}

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
    uv_idle_init(loop_, &idle_);
    uv_check_init(loop_, &check_);
    idle_.data = this;
    check_.data = this;
    turn_handles_ = 2;
    err = uv_tcp_bind(&listener_, reinterpret_cast<const sockaddr*>(&ss), 0);
    if (err == 0)
        err = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), kBacklog, on_connection);
    if (err != 0) {
        listener_closing_ = true;
        uv_close(reinterpret_cast<uv_handle_t*>(&listener_), on_listener_closed);
        return err;
    }
    address_ = sock_name(&listener_);
    sockaddr_storage bound{};
    int len = sizeof bound;
    if (uv_tcp_getsockname(&listener_, reinterpret_cast<sockaddr*>(&bound), &len) == 0)
        loopback_ = is_loopback_sockaddr(reinterpret_cast<const sockaddr*>(&bound));
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
    ready_.clear();
    if (turn_handles_ > 0 && !turn_closing_) {
        turn_closing_ = true;
        uv_close(reinterpret_cast<uv_handle_t*>(&idle_), on_turn_handle_closed);
        uv_close(reinterpret_cast<uv_handle_t*>(&check_), on_turn_handle_closed);
    }
    maybe_done();
}

void HttpServer::on_listener_closed(uv_handle_t* h) {
    auto* self = static_cast<HttpServer*>(h->data);
    self->listener_open_ = false;
    self->listener_closing_ = false;
    self->maybe_done();
}

void HttpServer::on_turn_handle_closed(uv_handle_t* h) {
    auto* self = static_cast<HttpServer*>(h->data);
    --self->turn_handles_;
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
    if (!self->closing_ && self->accepts_ >= self->limits_.accepts_per_turn) {
        // Not taken now: libuv keeps the socket and stops polling the listener until the idle
        // callback accepts it, after this turn's reads were served.
        self->accept_deferred_ = true;
        self->start_idle();
        return;
    }
    self->accept_one(listener);
}

void HttpServer::accept_one(uv_stream_t* listener) {
    ++accepts_;
    if (!check_active_ && !turn_closing_) {
        check_active_ = true;
        uv_check_start(&check_, on_check);
    }
    auto conn = std::make_unique<Connection>(*this);
    Connection* c = conn.get();
    if (!c->start(listener)) {
        log::warn("admin connection: cannot create a handle");
        return;  // no handle was created: nothing can call back into `conn`
    }
    conns_.emplace(c, std::move(conn));
    if (!c->accepted()) return;  // closing already
    if (closing_ || !make_room(c->client())) {
        c->close_now(false);
        return;
    }
    count(c);
    c->admit();
}

bool HttpServer::make_room(const std::string& client) {
    std::string group;
    auto own = per_client_.find(client);
    if (own != per_client_.end() && own->second >= limits_.max_connections_per_client) {
        group = client;
    } else if (active_ >= limits_.max_connections) {
        // The address holding the most connections gives one up.
        size_t most = 0;
        for (const auto& [key, n] : per_client_) {
            if (n > most) {
                most = n;
                group = key;
            }
        }
        if (most == 0) return false;
    } else {
        return true;
    }
    Connection* victim = nullptr;
    for (const auto& [c, owned] : conns_) {
        if (!c->counted() || c->client() != group) continue;
        if (victim == nullptr || c->evict_rank() < victim->evict_rank() ||
            (c->evict_rank() == victim->evict_rank() && c->mark() < victim->mark()))
            victim = c;
    }
    if (victim == nullptr) return false;
    ++evictions_;
    uint64_t now = uv_now(loop_);
    log::debug("admin connection evicted",
               {{"addr", address_}, {"rank", victim->evict_rank()}, {"connections", active_}});
    if (!warned_limit_ || now - last_limit_warning_ms_ >= kLimitWarningIntervalMs) {
        warned_limit_ = true;
        last_limit_warning_ms_ = now;
        log::warn(
            "HTTP API connection limit reached: closing idle and slow connections to admit "
            "new ones",
            {{"addr", address_},
             {"connections", active_},
             {"max_connections", limits_.max_connections},
             {"max_connections_per_client", limits_.max_connections_per_client},
             {"evictions", evictions_}});
    }
    victim->evict();
    return true;
}

void HttpServer::count(Connection* c) {
    c->set_counted(true);
    ++active_;
    ++per_client_[c->client()];
}

void HttpServer::uncount(Connection* c) {
    if (c->queued()) {
        auto it = std::find(ready_.begin(), ready_.end(), c);
        if (it != ready_.end()) ready_.erase(it);
    }
    if (!c->counted()) return;
    c->set_counted(false);
    --active_;
    auto it = per_client_.find(c->client());
    if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
}

void HttpServer::spend_budget() {
    if (budget_ > 0) --budget_;
    if (!check_active_ && !turn_closing_) {
        check_active_ = true;
        uv_check_start(&check_, on_check);
    }
}

void HttpServer::enqueue(Connection* c) {
    if (c->queued()) return;
    c->set_queued();
    ready_.push_back(c);
    start_idle();
}

void HttpServer::start_idle() {
    if (idle_active_ || turn_closing_ || turn_handles_ == 0) return;
    idle_active_ = true;
    uv_idle_start(&idle_, on_idle);
}

// Before the loop polls: the deferred accept, then queued connections in FIFO order, each for
// one slice, while the turn's budget lasts.
void HttpServer::on_idle(uv_idle_t* h) {
    auto* self = static_cast<HttpServer*>(h->data);
    if (self->accept_deferred_) {
        self->accept_deferred_ = false;
        if (!self->closing_) self->accept_one(reinterpret_cast<uv_stream_t*>(&self->listener_));
    }
    for (size_t n = self->ready_.size(); n > 0 && !self->ready_.empty() && self->budget_left();
         --n) {
        Connection* c = self->ready_.front();
        self->ready_.pop_front();
        c->resume();  // may queue it again, at the back
    }
    if (self->ready_.empty() && !self->accept_deferred_ && self->idle_active_) {
        self->idle_active_ = false;
        uv_idle_stop(&self->idle_);
    }
}

// After the loop polled: a new turn's budgets.
void HttpServer::on_check(uv_check_t* h) {
    auto* self = static_cast<HttpServer*>(h->data);
    self->budget_ = self->limits_.requests_per_turn;
    self->accepts_ = 0;
    self->check_active_ = false;
    uv_check_stop(&self->check_);
}

void HttpServer::connection_finished(Connection* c) {
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

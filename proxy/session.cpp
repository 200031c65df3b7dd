#include "proxy/session.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cstring>

#include "net/uv_util.hpp"
#include "observe/log.hpp"
#include "proxy/proxy_server.hpp"

namespace tcpfault {

namespace {
// How long a client told "upstream unavailable" by FIN may keep sending before we close
// anyway; without reading its bytes, close() would turn our FIN into a RST.
constexpr config::Duration kDrainTimeout = std::chrono::seconds(2);

const char* upstream_error_kind(int err) {
    switch (err) {
        case UV_ECONNREFUSED:
            return "refused";
        case UV_ETIMEDOUT:
            return "timeout";
        case UV_ECONNRESET:
            return "reset";
        default:
            return "other";
    }
}
}  // namespace

Session::Session(ProxyServer& server, uint64_t id, std::shared_ptr<const config::Proxy> cfg,
                 std::optional<DataTarget> data)
    : server_(server), id_(id), cfg_(std::move(cfg)), data_(std::move(data)) {
    client_.attach(&up_, &down_);
    upstream_.attach(&down_, &up_);
    started_ms_ = uv_now(server_.loop());
    if (cfg_->protocol == config::Protocol::ftp) {
        channel_ = data_ ? config::Channel::data : config::Channel::control;
        if (!data_) {
            ftp_ = std::make_unique<FtpControl>(*this);
            up_.set_filter(&ftp_->commands());
            down_.set_filter(&ftp_->replies());
        }
    }
    if (data_ && data_->accepted_is_server) std::swap(accepted_, outgoing_);
}

Session::~Session() = default;

bool Session::local_addr(bool client_side, sockaddr_storage* out) const {
    const Endpoint& e = client_side ? client_ : upstream_;
    int len = sizeof *out;
    return e.usable() && uv_tcp_getsockname(const_cast<Endpoint&>(e).tcp(),
                                            reinterpret_cast<sockaddr*>(out), &len) == 0;
}

bool Session::server_peer_addr(sockaddr_storage* out) const {
    int len = sizeof *out;
    return upstream_.usable() && uv_tcp_getpeername(const_cast<Endpoint&>(upstream_).tcp(),
                                                    reinterpret_cast<sockaddr*>(out), &len) == 0;
}

std::string Session::open_ftp_data(const sockaddr_storage& bind, const sockaddr_storage& target,
                                   bool accepted_is_server, sockaddr_storage* bound) {
    return server_.open_ftp_data(bind, target, accepted_is_server, bound);
}

void Session::accept(uv_stream_t* listener) {
    int err = accepted_->init(server_.loop());
    if (err == 0) err = uv_accept(listener, accepted_->stream());
    if (err != 0) {
        log::warn("accept failed", {{"proxy", cfg_->name}, {"error", uv_error_string(err)}});
        server_.count_rejected("accept_error");
        closing_ = true;
        accepted_->close();
        handle_closed();
        return;
    }
    uv_tcp_nodelay(accepted_->tcp(), 1);
    if (accepted_ == &client_) {
        client_addr_ = peer_name(client_.tcp());
        int len = sizeof peer_;
        uv_tcp_getpeername(client_.tcp(), reinterpret_cast<sockaddr*>(&peer_), &len);
    } else {
        // Active-mode data: the client is the address its PORT/EPRT named.
        peer_ = data_->addr;
        client_addr_ = format_addr(peer());
    }
    rng_.seed(server_.seed() ^ (id_ * 0x9e3779b97f4a7c15ULL));
    log::debug("accepted", {{"proxy", cfg_->name}, {"conn", id_}, {"client", client_addr_}});
    if (server_.match_rules(*this, peer()) == ProxyServer::Admission::admit) admit();
}

void Session::admit() {
    start_timer(cfg_->connect_timeout, on_connect_timeout);
    resolve();
}

void Session::reject(config::CapFault::Over over, const std::string& banner) {
    switch (over) {
        case config::CapFault::Over::reset:
            closing_ = true;
            accepted_->reset();
            handle_closed();
            return;
        case config::CapFault::Over::banner:
            if (accepted_->write(banner.data(), banner.size(), nullptr) != 0) {
                closing_ = true;
                accepted_->reset();
                handle_closed();
                return;
            }
            [[fallthrough]];
        case config::CapFault::Over::close:
        case config::CapFault::Over::hold:  // not reached: held sessions are parked instead
            upstream_failed_ = true;
            close_client_gently();
            return;
    }
}

void Session::start_timer(config::Duration d, uv_timer_cb cb) {
    if (!timer_open_) {
        uv_timer_init(server_.loop(), &timer_);
        timer_.data = this;
        timer_open_ = true;
        ++live_;
    }
    uint64_t ms = static_cast<uint64_t>((d.count() + 999) / 1000);
    uv_timer_start(&timer_, cb, ms, 0);
}

// Connections without faults keep no timer once established.
void Session::stop_timer() {
    if (!timer_open_) return;
    timer_open_ = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_timer_closed);
}

void Session::on_timer_closed(uv_handle_t* h) {
    auto* self = static_cast<Session*>(h->data);
    --self->live_;
    self->handle_closed();
}

void Session::resolve() {
    sockaddr_storage ss;
    if (data_) {
        addrs_.push_back(data_->addr);
        connect_next();
        return;
    }
    if (numeric_addr(cfg_->upstream, &ss)) {
        addrs_.push_back(ss);
        connect_next();
        return;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    gai_.data = this;
    std::string port = std::to_string(cfg_->upstream.port);
    int err = uv_getaddrinfo(server_.loop(), &gai_, on_resolved, cfg_->upstream.host.c_str(),
                             port.c_str(), &hints);
    if (err != 0) {
        upstream_failed("dns", err);
        return;
    }
    ++live_;  // the resolver thread will call back even if we close meanwhile
}

void Session::on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* res) {
    auto* self = static_cast<Session*>(req->data);
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        sockaddr_storage ss{};
        std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        self->addrs_.push_back(ss);
    }
    uv_freeaddrinfo(res);
    --self->live_;
    if (self->closing_) {
        self->handle_closed();
        return;
    }
    if (status != 0 || self->addrs_.empty()) {
        self->upstream_failed("dns", status != 0 ? status : UV_EAI_NONAME);
        return;
    }
    self->connect_next();
}

void Session::connect_next() {
    const sockaddr_storage& ss = addrs_[next_addr_++];
    bool clamp = has_preconnect_clamp();
    int err = outgoing_->init(server_.loop(), clamp ? ss.ss_family : AF_UNSPEC);
    if (err == 0 && clamp) {
        for (const auto& r : rules_) {
            const auto* f = std::get_if<config::ClampFault>(&r.rule->fault);
            if (f != nullptr && !r.rule->when && f->side != config::Target::client)
                apply_clamp(*outgoing_, true, *f);
        }
    }
    if (err == 0) {
        connect_req_.data = this;
        err = uv_tcp_connect(&connect_req_, outgoing_->tcp(),
                             reinterpret_cast<const sockaddr*>(&ss), on_connect);
    }
    if (err != 0) {
        upstream_failed(upstream_error_kind(err), err);
        return;
    }
    connecting_ = true;
}

void Session::on_connect(uv_connect_t* req, int status) {
    auto* self = static_cast<Session*>(req->data);
    self->connecting_ = false;
    if (status == UV_ECANCELED || self->closing_) return;
    if (status != 0) {
        self->last_connect_err_ = status;
        if (self->next_addr_ < self->addrs_.size()) {
            // Try the next address once this socket's handle is closed (see endpoint_closed).
            self->retry_pending_ = true;
            self->outgoing_->close();
            return;
        }
        self->upstream_failed(upstream_error_kind(status), status);
        return;
    }
    self->on_connected();
}

void Session::on_connected() {
    connected_ = true;
    stop_timer();
    uv_tcp_nodelay(outgoing_->tcp(), 1);
    // Rules without `when` act "at accept": once both sockets exist, before any byte moves.
    start_rules();
    if (ending()) return;
    up_.start();
    down_.start();
}

void Session::on_connect_timeout(uv_timer_t* t) {
    auto* self = static_cast<Session*>(t->data);
    self->timed_out_ = true;
    self->upstream_failed("timeout", UV_ETIMEDOUT);
}

void Session::upstream_failed(const char* kind, int err) {
    if (closing_ || upstream_failed_) return;
    upstream_failed_ = true;
    server_.count_upstream_error(kind);
    server_.count_rejected("upstream_error");
    log::warn("upstream error", {{"proxy", cfg_->name},
                                 {"conn", id_},
                                 {"client", client_addr_},
                                 {"upstream", cfg_->upstream.str()},
                                 {"error", kind},
                                 {"detail", uv_error_string(err)}});
    outgoing_->close();
    retry_pending_ = false;
    if (cfg_->on_upstream_error == config::OnUpstreamError::reset) {
        closing_ = true;
        accepted_->reset();
        stop_timer();
        handle_closed();
        return;
    }
    close_client_gently();
}

// FIN to the client, then read and drop what it still sends until its FIN, so the kernel does
// not answer our close with a RST over unread bytes.
void Session::close_client_gently() {
    (accepted_ == &client_ ? up_ : down_).set_mode(Pipe::Mode::drop);
    int e = accepted_->shutdown_write();
    if (e != 0) {
        close_all();
        return;
    }
    accepted_->start_reading();
    start_timer(kDrainTimeout, on_drain_timeout);
}

void Session::on_drain_timeout(uv_timer_t* t) {
    static_cast<Session*>(t->data)->close_all();
}

void Session::on_bytes(config::Direction dir, size_t n) {
    server_.count_bytes(dir, n);
}

void Session::trace(const char* event) {
    log::debug(event, {{"proxy", cfg_->name}, {"conn", id_}});
}

void Session::on_backpressure(bool paused) {
    log::debug(paused ? "backpressure on" : "backpressure off",
               {{"proxy", cfg_->name}, {"conn", id_}});
}

void Session::on_peer_reset(Endpoint& who, int err) {
    if (closing_) return;
    Endpoint& other = (&who == &client_) ? upstream_ : client_;
    log::debug("peer reset", {{"proxy", cfg_->name},
                              {"conn", id_},
                              {"side", who.side() == Endpoint::Side::client ? "client" : "server"},
                              {"error", uv_error_string(err)}});
    closing_ = true;
    stop_timer();
    close_pipe_timers();
    other.reset();
    who.reset();
    handle_closed();
}

void Session::on_direction_done() {
    if (close_fault_) return;  // the close fault decides when the session ends
    if (up_.done() && down_.done()) close_all();
}

void Session::close_all() {
    if (closing_ && !client_.usable() && !upstream_.usable()) return;
    closing_ = true;
    stop_timer();
    close_pipe_timers();
    client_.close();
    upstream_.close();
    handle_closed();
}

void Session::abort(bool with_reset) {
    if (with_reset) {
        closing_ = true;
        stop_timer();
        close_pipe_timers();
        client_.reset();
        upstream_.reset();
        handle_closed();
        return;
    }
    close_all();
}

void Session::endpoint_closed(Endpoint& e) {
    --live_;
    if (&e == outgoing_ && retry_pending_ && !closing_) {
        retry_pending_ = false;
        outgoing_->recycle();
        connect_next();
        return;
    }
    handle_closed();
}

// The single place a session is freed: when it is closing and nothing can call back into it.
void Session::handle_closed() {
    if (closing_ && live_ == 0) server_.session_finished(id_);
}

}  // namespace tcpfault

// The session's lifecycle: accepting, connecting upstream, the events of its two sockets and
// pipes, and the one path into `ending`. Rules and triggers are in session_rules.cpp.
#include "proxy/session.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>

#include <atomic>

#include <cstring>

#include "faults/fault_list.hpp"
#include "net/uv_util.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {
// Under an endless stall (or a zero rate) nothing tells the session that its peers left:
// it looks at their TCP state this often.
constexpr uint64_t kReapCheckUs = 1'000'000;

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

// The peer has closed (or reset) its end, by the kernel's TCP state.
bool peer_closed(Endpoint& e) {
    int fd = e.fd();
    if (fd < 0) return true;
    tcp_info info{};
    socklen_t len = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return false;
    switch (info.tcpi_state) {
        case TCP_CLOSE_WAIT:
        case TCP_LAST_ACK:
        case TCP_CLOSING:
        case TCP_TIME_WAIT:
        case TCP_CLOSE:
            return true;
        default:
            return false;
    }
}

// The descriptors a connection needs beyond its accepted socket (the upstream socket) plus
// what the process keeps for itself (admin connections, listeners re-opened, reloads).
constexpr int kFdReserve = 4;

// Descriptors are handed out lowest first, so an accepted socket's number says how close the
// process is to RLIMIT_NOFILE (read each time: it can be changed from outside, prlimit).
bool near_fd_limit(int fd) {
    rlimit r{};
    if (fd < 0 || getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return false;
    return static_cast<rlim_t>(fd) + kFdReserve >= r.rlim_cur;
}

// Logged the first time and then once per 1,000, so a flood at the limit cannot flood the log.
void log_fd_limit(const std::string& proxy) {
    static std::atomic<uint64_t> count{0};
    uint64_t n = ++count;
    if (n == 1 || n % 1000 == 0)
        log::warn("at the file descriptor limit: new connections are reset",
                  {{"proxy", proxy}, {"reset_so_far", n}, {"hint", "raise ulimit -n"}});
}

faults::Side side_of(const Endpoint& e) {
    return e.side() == Endpoint::Side::client ? faults::Side::client : faults::Side::server;
}
faults::Side source_side(config::Direction d) {
    return d == config::Direction::upstream ? faults::Side::client : faults::Side::server;
}
faults::Side other(faults::Side s) {
    return s == faults::Side::client ? faults::Side::server : faults::Side::client;
}
}  // namespace

Session::Session(SessionOwner& server, uint64_t id, std::shared_ptr<const config::Proxy> cfg,
                 std::optional<DataTarget> data)
    : server_(server),
      id_(id),
      cfg_(std::move(cfg)),
      deadlines_(server.loop(), *this),
      data_(data ? std::make_unique<const DataTarget>(*data) : nullptr) {
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

uv_loop_t* Session::loop() const {
    return server_.loop();
}

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

std::string Session::state() const {
    auto name = [](const Endpoint& e) {
        switch (e.state()) {
            case Endpoint::State::unopened:
                return "unopened";
            case Endpoint::State::open:
                return e.peer_fin() && e.fin_sent() ? "half-closed both"
                       : e.peer_fin()               ? "peer half-closed"
                       : e.fin_sent()               ? "half-closed"
                                                    : "open";
            case Endpoint::State::ending:
                return ending_name(e.ending());
            case Endpoint::State::closing:
            case Endpoint::State::closed:
                return "closed";
        }
        return "?";
    };
    return std::string(ending_      ? "ending"
                       : connected_ ? "open"
                                    : "connecting") +
           " (client: " + name(client_) + ", server: " + name(upstream_) + ")";
}

// ---------------------------------------------------------------------------------------------
// faults injected, and the admin API acting on this connection

void Session::log_injected(std::string_view rule, const char* fault) {
    log::info("fault injected", {{"proxy", cfg_->name},
                                 {"conn", id_},
                                 {"client", client_addr_},
                                 {"rule", rule},
                                 {"fault", fault},
                                 {"bytes_up", up_.forwarded()},
                                 {"bytes_down", down_.forwarded()}});
    ++applied_total_;
    if (applied_.size() < kMaxFaultsListed) applied_.push_back({std::string(rule), fault});
    server_.fault_applied(*this, rule, fault);
}

Session::ApiResult Session::apply_api_fault(const config::FaultSpec& f, const std::string& label,
                                            bool while_connecting) {
    if (ending_) return ApiResult::ending;
    if (!connected_ && !while_connecting) return ApiResult::connecting;
    if (faults::fault_scope(f) == faults::Scope::proxy) return ApiResult::proxy_scope;
    const char* name = config::fault_name(f);
    server_.count_api_fault(name);
    log_injected(label, name);
    faults::apply_fault(f, *this, label);
    return ApiResult::applied;
}

Session::ApiResult Session::lift_api_faults(const std::string& label) {
    if (ending_) return ApiResult::ending;
    lift_rule(label);
    log::info("fault lifted", {{"proxy", cfg_->name}, {"conn", id_}, {"rule", label}});
    return ApiResult::applied;
}

// ---------------------------------------------------------------------------------------------
// accepting and connecting

void Session::accept(uv_stream_t* listener, bool nodelay_inherited) {
    int err = accepted_->init(server_.loop());
    if (err == 0) err = uv_accept(listener, accepted_->stream());
    if (err != 0) {
        log::warn("accept failed", {{"proxy", cfg_->name}, {"error", uv_error_string(err)}});
        server_.count_rejected("accept_error");
        end_connection({Ending::close_now, Ending::close_now}, "accept failed", nullptr);
        return;
    }
    if (near_fd_limit(accepted_->fd())) {
        // Serving it would need one more descriptor than we can spare (and at the limit
        // itself libuv closes new connections silently): turned away, counted, said.
        server_.count_rejected("accept_error");
        log_fd_limit(cfg_->name);
        end_connection({Ending::reset_now, Ending::close_now}, "file descriptor limit", nullptr);
        return;
    }
    if (!nodelay_inherited) uv_tcp_nodelay(accepted_->tcp(), 1);
    if (accepted_ == &client_) {
        int len = sizeof peer_;
        client_addr_ = uv_tcp_getpeername(client_.tcp(), &peer_.sa, &len) == 0 ? format_addr(peer())
                                                                               : std::string("?");
    } else {
        // Active-mode data: the client is the address its PORT/EPRT named.
        std::memcpy(&peer_, &data_->addr,
                    data_->addr.ss_family == AF_INET6 ? sizeof peer_.v6 : sizeof peer_.v4);
        client_addr_ = format_addr(peer());
    }
    rng_.seed(server_.seed() ^ (id_ * 0x9e3779b97f4a7c15ULL));
    if (log::enabled(config::LogLevel::debug))
        log::debug("accepted", {{"proxy", cfg_->name}, {"conn", id_}, {"client", client_addr_}});
    if (server_.match_rules(*this, peer()) == SessionOwner::Admission::admit) admit();
}

void Session::admit() {
    if (ending_) return;
    connect_deadline_us_ = now_us() + static_cast<uint64_t>(cfg_->connect_timeout.count());
    rearm();
    resolve();
}

void Session::reject(const config::CapFault& cap) {
    faults::Endings e{cap.rejection(), Ending::close_now};
    if (cap.over == config::CapFault::Over::banner &&
        accepted_->write(cap.banner.data(), cap.banner.size(), nullptr) != 0)
        e.client = Ending::reset_now;
    if (accepted_ != &client_) std::swap(e.client, e.server);
    upstream_failed_ = true;  // nothing will connect
    end_connection(e, "cap", nullptr);
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
    LoopQueue* queue = server_.loop_queue();
    if (queue == nullptr) {
        upstream_failed("dns", UV_ENOSYS);
        return;
    }
    resolving_ = true;
    // Cancelled in end_connection(), so the callback never sees a session that is gone.
    lookup_ = Resolver::instance().resolve(cfg_->upstream.host, cfg_->upstream.port, *queue,
                                           [this](const Resolver::Result& r) { on_resolved(r); });
}

void Session::on_resolved(const Resolver::Result& r) {
    resolving_ = false;
    lookup_.reset();
    if (ending_) return;
    if (r.status != 0 || r.addrs.empty()) {
        upstream_failed("dns", r.status != 0 ? r.status : UV_EAI_NONAME);
        return;
    }
    addrs_ = r.addrs;
    connect_next();
}

void Session::connect_next() {
    const sockaddr_storage& ss = addrs_[next_addr_++];
    if (server_.is_own_listener(ss)) {
        // Connecting would accept a connection of our own, which would connect again...
        upstream_failed("other", UV_ELOOP);
        return;
    }
    bool clamp = has_preconnect_clamp();
    int err = outgoing_->init(server_.loop(), clamp ? ss.ss_family : AF_UNSPEC);
    if (err == 0 && clamp) {
        each_rule([&](const config::Rule& r) {
            const auto* f = std::get_if<config::ClampFault>(&r.fault);
            if (f != nullptr && !r.when && faults::hits_server(f->side))
                f->configure(outgoing_->fd(), faults::Side::server, identity());
        });
    }
    if (err == 0) {
        connect_req_.data = this;
        err = uv_tcp_connect(&connect_req_, outgoing_->tcp(),
                             reinterpret_cast<const sockaddr*>(&ss), on_connect);
    }
    // Reading is asked for now, while libuv registers the socket for the connect anyway: one
    // epoll_ctl instead of three once connected. No read callback comes before on_connect,
    // and the pipe decides about reading in on_connected().
    if (err == 0) outgoing_->start_reading();
    if (err != 0) {
        upstream_failed(upstream_error_kind(err), err);
        return;
    }
    connecting_ = true;
}

void Session::on_connect(uv_connect_t* req, int status) {
    auto* self = static_cast<Session*>(req->data);
    self->connecting_ = false;
    if (status == UV_ECANCELED || self->ending_) return;
    if (status == UV_ECONNRESET || status == UV_EPIPE) {
        // Made, then reset by the server before this turn of the loop; libuv's check took the
        // error. A direct client would have connected, read what the server sent, then its
        // RST: so does this one. EPIPE: the RST came after the server's FIN, which a direct
        // client reads first (EOF; its next write fails): the socket reads the same.
        self->trace("server reset before the connection was seen made");
        self->on_connected(status);
        return;
    }
    if (status != 0) {
        if (self->next_addr_ < self->addrs_.size()) {
            // Try the next address once this socket's handle is closed (see on_closed).
            self->retry_pending_ = true;
            self->outgoing_->end(Ending::close_now);
            return;
        }
        self->upstream_failed(upstream_error_kind(status), status);
        return;
    }
    self->on_connected();
}

void Session::on_connected(int gone) {
    connected_ = true;
    if (gone == UV_ECONNRESET) outgoing_->reset_taken(gone);
    connect_deadline_us_ = 0;
    std::vector<sockaddr_storage>().swap(addrs_);  // only needed to connect: 144 bytes less
    rearm();
    uv_tcp_nodelay(outgoing_->tcp(), 1);
    // Rules without `when` act "at accept": once both sockets exist, before any byte moves.
    start_rules();
    if (ending_) return;
    if (gone != 0) {
        // The peer we connected to (the server; the client of an active-mode FTP data channel)
        // is gone. What it sent goes to the other side at that side's pace, then its RST (which
        // ends the session) or its FIN. The other side is not read meanwhile: its bytes would
        // meet the dead socket, and that write's error would end the session before the gone
        // peer's bytes were all passed on. After its FIN they may (on_direction_done), and
        // fail as they would have directly.
        pipe_into(*outgoing_).hold_reading(true);
        pipe_from(*outgoing_).start();
        outgoing_->read_now();
        return;
    }
    up_.start();
    down_.start();
    // The side that connected to us most likely sent its request while this connection was
    // made: it moves now, not a turn of the loop (an epoll_wait) later.
    if (!ending_) accepted_->read_now();
}

void Session::upstream_failed(const char* kind, int err) {
    if (ending_ || upstream_failed_) return;
    upstream_failed_ = true;
    server_.count_upstream_error(kind);
    server_.count_rejected("upstream_error");
    log::warn("upstream error", {{"proxy", cfg_->name},
                                 {"conn", id_},
                                 {"client", client_addr_},
                                 {"upstream", cfg_->upstream.str()},
                                 {"error", kind},
                                 {"detail", uv_error_string(err)}});
    retry_pending_ = false;
    // The client is told by RST, or by FIN (its further bytes read and dropped, so our close
    // is not turned into a RST by bytes it still sends).
    Ending to_client =
        cfg_->on_upstream_error == config::OnUpstreamError::reset ? Ending::reset_now : Ending::fin;
    faults::Endings e{to_client, Ending::close_now};
    if (accepted_ != &client_) std::swap(e.client, e.server);
    end_connection(e, "upstream error", nullptr);
}

void Session::abort(bool with_reset) {
    Ending k = with_reset ? Ending::reset_now : Ending::close_now;
    end_connection({k, k}, with_reset ? "restart" : "stopping", nullptr);
}

// ---------------------------------------------------------------------------------------------
// ending

void Session::end(const faults::Endings& e, std::string_view rule) {
    const config::Rule* r = nullptr;
    each_rule([&](const config::Rule& a) {
        if (a.name == rule) r = &a;
    });
    end_connection(e, rule, r);
}

void Session::end_connection(faults::Endings e, std::string_view why, const config::Rule* rule) {
    for (faults::Side s : {faults::Side::client, faults::Side::server})
        if (e.of(s) == Ending::none) e.of(s) = Ending::fin;
    if (ending_) {
        bool stronger = false;
        for (faults::Side s : {faults::Side::client, faults::Side::server}) {
            if (ending_strength(e.of(s)) <= ending_strength(endings_.of(s))) continue;
            endings_.of(s) = e.of(s);
            stronger = true;
            end_side(s);
        }
        if (!stronger && rule != nullptr) server_.count_suppressed(*rule, id_, "already ending");
        return;
    }
    ending_ = true;
    endings_ = e;
    // Before any FIN or RST is sent: they must reach the peers.
    packet_drops_.clear();
    if (lookup_) {
        lookup_->cancel();  // the answer, if it comes, goes nowhere
        lookup_.reset();
        resolving_ = false;
    }
    if (log::enabled(config::LogLevel::debug))
        log::debug("ending", {{"proxy", cfg_->name},
                              {"conn", id_},
                              {"why", why},
                              {"client", ending_name(e.client)},
                              {"server", ending_name(e.server)}});
    pending_fire_.clear();  // rule timers stop: rearm() leaves them out from here on
    connect_deadline_us_ = 0;
    reap_check_us_ = 0;
    rearm();
    if (connecting_ || (!connected_ && outgoing_->usable())) {
        // Still connecting: the outgoing socket has nothing to flush.
        faults::Side out = side_of(*outgoing_);
        if (ending_strength(endings_.of(out)) < ending_strength(Ending::close_now))
            endings_.of(out) = Ending::close_now;
    }
    auto abrupt = [](Ending k) { return k == Ending::reset_now || k == Ending::close_now; };
    up_.terminate(!abrupt(endings_.server));
    down_.terminate(!abrupt(endings_.client));
    end_side(faults::Side::client);
    end_side(faults::Side::server);
    check_finished();
}

// A side ends once the bytes let through toward it have left (an abrupt ending does not
// wait). The pipe tells when it has drained (on_drained).
void Session::end_side(faults::Side s) {
    Endpoint& e = endpoint(s);
    Ending k = endings_.of(s);
    bool abrupt = k == Ending::reset_now || k == Ending::close_now;
    if (!abrupt && !pipe_into(e).drained()) return;
    e.end(k);
}

void Session::on_drained(config::Direction dir) {
    if (!ending_) return;
    end_side(other(source_side(dir)));
}

// Once both sockets are closed (or never opened) and no lookup is out, the timer closes too;
// its close callback, always asynchronous, is the last one, so a session is never freed
// from inside its own code.
void Session::check_finished() {
    if (!ending_ || finished_) return;
    auto gone = [](const Endpoint& e) {
        return e.state() == Endpoint::State::unopened || e.state() == Endpoint::State::closed;
    };
    if (!gone(client_) || !gone(upstream_) || resolving_) return;
    finished_ = true;
    deadlines_.close();
}

void Session::on_closed(Endpoint& e) {
    --live_;
    if (&e == outgoing_ && retry_pending_ && !ending_) {
        retry_pending_ = false;
        outgoing_->recycle();
        connect_next();
        return;
    }
    if (!ending_)  // closed on its own while open: end the rest
        end_connection({Ending::reset, Ending::reset}, "socket closed", nullptr);
    check_finished();
    maybe_free();
}

void Session::handle_closed() {
    --live_;
    maybe_free();
}

// The single place a session is freed, always at the tail of a libuv callback: when it has
// finished and nothing can call back into it.
void Session::maybe_free() {
    if (finished_ && live_ == 0) server_.session_finished(id_);
}

// ---------------------------------------------------------------------------------------------
// events of the sockets and pipes

void Session::on_write_error(Endpoint& e, int err) {
    on_sink_error(pipe_into(e).direction(), err);
}

void Session::on_discarded(Endpoint& e, size_t n) {
    server_.count_bytes(pipe_from(e).direction(), n);
}

void Session::on_bytes(config::Direction dir, size_t n) {
    server_.count_bytes(dir, n);
}

void Session::trace(const char* event) {
    // Checked first: the fields (strings) would be built even with debug off.
    if (log::enabled(config::LogLevel::debug))
        log::debug(event, {{"proxy", cfg_->name}, {"conn", id_}});
}

// A peer's RST is passed on as a RST, after the bytes it sent before it.
void Session::on_source_reset(config::Direction dir, int err) {
    peer_gone(source_side(dir), "peer reset", err);
}

// Writing failed (EPIPE/ECONNRESET): the sink reset us while bytes were in flight.
void Session::on_sink_error(config::Direction dir, int err) {
    peer_gone(other(source_side(dir)), "write failed", err);
}

// That side is gone (its RST): its socket is closed at once, and the other side gets the same,
// a RST, once the bytes already forwarded to it have left.
void Session::peer_gone(faults::Side gone, const char* what, int err) {
    log::debug(what, {{"proxy", cfg_->name},
                      {"conn", id_},
                      {"side", gone == faults::Side::client ? "client" : "server"},
                      {"error", uv_error_string(err)}});
    faults::Endings e;
    e.of(gone) = Ending::reset_now;
    e.of(other(gone)) = Ending::reset;
    end_connection(e, "peer reset", nullptr);
}

void Session::on_direction_done(config::Direction dir) {
    // A peer gone at connect has had its FIN passed on: the other side is read again.
    Pipe& other = dir == config::Direction::upstream ? down_ : up_;
    if (other.reading_held()) other.hold_reading(false);
    if (up_.done() && down_.done()) end_connection({Ending::fin, Ending::fin}, "done", nullptr);
}

// ---------------------------------------------------------------------------------------------
// the session's own deadline: connect timeout, rule timers, the endless-stage reaper

void Session::rearm() {
    uint64_t next = 0;
    auto consider = [&](uint64_t t) {
        if (t != 0 && (next == 0 || t < next)) next = t;
    };
    consider(connect_deadline_us_);
    consider(reap_check_us_);
    if (!ending_)
        for (size_t k = 0; k < rule_sets(); ++k) consider(rule_set(k).next_deadline());
    deadlines_.set(this, next);
}

void Session::on_deadline(uint64_t now) {
    if (connect_deadline_us_ != 0 && now >= connect_deadline_us_) {
        connect_deadline_us_ = 0;
        // Still resolving when time ran out: the name is what failed.
        upstream_failed(resolving_ ? "dns" : "timeout", UV_ETIMEDOUT);
    }
    // Rule timers, one rule at a time in rule order.
    for (size_t k = 0; k < rule_sets() && !ending_; ++k) {
        while (!ending_) {
            auto due = rule_set(k).next_due(now, offsets());
            if (!due) break;
            if (due->fire) fire(k, due->rule);
            // A stream held at the byte threshold moves on once its fault has acted.
            if (!ending_) {
                up_.release_trigger_hold();
                down_.release_trigger_hold();
            }
        }
    }
    if (!ending_ && reap_check_us_ != 0 && now >= reap_check_us_) {
        reap_check_us_ = 0;
        // Nobody is left on either side: end instead of holding forever.
        if (peer_closed(client_) && peer_closed(upstream_)) {
            end_connection({Ending::close_now, Ending::close_now}, "both peers gone", nullptr);
            return;
        }
    }
    if (!ending_ && (up_.held_endlessly() || down_.held_endlessly()))
        reap_check_us_ = now + kReapCheckUs;
    rearm();
}

}  // namespace tcpfault

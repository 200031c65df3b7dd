#include "proxy/proxy_server.hpp"

#include <sys/socket.h>

#include <cstring>

#include <vector>

#include "faults/rule_matcher.hpp"
#include "proxy/clock.hpp"
#include "proxy/log.hpp"
#include "proxy/uv_util.hpp"

namespace tcpfault {

namespace {
constexpr int kBacklog = 4096;
uint64_t g_session_ids = 0;  // process-wide, so ids in logs are unique across proxies
}  // namespace

ProxyServer::ProxyServer(uv_loop_t* loop, std::shared_ptr<const config::Proxy> cfg)
    : loop_(loop), cfg_(std::move(cfg)) {}

ProxyServer::~ProxyServer() = default;

int ProxyServer::listen() {
    sockaddr_storage ss;
    if (!numeric_addr(cfg_->listen, &ss)) {
        // Listen hosts are usually literals; a name (e.g. "localhost") is resolved once here.
        uv_getaddrinfo_t req;
        addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_PASSIVE;
        int err = uv_getaddrinfo(loop_, &req, nullptr, cfg_->listen.host.c_str(),
                                 std::to_string(cfg_->listen.port).c_str(), &hints);
        if (err != 0) return err;
        std::memcpy(&ss, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
        uv_freeaddrinfo(req.addrinfo);
    }
    int err = uv_tcp_init(loop_, &listener_);
    if (err != 0) return err;
    listener_.data = this;
    listener_open_ = true;
    err = uv_tcp_bind(&listener_, reinterpret_cast<const sockaddr*>(&ss), 0);
    if (err == 0)
        err = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), kBacklog, on_connection);
    if (err != 0) {
        stop_accepting();
        return err;
    }
    listen_addr_ = sock_name(&listener_);
    log::info("listening",
              {{"proxy", cfg_->name}, {"addr", listen_addr_}, {"upstream", cfg_->upstream.str()}});
    return 0;
}

void ProxyServer::stop_accepting() {
    if (!listener_open_ || listener_closing_) return;
    listener_closing_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), on_listener_closed);
}

void ProxyServer::on_listener_closed(uv_handle_t* h) {
    auto* self = static_cast<ProxyServer*>(h->data);
    self->listener_open_ = false;
    self->listener_closing_ = false;
    if (self->on_idle_) self->on_idle_();
}

void ProxyServer::on_connection(uv_stream_t* listener, int status) {
    auto* self = static_cast<ProxyServer*>(listener->data);
    if (status != 0) {
        // EMFILE/ENFILE: libuv already accepted-and-closed the pending connection with its
        // reserve fd, so the listener does not spin; count it and keep serving.
        self->count_rejected("accept_error");
        log::warn("accept error", {{"proxy", self->name()}, {"error", uv_error_string(status)}});
        return;
    }
    uint64_t id = ++g_session_ids;
    ++self->counters_.connections;
    auto session = std::make_unique<Session>(*self, id, self->cfg_);
    Session* s = session.get();
    self->sessions_.emplace(id, std::move(session));
    s->accept(listener);  // may fail and end the session later; never frees it synchronously
}

void ProxyServer::abort_sessions(bool with_reset) {
    std::vector<Session*> open;
    open.reserve(sessions_.size());
    for (auto& [id, s] : sessions_) open.push_back(s.get());
    for (Session* s : open) s->abort(with_reset);
}

void ProxyServer::session_finished(uint64_t id) {
    sessions_.erase(id);
    if (on_idle_) on_idle_();
}

void ProxyServer::match_rules(Session& s, const sockaddr* client) {
    faults::ConnectionFacts facts;
    facts.ordinal = ++ordinal_;
    facts.client = client;
    facts.since_start = since_start();
    for (const auto& rule : cfg_->rules) {
        if (faults::rule_matches(rule, facts, seed_, fired(rule.name))) s.apply_rule(&rule);
    }
}

bool ProxyServer::record_fault(const config::Rule& rule) {
    uint64_t& n = fired_[rule.name];
    if (rule.match.limit && n >= *rule.match.limit) return false;
    ++n;
    return true;
}

uint64_t ProxyServer::fired(const std::string& rule) const {
    auto it = fired_.find(rule);
    return it == fired_.end() ? 0 : it->second;
}

void ProxyServer::count_bytes(config::Direction dir, size_t n) {
    if (dir == config::Direction::upstream)
        counters_.bytes_up += n;
    else
        counters_.bytes_down += n;
}

}  // namespace tcpfault

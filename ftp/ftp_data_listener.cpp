#include "ftp/ftp_data_listener.hpp"

#include <netinet/in.h>

#include "net/uv_util.hpp"
#include "observe/log.hpp"

namespace tcpfault {

std::string FtpDataListener::open(uv_loop_t* loop, const sockaddr_storage& bind,
                                  sockaddr_storage* bound) {
    sockaddr_storage addr = bind;
    if (addr.ss_family == AF_INET)
        reinterpret_cast<sockaddr_in*>(&addr)->sin_port = 0;
    else
        reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = 0;
    uv_tcp_init(loop, &tcp_);
    tcp_.data = this;
    ++open_handles_;
    uv_timer_init(loop, &timer_);
    timer_.data = this;
    ++open_handles_;
    int err = uv_tcp_bind(&tcp_, reinterpret_cast<const sockaddr*>(&addr), 0);
    if (err == 0) err = uv_listen(reinterpret_cast<uv_stream_t*>(&tcp_), 1, on_connection);
    int len = sizeof *bound;
    if (err == 0) err = uv_tcp_getsockname(&tcp_, reinterpret_cast<sockaddr*>(bound), &len);
    if (err != 0) {
        close();
        return "cannot open a data listener: " + uv_error_string(err);
    }
    uv_timer_start(&timer_, on_timeout, kTimeoutMs, 0);
    return "";
}

void FtpDataListener::close() {
    if (closing_) return;
    closing_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), on_closed);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_closed);
}

void FtpDataListener::on_connection(uv_stream_t* s, int status) {
    auto* self = static_cast<FtpDataListener*>(s->data);
    if (self->closing_) return;
    if (status != 0) {
        self->owner_.count_rejected("accept_error");
        return;
    }
    self->owner_.accept_data(s, self->target_, self->accepted_is_server_);
    self->close();
}

void FtpDataListener::on_timeout(uv_timer_t* t) {
    auto* self = static_cast<FtpDataListener*>(t->data);
    log::debug("ftp: data listener unused, closed", {{"proxy", self->owner_.name()}});
    self->close();
}

void FtpDataListener::on_closed(uv_handle_t* h) {
    auto* self = static_cast<FtpDataListener*>(h->data);
    if (--self->open_handles_ == 0) self->owner_.data_listener_closed(self->id_);
}

}  // namespace tcpfault

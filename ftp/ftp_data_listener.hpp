// A one-shot listener for one FTP data connection: opened when a PASV/EPSV reply or a
// PORT/EPRT command passes, it accepts the first connection, hands it to the proxy as a
// `channel: data` session towards the real data address, and closes. Unused, it closes
// after a timeout.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <cstdint>
#include <string>

namespace tcpfault {

class FtpDataListener {
  public:
    static constexpr uint64_t kTimeoutMs = 60000;

    // What the listener reports to the proxy that opened it.
    class Owner {
      public:
        virtual const std::string& name() const = 0;
        // The connection to hand over as a data session (still pending on `listener`).
        virtual void accept_data(uv_stream_t* listener, const sockaddr_storage& target,
                                 bool accepted_is_server) = 0;
        virtual void count_rejected(const char* reason) = 0;
        // Both handles are closed: the owner may free the listener.
        virtual void data_listener_closed(uint64_t id) = 0;

      protected:
        ~Owner() = default;
    };

    FtpDataListener(Owner& owner, uint64_t id, const sockaddr_storage& target,
                    bool accepted_is_server)
        : owner_(owner), id_(id), target_(target), accepted_is_server_(accepted_is_server) {}
    FtpDataListener(const FtpDataListener&) = delete;
    FtpDataListener& operator=(const FtpDataListener&) = delete;

    // Binds `bind` with port 0 and listens; fills `bound`. "" or the error.
    std::string open(uv_loop_t* loop, const sockaddr_storage& bind, sockaddr_storage* bound);
    void close();

  private:
    static void on_connection(uv_stream_t* s, int status);
    static void on_timeout(uv_timer_t* t);
    static void on_closed(uv_handle_t* h);

    Owner& owner_;
    uint64_t id_;
    sockaddr_storage target_;
    bool accepted_is_server_;
    uv_tcp_t tcp_{};
    uv_timer_t timer_{};
    int open_handles_ = 0;
    bool closing_ = false;
};

}  // namespace tcpfault

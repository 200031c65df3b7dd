// The FTP control channel of one session (docs/ftp.md): rewrites the server's 227/229
// replies and the client's PORT/EPRT commands so every data connection goes through a
// one-shot listener of the proxy, where `channel: data` rules apply to it. A line it cannot
// rewrite passes through untouched and is logged.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "ftp/ftp_rewrite.hpp"

namespace tcpfault {

class FtpControl {
  public:
    // What the control channel needs from the session it filters.
    class Host {
      public:
        virtual const std::string& proxy_name() const = 0;
        virtual uint64_t id() const = 0;
        // The local address of our client-facing (`client_side`) or server-facing socket.
        virtual bool local_addr(bool client_side, sockaddr_storage* out) const = 0;
        virtual bool server_peer_addr(sockaddr_storage* out) const = 0;
        // Opens a one-shot data listener on `bind`'s address for a data connection to
        // `target`; fills `bound`. "" or the error.
        virtual std::string open_ftp_data(const sockaddr_storage& bind,
                                          const sockaddr_storage& target, bool accepted_is_server,
                                          sockaddr_storage* bound) = 0;

      protected:
        ~Host() = default;
    };

    explicit FtpControl(Host& s);
    faults::FtpLineFilter& replies() { return replies_; }    // server -> client
    faults::FtpLineFilter& commands() { return commands_; }  // client -> server

  private:
    std::string on_reply(std::string_view line);
    std::string on_command(std::string_view line);
    void untouched(std::string_view what, std::string_view line, const std::string& why);

    Host& session_;
    faults::FtpReplyTracker tracker_;
    faults::FtpLineFilter replies_;
    faults::FtpLineFilter commands_;
};

}  // namespace tcpfault

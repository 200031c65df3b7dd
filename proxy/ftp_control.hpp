// The FTP control channel of one session (SPEC section 5): rewrites the server's 227/229
// replies and the client's PORT/EPRT commands so every data connection goes through a
// one-shot listener of the proxy, where `channel: data` rules apply to it. A line it cannot
// rewrite passes through untouched and is logged.
#pragma once

#include <string>
#include <string_view>

#include "faults/ftp_rewrite.hpp"

namespace tcpfault {

class Session;

class FtpControl {
  public:
    explicit FtpControl(Session& s);
    faults::FtpLineFilter& replies() { return replies_; }    // server -> client
    faults::FtpLineFilter& commands() { return commands_; }  // client -> server

  private:
    std::string on_reply(std::string_view line);
    std::string on_command(std::string_view line);
    void untouched(std::string_view what, std::string_view line, const std::string& why);

    Session& session_;
    faults::FtpReplyTracker tracker_;
    faults::FtpLineFilter replies_;
    faults::FtpLineFilter commands_;
};

}  // namespace tcpfault

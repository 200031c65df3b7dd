// FTP control-channel rewriting (docs/ftp.md), without I/O: finds the data addresses in
// PASV/EPSV replies and PORT/EPRT commands, and formats the proxy's own address in their
// place, so data connections go through the proxy too. Anything malformed is left untouched.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace tcpfault::faults {

// "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)": the first six comma-separated numbers.
std::optional<sockaddr_in> parse_pasv_reply(std::string_view line);
std::string format_pasv_reply(const sockaddr_in& addr);
// "229 Entering Extended Passive Mode (|||port|)": only a port; the host is the server's.
std::optional<uint16_t> parse_epsv_reply(std::string_view line);
std::string format_epsv_reply(uint16_t port);
// "PORT h1,h2,h3,h4,p1,p2"
std::optional<sockaddr_in> parse_port_command(std::string_view line);
std::string format_port_command(const sockaddr_in& addr);
// "EPRT |1|1.2.3.4|port|" / "EPRT |2|::1|port|"
std::optional<sockaddr_storage> parse_eprt_command(std::string_view line);
std::string format_eprt_command(const sockaddr* addr);

// Splits a stream into CRLF (or LF) terminated lines across any read boundaries and lets a
// callback replace each complete line. Lines longer than kMaxLine are passed on untouched.
class FtpLineFilter {
  public:
    static constexpr size_t kMaxLine = 4096;
    // Returns the bytes to send instead of `line` (which includes its line ending).
    using Rewrite = std::function<std::string(std::string_view line)>;
    explicit FtpLineFilter(Rewrite rewrite) : rewrite_(std::move(rewrite)) {}
    // Appends to `out` what can be forwarded now; a partial last line is kept.
    void feed(const char* p, size_t n, std::string& out);
    // What is left at end of stream (a final line without line ending).
    void flush(std::string& out);

  private:
    Rewrite rewrite_;
    std::string partial_;
    bool passthrough_line_ = false;  // inside an over-long line
};

// Tracks multi-line replies ("123-..." until "123 ..."): only a reply's last line is a reply.
class FtpReplyTracker {
  public:
    // The reply code of `line` if it completes a reply, else 0.
    int complete_reply_code(std::string_view line);

  private:
    int open_code_ = 0;
};

}  // namespace tcpfault::faults

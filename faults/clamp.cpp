#include "faults/clamp.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <climits>

#include "config/fault_params.hpp"
#include "observe/log.hpp"

namespace tcpfault::faults {

std::optional<ClampFault> ClampFault::parse(const config::FaultParams& p) {
    ClampFault x;
    p.target("side", x.side);
    // Socket options take an int.
    constexpr uint64_t kMaxSockopt = INT_MAX;
    p.size("sndbuf", x.sndbuf, 1, kMaxSockopt);
    p.size("rcvbuf", x.rcvbuf, 1, kMaxSockopt);
    p.size("window", x.window, 1, kMaxSockopt);
    p.size("mss", x.mss, 1, kMaxSockopt);
    p.size("read_size", x.read_size, 1, kMaxSockopt);
    bool any = false;
    for (auto k : {"sndbuf", "rcvbuf", "window", "mss", "read_size"}) any |= p.has(k);
    if (!any)
        p.error(
            "fault type \"clamp\" needs at least one of: sndbuf, rcvbuf, window, mss, "
            "read_size");
    return x;
}

void ClampFault::configure(int fd, Side s, const LogIdentity& who) const {
    if (fd < 0) return;
    const char* side_name = s == Side::server ? "server" : "client";
    auto set = [&](int level, int opt, uint64_t v, const char* name) {
        int x = static_cast<int>(v);
        if (setsockopt(fd, level, opt, &x, sizeof x) != 0) {
            log::warn(
                "clamp: setsockopt failed",
                {{"proxy", who.proxy}, {"conn", who.conn}, {"side", side_name}, {"option", name}});
            return;
        }
        // What the kernel really holds (it doubles SO_*BUF and enforces minimums).
        int got = 0;
        socklen_t len = sizeof got;
        getsockopt(fd, level, opt, &got, &len);
        log::debug("clamp applied", {{"proxy", who.proxy},
                                     {"conn", who.conn},
                                     {"side", side_name},
                                     {"option", name},
                                     {"requested", v},
                                     {"effective", got}});
    };
    if (sndbuf) set(SOL_SOCKET, SO_SNDBUF, *sndbuf, "sndbuf");
    if (rcvbuf) set(SOL_SOCKET, SO_RCVBUF, *rcvbuf, "rcvbuf");
    if (window) set(IPPROTO_TCP, TCP_WINDOW_CLAMP, *window, "window");
    if (mss && s == Side::server) set(IPPROTO_TCP, TCP_MAXSEG, *mss, "mss");
}

void ClampFault::apply(Connection& c, const std::string&) const {
    for (Side s : {Side::client, Side::server}) {
        if (s == Side::client ? !hits_client(side) : !hits_server(side)) continue;
        configure(c.socket_fd(s), s, c.identity());
        if (read_size) c.set_max_read(s, static_cast<size_t>(*read_size));
    }
}

}  // namespace tcpfault::faults

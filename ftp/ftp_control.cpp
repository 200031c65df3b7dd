#include "ftp/ftp_control.hpp"

#include <cstring>

#include "net/uv_util.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {
bool is_unspecified(const sockaddr_in& a) {
    return a.sin_addr.s_addr == 0;
}

std::string printable(std::string_view line) {
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
    return std::string(line.substr(0, 200));
}
}  // namespace

FtpControl::FtpControl(Host& s)
    : session_(s),
      replies_([this](std::string_view l) { return on_reply(l); }),
      commands_([this](std::string_view l) { return on_command(l); }) {}

void FtpControl::untouched(std::string_view what, std::string_view line, const std::string& why) {
    log::warn("ftp: passed through unchanged", {{"proxy", session_.proxy_name()},
                                                {"conn", session_.id()},
                                                {"what", what},
                                                {"line", printable(line)},
                                                {"reason", why}});
}

std::string FtpControl::on_reply(std::string_view line) {
    int code = tracker_.complete_reply_code(line);
    if (code != 227 && code != 229) return std::string(line);
    // Where the data connection really goes: the server's address as it says it (it may
    // differ from the upstream host), or its control address where it gives none.
    sockaddr_storage target{};
    sockaddr_storage server{};
    bool have_server = session_.server_peer_addr(&server);
    if (code == 227) {
        auto a = faults::parse_pasv_reply(line);
        if (!a) {
            untouched("227 reply", line, "no h1,h2,h3,h4,p1,p2 address in it");
            return std::string(line);
        }
        std::memcpy(&target, &*a, sizeof *a);
        // "0,0,0,0" (some servers behind NAT): the control connection's address is meant.
        if (is_unspecified(*a) && have_server && server.ss_family == AF_INET) {
            reinterpret_cast<sockaddr_in*>(&target)->sin_addr =
                reinterpret_cast<sockaddr_in*>(&server)->sin_addr;
        }
    } else {
        auto port = faults::parse_epsv_reply(line);
        if (!port || !have_server) {
            untouched("229 reply", line, port ? "no server address" : "no (|||port|) in it");
            return std::string(line);
        }
        target = server;
        if (target.ss_family == AF_INET)
            reinterpret_cast<sockaddr_in*>(&target)->sin_port = htons(*port);
        else
            reinterpret_cast<sockaddr_in6*>(&target)->sin6_port = htons(*port);
    }
    // Listen where the client reached us, so the address we hand it is one it can connect to.
    sockaddr_storage local{};
    if (!session_.local_addr(true, &local)) return std::string(line);
    if (code == 227 && local.ss_family != AF_INET) {
        untouched("227 reply", line, "client is on IPv6, which PASV cannot express (use EPSV)");
        return std::string(line);
    }
    sockaddr_storage ours{};
    std::string err = session_.open_ftp_data(local, target, false, &ours);
    if (!err.empty()) {
        untouched("passive data", line, err);
        return std::string(line);
    }
    log::debug("ftp: passive data via proxy",
               {{"proxy", session_.proxy_name()},
                {"conn", session_.id()},
                {"server_data", format_addr(reinterpret_cast<sockaddr*>(&target))},
                {"proxy_data", format_addr(reinterpret_cast<sockaddr*>(&ours))}});
    if (code == 227) return faults::format_pasv_reply(*reinterpret_cast<sockaddr_in*>(&ours));
    uint16_t port = ours.ss_family == AF_INET
                        ? ntohs(reinterpret_cast<sockaddr_in*>(&ours)->sin_port)
                        : ntohs(reinterpret_cast<sockaddr_in6*>(&ours)->sin6_port);
    return faults::format_epsv_reply(port);
}

std::string FtpControl::on_command(std::string_view line) {
    bool port_cmd =
        line.size() >= 5 && (line.substr(0, 5) == "PORT " || line.substr(0, 5) == "port ");
    bool eprt_cmd =
        line.size() >= 5 && (line.substr(0, 5) == "EPRT " || line.substr(0, 5) == "eprt ");
    if (!port_cmd && !eprt_cmd) return std::string(line);
    sockaddr_storage target{};
    if (port_cmd) {
        auto a = faults::parse_port_command(line);
        if (!a) {
            untouched("PORT command", line, "no h1,h2,h3,h4,p1,p2 address in it");
            return std::string(line);
        }
        std::memcpy(&target, &*a, sizeof *a);
    } else {
        auto a = faults::parse_eprt_command(line);
        if (!a) {
            untouched("EPRT command", line, "not |1|ipv4|port| or |2|ipv6|port|");
            return std::string(line);
        }
        target = *a;
    }
    // Active mode: the server connects to us, on the address it reaches us by.
    sockaddr_storage local{};
    if (!session_.local_addr(false, &local)) return std::string(line);
    if (port_cmd && local.ss_family != AF_INET) {
        untouched("PORT command", line, "server is on IPv6, which PORT cannot express");
        return std::string(line);
    }
    sockaddr_storage ours{};
    std::string err = session_.open_ftp_data(local, target, true, &ours);
    if (!err.empty()) {
        untouched("active data", line, err);
        return std::string(line);
    }
    log::debug("ftp: active data via proxy",
               {{"proxy", session_.proxy_name()},
                {"conn", session_.id()},
                {"client_data", format_addr(reinterpret_cast<sockaddr*>(&target))},
                {"proxy_data", format_addr(reinterpret_cast<sockaddr*>(&ours))}});
    if (port_cmd) return faults::format_port_command(*reinterpret_cast<sockaddr_in*>(&ours));
    return faults::format_eprt_command(reinterpret_cast<sockaddr*>(&ours));
}

}  // namespace tcpfault

#include "net/uv_util.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/ioctl.h>

#include <cstring>

namespace tcpfault {

std::string uv_error_string(int err) {
    return std::string(uv_err_name(err)) + " (" + uv_strerror(err) + ")";
}

std::string format_addr(const sockaddr* sa) {
    char host[INET6_ADDRSTRLEN] = {};
    if (sa->sa_family == AF_INET) {
        // Once per accepted connection: by hand, not inet_ntop + to_string (sprintf inside).
        auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        char buf[sizeof "255.255.255.255:65535"];
        char* o = buf;
        auto put = [&o](unsigned v) {
            char d[5];
            int k = 0;
            do d[k++] = static_cast<char>('0' + v % 10);
            while ((v /= 10) != 0);
            while (k > 0) *o++ = d[--k];
        };
        const auto* a = reinterpret_cast<const unsigned char*>(&in->sin_addr);
        for (int i = 0; i < 4; ++i) {
            put(a[i]);
            *o++ = i < 3 ? '.' : ':';
        }
        put(ntohs(in->sin_port));
        return std::string(buf, o);
    }
    if (sa->sa_family == AF_INET6) {
        auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6->sin6_port));
    }
    return "?";
}

std::string peer_name(const uv_tcp_t* tcp) {
    sockaddr_storage ss{};
    int len = sizeof ss;
    if (uv_tcp_getpeername(tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
    return format_addr(reinterpret_cast<sockaddr*>(&ss));
}

std::string sock_name(const uv_tcp_t* tcp) {
    sockaddr_storage ss{};
    int len = sizeof ss;
    if (uv_tcp_getsockname(tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
    return format_addr(reinterpret_cast<sockaddr*>(&ss));
}

uint16_t sock_port(const uv_tcp_t* tcp) {
    sockaddr_storage ss{};
    int len = sizeof ss;
    if (uv_tcp_getsockname(tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
    if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
    return 0;
}

bool numeric_addr(const config::HostPort& hp, sockaddr_storage* out) {
    std::memset(out, 0, sizeof *out);
    if (uv_ip4_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in*>(out)) == 0)
        return true;
    if (uv_ip6_addr(hp.host.c_str(), hp.port, reinterpret_cast<sockaddr_in6*>(out)) == 0)
        return true;
    return false;
}

int tcp_fd(const uv_tcp_t* tcp) {
    uv_os_fd_t fd = -1;
    if (uv_fileno(reinterpret_cast<const uv_handle_t*>(tcp), &fd) != 0) return -1;
    return fd;
}

int unsent_bytes(const uv_tcp_t* tcp) {
    int fd = tcp_fd(tcp);
    int n = 0;
    if (fd < 0 || ioctl(fd, SIOCOUTQNSD, &n) != 0) return 0;
    return n;
}

void set_linger_zero(uv_tcp_t* tcp) {
    int fd = tcp_fd(tcp);
    if (fd < 0) return;
    linger l{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

namespace {
uint16_t port_of(const sockaddr_storage& s) {
    if (s.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(s).sin_port);
    if (s.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(s).sin6_port);
    return 0;
}

bool same_ip(const sockaddr* a, const sockaddr* b) {
    if (a->sa_family != b->sa_family) return false;
    if (a->sa_family == AF_INET)
        return reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr ==
               reinterpret_cast<const sockaddr_in*>(b)->sin_addr.s_addr;
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr,
                       &reinterpret_cast<const sockaddr_in6*>(b)->sin6_addr, 16) == 0;
}

bool is_any(const sockaddr_storage& s) {
    if (s.ss_family == AF_INET)
        return reinterpret_cast<const sockaddr_in&>(s).sin_addr.s_addr == htonl(INADDR_ANY);
    if (s.ss_family == AF_INET6)
        return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6&>(s).sin6_addr);
    return false;
}

// An address of this host: loopback, or one of its interfaces' (an IPv4-mapped IPv6 address
// as the IPv4 address it carries).
bool is_local(const sockaddr_storage& in) {
    sockaddr_storage s = in;
    if (in.ss_family == AF_INET6 &&
        IN6_IS_ADDR_V4MAPPED(&reinterpret_cast<const sockaddr_in6&>(in).sin6_addr)) {
        sockaddr_in v4{};
        v4.sin_family = AF_INET;
        std::memcpy(&v4.sin_addr, reinterpret_cast<const sockaddr_in6&>(in).sin6_addr.s6_addr + 12,
                    4);
        std::memset(&s, 0, sizeof s);
        std::memcpy(&s, &v4, sizeof v4);
    }
    if (s.ss_family == AF_INET &&
        (ntohl(reinterpret_cast<const sockaddr_in&>(s).sin_addr.s_addr) >> 24) == 127)
        return true;
    if (s.ss_family == AF_INET6 &&
        IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6&>(s).sin6_addr))
        return true;
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) return false;
    bool found = false;
    for (ifaddrs* i = list; i != nullptr && !found; i = i->ifa_next)
        found =
            i->ifa_addr != nullptr && same_ip(i->ifa_addr, reinterpret_cast<const sockaddr*>(&s));
    freeifaddrs(list);
    return found;
}
}  // namespace

bool same_endpoint_or_wildcard(const sockaddr_storage& listener, const sockaddr_storage& target) {
    uint16_t port = port_of(listener);
    if (port == 0 || port != port_of(target)) return false;
    if (is_any(listener)) return is_local(target);
    return same_ip(reinterpret_cast<const sockaddr*>(&listener),
                   reinterpret_cast<const sockaddr*>(&target));
}

}  // namespace tcpfault

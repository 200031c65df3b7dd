// Thin helpers over libuv and the sockets API that several proxy/ files need.
#pragma once

#include <sys/socket.h>
#include <uv.h>

#include <string>

#include "config/config.hpp"

namespace tcpfault {

// "ECONNRESET (connection reset by peer)"
std::string uv_error_string(int err);

// "127.0.0.1:8080" / "[::1]:8080"; "?" when the family is unknown.
std::string format_addr(const sockaddr* sa);
std::string peer_name(const uv_tcp_t* tcp);
std::string sock_name(const uv_tcp_t* tcp);
uint16_t sock_port(const uv_tcp_t* tcp);

// Fills `out` when `hp.host` is an IPv4/IPv6 literal; false for names that need DNS.
bool numeric_addr(const config::HostPort& hp, sockaddr_storage* out);

// SO_LINGER {1,0}: the next close sends RST and discards unsent data. Unlike
// uv_tcp_close_reset this also works after a shutdown(), which FIN-then-RST needs.
void set_linger_zero(uv_tcp_t* tcp);

int tcp_fd(const uv_tcp_t* tcp);

// A connection to `target` would reach a socket listening on `listener`: the same address and
// port, or the same port on a wildcard listener and an address of this host.
bool same_endpoint_or_wildcard(const sockaddr_storage& listener, const sockaddr_storage& target);

// Bytes written to the socket but not yet sent (Linux SIOCOUTQNSD); 0 when unknown.
int unsent_bytes(const uv_tcp_t* tcp);

}  // namespace tcpfault

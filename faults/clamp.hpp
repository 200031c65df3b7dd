// clamp: tiny socket buffers, small advertised windows and segments, short reads: partial
// writes and zero-window stalls. On the client and/or server socket: SO_SNDBUF/SO_RCVBUF
// (`sndbuf`, `rcvbuf`; the kernel doubles them and enforces minimums, the effective values are
// logged), TCP_WINDOW_CLAMP (`window`), TCP_MAXSEG (`mss`, server side, set before connect()
// when the rule acts at accept, since the MSS is negotiated in the handshake) and a cap on
// each read (`read_size`).
#pragma once

#include <cstdint>

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct ClampFault {
    static constexpr std::string_view kName = "clamp";
    static constexpr Scope kScope = Scope::connection;
    static constexpr std::array kParams{std::string_view{"side"},   std::string_view{"sndbuf"},
                                        std::string_view{"rcvbuf"}, std::string_view{"window"},
                                        std::string_view{"mss"},    std::string_view{"read_size"}};

    config::Target side = config::Target::both;
    std::optional<uint64_t> sndbuf;
    std::optional<uint64_t> rcvbuf;
    std::optional<uint64_t> window;
    std::optional<uint64_t> mss;
    std::optional<uint64_t> read_size;

    static std::optional<ClampFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
    // The socket options of one side on `fd` (also before connect(), for the MSS).
    void configure(int fd, Side s, const LogIdentity& who) const;
};

}  // namespace tcpfault::faults

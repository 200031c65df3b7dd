// Dropping packets below the socket: the interface the packet faults (blackhole, loss,
// drop_syn) act through, and net/nft implements with nftables. A drop lasts exactly as long as
// its handle: whoever holds the handle (a session, a proxy) ends the drop by letting it go, so
// nothing outlives the connection or the rule that asked for it.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tcpfault {

class PacketFilter {
  public:
    // The packets of one direction of one TCP connection, by exact addresses and ports
    // (IPv4 or IPv6; an IPv4-mapped IPv6 address stands for its IPv4 address).
    struct Flow {
        sockaddr_storage src{};
        sockaddr_storage dst{};
    };
    static constexpr uint32_t kAll = 10000;  // per_10000 that drops every packet

    class Handle {
      public:
        virtual ~Handle() = default;
        // How many of every 10000 packets it drops (kAll: all of them).
        virtual uint32_t per_10000() const = 0;
    };

    // Drops `per_10000` of every 10000 packets of each flow, chosen at random per packet,
    // while the handle lives. Null, with `error` set, when the filter cannot.
    virtual std::unique_ptr<Handle> drop(const std::vector<Flow>& flows, uint32_t per_10000,
                                         std::string* error) = 0;
    // Drops the SYNs (new connections) sent to a listening address while the handle lives;
    // the wildcard address (0.0.0.0, ::) stands for every local address of its family (`::`:
    // IPv4 too, as a dual-stack socket accepts both).
    virtual std::unique_ptr<Handle> drop_syn(const sockaddr_storage& listen,
                                             std::string* error) = 0;

  protected:
    ~PacketFilter() = default;
};

}  // namespace tcpfault

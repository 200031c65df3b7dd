// The packet filter on nftables, through libnftables (never the `nft` program).
//
// One table per process, `inet tcpfault_<pid>_<random>`, created with `flags owner`: the
// kernel deletes it, with everything in it, when the netlink socket that made it closes, so a
// crash or `kill -9` leaves nothing behind. Only that socket may change the table.
//
// What is dropped is a set element, never a rule per connection: one set per drop rate and
// family holds the exact 4-tuples (source address . port . destination address . port) of the
// flows, and one rule per set (in the input and output chains) drops the packets that match,
// every one or `numgen random mod 10000 < N` of them. So the rule count depends only on the
// distinct rates in use (4 rules each, plus 5), never on the number of connections; a packet
// costs one hash lookup per rate; and adding or removing a flow is one small transaction whose
// cost does not grow with the number of flows (a per-flow rule would need its handle, which
// libnftables only echoes after dumping the whole ruleset: milliseconds per rule at a few
// thousand rules). Chains and sets are created on first use, so a process that never drops a
// packet adds no hook to the packet path.
//
// Input-chain drops stand for packets lost in the network: the peer's TCP sent them and
// retransmits. A packet this host sends to a local address (loopback, including its own
// addresses) is dropped on input only; one sent to another host can only be dropped on output,
// where the kernel reports it to our own TCP as a failed transmission (it retries with the
// same backoff).
//
// Thread-safe: sessions on every worker loop add and remove flows (one mutex; each call is one
// netlink round trip, about 0.15 ms).
#pragma once

#include <memory>
#include <string>

#include "net/packet_filter.hpp"

namespace tcpfault {

class NftFilter final : public PacketFilter {
  public:
    // Creates this process's table. Null, with `error` set to nftables' own reason (without
    // CAP_NET_ADMIN: "Operation not permitted"), when it cannot.
    static std::unique_ptr<NftFilter> open(std::string* error);
    ~NftFilter();
    NftFilter(const NftFilter&) = delete;
    NftFilter& operator=(const NftFilter&) = delete;

    // The table's name (family inet).
    const std::string& table() const;

    std::unique_ptr<Handle> drop(const std::vector<Flow>& flows, uint32_t per_10000,
                                 std::string* error) override;
    std::unique_ptr<Handle> drop_syn(const sockaddr_storage& listen, std::string* error) override;

    struct State;  // shared with the handles, which may outlive this object

  private:
    explicit NftFilter(std::shared_ptr<State> s) : state_(std::move(s)) {}
    std::shared_ptr<State> state_;
};

}  // namespace tcpfault

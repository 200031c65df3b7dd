#include "net/nft.hpp"

#include <arpa/inet.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <utility>

#include "observe/log.hpp"

namespace tcpfault {

namespace {

// An address as nftables reads it, with the family it belongs to ('4' or '6'); an
// IPv4-mapped IPv6 address is the IPv4 address it carries (that is what is on the wire).
struct Addr {
    char family = 0;
    std::string text;
    uint16_t port = 0;
    bool any = false;  // the wildcard address
};

bool to_addr(const sockaddr_storage& ss, Addr* out) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
        *out = {'4', buf, ntohs(a->sin_port), a->sin_addr.s_addr == htonl(INADDR_ANY)};
        return true;
    }
    if (ss.ss_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
        uint16_t port = ntohs(a->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
            in_addr v4;
            std::memcpy(&v4, a->sin6_addr.s6_addr + 12, sizeof v4);
            inet_ntop(AF_INET, &v4, buf, sizeof buf);
            *out = {'4', buf, port, v4.s_addr == htonl(INADDR_ANY)};
            return true;
        }
        inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
        *out = {'6', buf, port, IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)};
        return true;
    }
    return false;
}

// The first line of nftables' error output ("Error: Could not process rule: Operation not
// permitted"), without the "Error: " prefix and the command echoed after it.
std::string first_line(const char* text) {
    std::string s = text != nullptr ? text : "";
    s = s.substr(0, s.find('\n'));
    for (std::string_view p : {"Error: ", "Could not process rule: "})
        if (s.rfind(p, 0) == 0) s.erase(0, p.size());
    return s.empty() ? "nftables failed" : s;
}

// CAP_NET_ADMIN is among this process's effective capabilities (in its user namespace),
// raised there from the permitted set if need be: the image's binary carries it as a permitted
// file capability only (`setcap cap_net_admin=p`), so a container started without it still
// runs, and one given it (`--cap-add NET_ADMIN`) has it although it runs as a non-root user.
// Asked before libnftables is: without the capability, libnftables prints to stderr itself.
bool has_net_admin() {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
    if (syscall(SYS_capget, &hdr, data) != 0) return true;  // unknown: let nftables tell
    const unsigned word = CAP_NET_ADMIN / 32;
    const uint32_t bit = 1u << (CAP_NET_ADMIN % 32);
    if ((data[word].effective & bit) != 0) return true;
    if ((data[word].permitted & bit) == 0) return false;
    data[word].effective |= bit;
    return syscall(SYS_capset, &hdr, data) == 0;
}

uint64_t elapsed_us(std::chrono::steady_clock::time_point t0) {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
            .count());
}

// One set element (set name, element text): the unit the handles count.
using Element = std::pair<std::string, std::string>;

}  // namespace

struct NftFilter::State {
    std::mutex mu;
    nft_ctx* ctx = nullptr;
    std::string table;
    bool chains_ready = false;
    bool syn_ready = false;
    std::set<uint32_t> rates_ready;
    // Handles holding each element: it is in the kernel while the count is above 0 (two rules
    // may drop the same flow at the same rate).
    std::map<Element, int> held;

    ~State() {
        // Closes the netlink socket that owns the table: the kernel deletes it.
        if (ctx != nullptr) nft_ctx_free(ctx);
    }

    // Runs commands as one transaction (all or nothing); "" or nftables' error.
    std::string run(const std::string& cmds) {
        auto t0 = std::chrono::steady_clock::now();
        int rc = nft_run_cmd_from_buffer(ctx, cmds.c_str());
        std::string err = rc == 0 ? "" : first_line(nft_ctx_get_error_buffer(ctx));
        log::debug("nftables", {{"table", table},
                                {"commands", cmds.substr(0, cmds.find('\n'))},
                                {"lines", std::count(cmds.begin(), cmds.end(), '\n')},
                                {"us", elapsed_us(t0)},
                                {"error", err}});
        return err;
    }

    std::string chain_setup() const {
        const std::string t = "inet " + table;
        return "add chain " + t +
               " in { type filter hook input priority filter; policy accept; }\n"
               "add chain " +
               t +
               " out { type filter hook output priority filter; policy accept; }\n"
               // Packets to a local address are seen again on input, where they are dropped.
               "add rule " +
               t + " out meta oiftype loopback accept\n";
    }

    std::string syn_setup() const {
        const std::string t = "inet " + table;
        const std::string syn = " tcp flags & (syn | ack) == syn ";
        return "add set " + t + " syn4 { type ipv4_addr . inet_service; }\n" + "add set " + t +
               " syn6 { type ipv6_addr . inet_service; }\n" + "add set " + t +
               " synport4 { type inet_service; }\n" + "add set " + t +
               " synport { type inet_service; }\n" + "add rule " + t + " in" + syn +
               "ip daddr . tcp dport @syn4 drop\n" + "add rule " + t + " in" + syn +
               "ip6 daddr . tcp dport @syn6 drop\n" + "add rule " + t + " in" + syn +
               "meta nfproto ipv4 tcp dport @synport4 drop\n" + "add rule " + t + " in" + syn +
               "tcp dport @synport drop\n";
    }

    std::string rate_setup(uint32_t n) const {
        const std::string t = "inet " + table;
        const std::string rate = std::to_string(n);
        const std::string pick =
            n >= PacketFilter::kAll ? "" : " numgen random mod 10000 < " + rate;
        std::string out;
        for (char fam : {'4', '6'}) {
            const std::string set = std::string("drop") + fam + "_" + rate;
            const std::string ip = fam == '4' ? "ip" : "ip6";
            const std::string type = fam == '4' ? "ipv4_addr" : "ipv6_addr";
            out += "add set " + t + " " + set + " { type " + type + " . inet_service . " + type +
                   " . inet_service; }\n";
            for (const char* chain : {"in", "out"})
                out += "add rule " + t + " " + chain + " " + ip + " saddr . tcp sport . " + ip +
                       " daddr . tcp dport @" + set + pick + " drop\n";
        }
        return out;
    }

    // Adds the elements (those not already held), creating what they need first, in one
    // transaction. "" or the error (then nothing changed).
    std::string add(const std::vector<Element>& elems, uint32_t rate, bool syn) {
        std::lock_guard<std::mutex> lock(mu);
        std::string cmds;
        if (!chains_ready) cmds += chain_setup();
        if (syn && !syn_ready) cmds += syn_setup();
        if (!syn && rates_ready.count(rate) == 0) cmds += rate_setup(rate);
        for (const auto& e : elems)
            if (held[e]++ == 0)
                cmds += "add element inet " + table + " " + e.first + " { " + e.second + " }\n";
        if (cmds.empty()) return "";
        std::string err = run(cmds);
        if (!err.empty()) {
            for (const auto& e : elems)
                if (--held[e] == 0) held.erase(e);
            return err;
        }
        chains_ready = true;
        if (syn)
            syn_ready = true;
        else
            rates_ready.insert(rate);
        return "";
    }

    void remove(const std::vector<Element>& elems) {
        std::lock_guard<std::mutex> lock(mu);
        std::string cmds;
        for (const auto& e : elems) {
            auto it = held.find(e);
            if (it == held.end() || --it->second > 0) continue;
            held.erase(it);
            cmds += "delete element inet " + table + " " + e.first + " { " + e.second + " }\n";
        }
        if (cmds.empty()) return;
        std::string err = run(cmds);
        // Only this process's socket can change the table, so this is not expected; the
        // elements go with the table when the process exits.
        if (!err.empty())
            log::warn("cannot remove a packet drop", {{"table", table}, {"error", err}});
    }
};

namespace {
class NftHandle final : public PacketFilter::Handle {
  public:
    NftHandle(std::shared_ptr<NftFilter::State> s, std::vector<Element> elems, uint32_t rate)
        : state_(std::move(s)), elems_(std::move(elems)), rate_(rate) {}
    ~NftHandle() override { state_->remove(elems_); }
    uint32_t per_10000() const override { return rate_; }

  private:
    std::shared_ptr<NftFilter::State> state_;
    std::vector<Element> elems_;
    uint32_t rate_;
};
}  // namespace

std::unique_ptr<NftFilter> NftFilter::open(std::string* error) {
    if (!has_net_admin()) {
        *error = "CAP_NET_ADMIN is not among this process's effective capabilities";
        return nullptr;
    }
    auto s = std::make_shared<State>();
    s->ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    if (s->ctx == nullptr) {
        *error = "cannot create an nftables context";
        return nullptr;
    }
    nft_ctx_buffer_output(s->ctx);
    nft_ctx_buffer_error(s->ctx);
    std::random_device rd;
    char suffix[16];
    std::snprintf(suffix, sizeof suffix, "%08x", static_cast<unsigned>(rd()));
    // Unique per process, also where several containers (each its own PID 1) share a network
    // namespace, as sidecars in one pod do.
    s->table = "tcpfault_" + std::to_string(getpid()) + "_" + suffix;
    std::string err = s->run("add table inet " + s->table + " { flags owner; }\n");
    if (!err.empty()) {
        *error = "nftables: " + err;
        return nullptr;
    }
    return std::unique_ptr<NftFilter>(new NftFilter(std::move(s)));
}

NftFilter::~NftFilter() = default;

const std::string& NftFilter::table() const {
    return state_->table;
}

std::unique_ptr<PacketFilter::Handle> NftFilter::drop(const std::vector<Flow>& flows,
                                                      uint32_t per_10000, std::string* error) {
    if (per_10000 == 0 || per_10000 > kAll) {
        *error = "drop rate out of range";
        return nullptr;
    }
    std::vector<Element> elems;
    for (const Flow& f : flows) {
        Addr src, dst;
        if (!to_addr(f.src, &src) || !to_addr(f.dst, &dst) || src.family != dst.family) {
            *error = "not a TCP/IP flow";
            return nullptr;
        }
        elems.emplace_back(std::string("drop") + src.family + "_" + std::to_string(per_10000),
                           src.text + " . " + std::to_string(src.port) + " . " + dst.text + " . " +
                               std::to_string(dst.port));
    }
    if (std::string err = state_->add(elems, per_10000, false); !err.empty()) {
        *error = "nftables: " + err;
        return nullptr;
    }
    return std::make_unique<NftHandle>(state_, std::move(elems), per_10000);
}

std::unique_ptr<PacketFilter::Handle> NftFilter::drop_syn(const sockaddr_storage& listen,
                                                          std::string* error) {
    Addr a;
    if (!to_addr(listen, &a)) {
        *error = "not an IP address";
        return nullptr;
    }
    std::string port = std::to_string(a.port);
    Element e = a.any ? Element{a.family == '4' ? "synport4" : "synport", port}
                      : Element{a.family == '4' ? "syn4" : "syn6", a.text + " . " + port};
    std::vector<Element> elems{e};
    if (std::string err = state_->add(elems, kAll, true); !err.empty()) {
        *error = "nftables: " + err;
        return nullptr;
    }
    return std::make_unique<NftHandle>(state_, std::move(elems), kAll);
}

}  // namespace tcpfault

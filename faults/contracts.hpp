// The few small contracts a fault is written against. A fault is one of three kinds:
//  - a Stage in one direction's byte path (latency, bandwidth, slice, stall, slow_close, and
//    the stages idle installs): it may stamp, hold, pace, cut into segments or drop bytes, and
//    hold or release the stream's end;
//  - an action on one connection (reset, close, idle, clamp), through the Connection interface:
//    end it with a named ending per side, add stages, set socket options;
//  - a proxy-wide fault (cap, refuse, restart, drop_syn), through ProxyControl;
//  - below the socket (blackhole, loss): packets of the connection dropped through its
//    PacketFilter (net/packet_filter.hpp), the drop's handle kept by the connection.
// The proxy layer (proxy/session, proxy/pipe, proxy/proxy_server) implements Connection and
// ProxyControl and runs the stages; faults/ never sees a socket handle or an event loop.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "config/types.hpp"
#include "faults/rng.hpp"
#include "net/buffer_pool.hpp"
#include "net/ending.hpp"
#include "net/packet_filter.hpp"

namespace tcpfault::faults {

enum class Side : uint8_t { client, server };

struct Endings {
    Ending client = Ending::none;
    Ending server = Ending::none;
    Ending& of(Side s) { return s == Side::client ? client : server; }
    Ending of(Side s) const { return s == Side::client ? client : server; }
};

// Bytes a stage holds in a direction's queue, in order. A big read keeps its own buffer (taken
// over from the read, not copied: a 256 KiB copy per read halved a 0 ms latency rule's
// throughput); a small one is copied, so a few bytes never pin a whole read buffer.
struct Held {
    Chunk chunk;  // the read's buffer, when taken over; `begin` points into it
    const char* begin = nullptr;
    std::string copy;  // the bytes otherwise
    size_t len = 0;
    size_t off = 0;           // already written
    uint64_t release_us = 0;  // not before (uv_hrtime µs); 0 = at once

    const char* data() const { return chunk ? begin : copy.data(); }
    size_t left() const { return len - off; }
};

class Connection;

// What every stage callback gets: the time (µs, uv_hrtime), the connection's seeded RNG, and
// the connection itself (a stage may end it).
struct StageContext {
    uint64_t now_us;
    SplitMix64& rng;
    Connection& conn;
};

// A stage in one direction's byte path. A pipe with no stage writes straight through.
class Stage {
  public:
    explicit Stage(std::string rule) : rule_(std::move(rule)) {}
    virtual ~Stage() = default;
    Stage(const Stage&) = delete;
    Stage& operator=(const Stage&) = delete;

    // The rule that installed it: disabling or deleting that rule lifts the stage.
    const std::string& rule() const { return rule_; }

    // It may hold or pace bytes: the pipe then queues every chunk instead of writing it
    // straight through.
    virtual bool shapes() const { return false; }
    // Stop reading the source altogether (TCP backpressure on the peer).
    virtual bool stops_reading() const { return false; }
    // Read on and discard what arrives, even while the sink is full (a blackhole).
    virtual bool drops_input() const { return false; }
    // Bytes read from the source: pass them on or drop them.
    enum class Input { pass, drop };
    virtual Input on_data(size_t /*n*/, const StageContext&) { return Input::pass; }
    // The source's FIN or RST arrived (once per stream).
    virtual void on_end(const StageContext&) {}
    // Keep the source's FIN or RST here until this stage is gone, rather than passing it on
    // after the bytes before it.
    virtual bool holds_end() const { return false; }

    // A chunk enters the queue (latency stamps its release time).
    virtual void on_enqueue(Held&, const StageContext&) {}
    // How much of the head of the queue may be written now. `allow` 0 blocks until `wake_us`
    // (0: until the stage changes, e.g. is lifted); `own_segment` sends it as a segment of
    // its own (no merging with what follows).
    struct Gate {
        size_t allow = SIZE_MAX;
        uint64_t wake_us = 0;
        bool own_segment = false;
    };
    virtual Gate gate(const Held&, const StageContext&) { return {}; }
    virtual void on_sent(size_t /*n*/, const StageContext&) {}
    // When the source's FIN, already behind every byte, may pass (0: now).
    virtual uint64_t fin_release_us(uint64_t fin_arrival_us) const {
        (void)fin_arrival_us;
        return 0;
    }
    // Bytes, or the end, held here never move on by themselves (an endless stall, a zero rate):
    // the session then watches whether both peers are gone.
    virtual bool endless() const { return false; }

    // Timed work of the stage itself (0: none). on_wake runs at or after wake_us; it may end
    // the connection or mark the stage finished (it is then removed, never from inside its own
    // callback).
    virtual uint64_t wake_us() const { return 0; }
    virtual void on_wake(const StageContext&) {}
    bool finished() const { return finished_; }

  protected:
    void finish() { finished_ = true; }

  private:
    std::string rule_;
    bool finished_ = false;
};

// Who a connection is, for log lines.
struct LogIdentity {
    std::string_view proxy;
    uint64_t conn = 0;
};

// What a fault that acts on one connection may do to it.
class Connection {
  public:
    virtual LogIdentity identity() const = 0;
    // The one way a connection ends: each side gets its ending (Ending::none: `fin`). A second
    // call while the connection is already ending is logged and counted as suppressed when it
    // comes from a rule; stronger endings still override weaker ones per side.
    virtual void end(const Endings& e, std::string_view rule) = 0;
    virtual bool ending() const = 0;
    // Installs a stage on one direction (upstream or downstream).
    virtual void add_stage(config::Direction d, std::unique_ptr<Stage> s) = 0;
    // The socket of one side (-1 when there is none) and its read size cap (clamp).
    virtual int socket_fd(Side s) = 0;
    virtual void set_max_read(Side s, size_t n) = 0;
    virtual void log_event(std::string_view event, std::string_view rule,
                           std::string_view detail) = 0;
    // The clock stages run on (µs, uv_hrtime).
    virtual uint64_t now_us() const = 0;

    // Below the socket. The local and peer address of a side's socket (false: it has none).
    virtual bool addresses(Side s, sockaddr_storage* local, sockaddr_storage* peer) = 0;
    // Bytes written toward a side that its peer has not acknowledged yet (in our queue or the
    // kernel's).
    virtual uint64_t unacknowledged(Side s) = 0;
    // The packet filter (null when this process has none: no CAP_NET_ADMIN; rules that need
    // it are rejected before they reach a connection).
    virtual PacketFilter* packet_filter() = 0;
    // Keeps a drop for `rule` until release_packet_drops(rule), until the rule is lifted, or
    // until the connection starts ending (first thing, so its FIN or RST gets through).
    virtual void keep_packet_drop(std::string_view rule,
                                  std::unique_ptr<PacketFilter::Handle> h) = 0;
    virtual void release_packet_drops(std::string_view rule) = 0;

  protected:
    ~Connection() = default;
};

// What a proxy-wide fault may do to its proxy.
class ProxyControl {
  public:
    // Resets every open connection now and refuses new ones for `downtime`.
    virtual void restart(config::Duration downtime) = 0;
    // Drops the SYNs sent to the listening address while on (drop_syn): connect() times out.
    virtual void set_syn_drop(bool on) = 0;

  protected:
    ~ProxyControl() = default;
};

}  // namespace tcpfault::faults

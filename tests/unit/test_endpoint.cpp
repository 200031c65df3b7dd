// The socket state machine (net/endpoint): every close kind from every state, on a real
// loopback TCP connection driven by a libuv loop in this thread, checked from the peer's side
// (what recv() returns) and from the endpoint's (its events, exactly one close callback, no
// event after it). Under ASan/UBSan a use after free or a callback into a freed object fails.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>

#include "net/deadlines.hpp"
#include "net/endpoint.hpp"

using namespace tcpfault;

namespace {

struct Recorder : Endpoint::Events, Deadlines::Owner {
    int handles = 0;
    int opened = 0;
    int closed = 0;
    int after_close = 0;  // any event after the close callback: must stay 0
    std::string data;
    int fin_follows = 0;  // reads reported with the peer's FIN right behind them
    bool eof = false;
    int read_error = 0;
    int write_error = 0;
    bool fin_sent = false;
    size_t discarded = 0;

    void note() {
        if (closed > 0) ++after_close;
    }
    void on_opened(Endpoint&) override {
        ++opened;
        ++handles;
    }
    void on_data(Endpoint&, Chunk& c, size_t n, bool fin) override {
        note();
        CHECK_FALSE(eof);  // no bytes after the FIN
        data.append(c.get(), n);
        fin_follows += fin ? 1 : 0;
    }
    void on_eof(Endpoint&) override {
        note();
        CHECK_FALSE(eof);  // once
        eof = true;
    }
    void on_read_error(Endpoint&, int err) override {
        note();
        read_error = err;
    }
    void on_write_done(Endpoint&) override { note(); }
    void on_write_error(Endpoint&, int err) override {
        note();
        write_error = err;
    }
    void on_fin_sent(Endpoint&) override {
        note();
        fin_sent = true;
    }
    void on_discarded(Endpoint&, size_t n) override {
        note();
        discarded += n;
    }
    void on_closed(Endpoint&) override {
        ++closed;
        --handles;
    }
    void handle_opened() override { ++handles; }
    void handle_closed() override { --handles; }
};

// A loop, an endpoint accepted from a listener, and the raw peer socket (non-blocking).
struct Pair {
    uv_loop_t loop{};
    uv_tcp_t listener{};
    Recorder rec;
    Deadlines deadlines{&loop, rec};
    Endpoint ep{Endpoint::Side::client, rec, deadlines};
    int peer = -1;

    Pair() {
        uv_loop_init(&loop);
        uv_tcp_init(&loop, &listener);
        listener.data = this;
        sockaddr_in a{};
        uv_ip4_addr("127.0.0.1", 0, &a);
        REQUIRE(uv_tcp_bind(&listener, reinterpret_cast<sockaddr*>(&a), 0) == 0);
        REQUIRE(uv_listen(reinterpret_cast<uv_stream_t*>(&listener), 8, on_conn) == 0);
        int len = sizeof a;
        uv_tcp_getsockname(&listener, reinterpret_cast<sockaddr*>(&a), &len);
        peer = socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(connect(peer, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        fcntl(peer, F_SETFL, fcntl(peer, F_GETFL) | O_NONBLOCK);
        REQUIRE(run_until([&] { return ep.open(); }));
        ep.start_reading();
    }
    ~Pair() {
        if (peer >= 0) close(peer);
        ep.end(Ending::reset_now);
        deadlines.close();
        uv_close(reinterpret_cast<uv_handle_t*>(&listener), nullptr);
        run_until([&] { return rec.handles == 0; });
        uv_run(&loop, UV_RUN_NOWAIT);
        CHECK(uv_loop_close(&loop) == 0);
        CHECK(rec.after_close == 0);
        CHECK(rec.closed <= 1);
    }
    static void on_conn(uv_stream_t* l, int status) {
        REQUIRE(status == 0);
        auto* self = static_cast<Pair*>(l->data);
        REQUIRE(self->ep.init(&self->loop) == 0);
        REQUIRE(uv_accept(l, self->ep.stream()) == 0);
    }
    // Runs the loop until `done` or the deadline (seconds).
    bool run_until(const std::function<bool()>& done, double seconds = 5) {
        auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (!done()) {
            if (std::chrono::steady_clock::now() > end) return false;
            uv_run(&loop, UV_RUN_NOWAIT);
            usleep(200);
        }
        return true;
    }
    // What the peer reads: bytes, then 0 (EOF) or an errno; "" and EAGAIN when nothing yet.
    struct PeerRead {
        std::string bytes;
        bool eof = false;
        int err = 0;
    };
    PeerRead peer_read_all(double seconds = 5) {
        PeerRead r;
        char buf[65536];
        run_until(
            [&] {
                for (;;) {
                    ssize_t n = recv(peer, buf, sizeof buf, 0);
                    if (n > 0) {
                        r.bytes.append(buf, static_cast<size_t>(n));
                        continue;
                    }
                    if (n == 0) {
                        r.eof = true;
                        return true;
                    }
                    if (errno == EAGAIN) return false;
                    r.err = errno;
                    return true;
                }
            },
            seconds);
        return r;
    }
    bool closed() const { return ep.state() == Endpoint::State::closed; }
};

const Ending kKinds[] = {Ending::fin,   Ending::fin_then_discard, Ending::fin_then_reset,
                         Ending::reset, Ending::reset_now,        Ending::close_now};

}  // namespace

TEST_CASE("endpoint: each close kind from open, as the peer sees it") {
    for (Ending k : kKinds) {
        CAPTURE(ending_name(k));
        Pair p;
        REQUIRE(p.ep.write("hello", 5, nullptr) == 0);
        REQUIRE(p.ep.end(k));
        CHECK(p.ep.state() != Endpoint::State::open);
        auto r = p.peer_read_all();
        switch (k) {
            case Ending::fin:
            case Ending::fin_then_discard:
            case Ending::fin_then_reset:
            case Ending::close_now:
                // Every byte, then EOF: never a reset first.
                CHECK(r.bytes == "hello");
                CHECK(r.eof);
                break;
            case Ending::reset:
                // Acknowledged before the RST: the bytes are there, then ECONNRESET.
                CHECK(r.bytes == "hello");
                CHECK(r.err == ECONNRESET);
                break;
            default:  // reset_now
                CHECK(r.err == ECONNRESET);
                break;
        }
        if (k == Ending::fin || k == Ending::fin_then_discard) {
            // Still reading (and dropping) what the peer sends, until its FIN.
            CHECK_FALSE(p.closed());
            CHECK(send(p.peer, "more", 4, MSG_NOSIGNAL) == 4);
            CHECK(p.run_until([&] { return p.rec.discarded == 4; }));
            CHECK_FALSE(p.closed());
            shutdown(p.peer, SHUT_WR);
        }
        CHECK(p.run_until([&] { return p.closed(); }));
        CHECK(p.rec.closed == 1);
        CHECK(p.rec.data.empty());  // nothing read while ending is reported as data
    }
}

TEST_CASE("endpoint: fin_then_reset answers the peer's next segment with RST, after EOF") {
    for (int i = 0; i < 20; ++i) {
        Pair p;
        REQUIRE(p.ep.end(Ending::fin_then_reset));
        CHECK(p.run_until([&] { return p.closed(); }));
        auto r = p.peer_read_all();
        CHECK(r.eof);  // EOF first
        // The peer writes on: the first write is accepted by its kernel, the RST comes back.
        send(p.peer, "x", 1, MSG_NOSIGNAL);
        bool reset = p.run_until([&] {
            char c;
            ssize_t n = recv(p.peer, &c, 1, 0);
            if (n < 0 && errno == ECONNRESET) return true;
            if (n < 0 && errno == EPIPE) return true;
            if (send(p.peer, "x", 1, MSG_NOSIGNAL) < 0 && (errno == EPIPE || errno == ECONNRESET))
                return true;
            return false;
        });
        CHECK(reset);
    }
}

TEST_CASE("endpoint: fin_then_discard leaves the peer half-open until it closes") {
    Pair p;
    REQUIRE(p.ep.end(Ending::fin_then_discard));
    auto r = p.peer_read_all();
    CHECK(r.eof);
    for (int i = 0; i < 5; ++i) CHECK(send(p.peer, "data", 4, MSG_NOSIGNAL) == 4);
    CHECK(p.run_until([&] { return p.rec.discarded == 20; }));
    // Beyond the graceful ending's 2 s linger, it is still there.
    p.run_until([] { return false; }, 2.5);
    CHECK_FALSE(p.closed());
    shutdown(p.peer, SHUT_WR);
    CHECK(p.run_until([&] { return p.closed(); }));
}

TEST_CASE("endpoint: a graceful fin waits 2 s of silence for the peer's FIN, then closes") {
    Pair p;
    REQUIRE(p.ep.end(Ending::fin));
    auto t0 = std::chrono::steady_clock::now();
    CHECK(p.run_until([&] { return p.closed(); }, 6));
    double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(took >= 1.9);
    CHECK(took < 4.0);
    auto r = p.peer_read_all();
    CHECK(r.eof);
}

TEST_CASE("endpoint: end() is idempotent; stronger kinds take over, weaker are refused") {
    Pair p;
    CHECK(p.ep.end(Ending::fin));
    CHECK_FALSE(p.ep.end(Ending::fin));
    CHECK(p.ep.end(Ending::fin_then_discard));
    CHECK_FALSE(p.ep.end(Ending::fin));
    CHECK_FALSE(p.ep.end(Ending::none));  // none means fin
    CHECK(p.ep.ending() == Ending::fin_then_discard);
    CHECK(p.ep.end(Ending::reset_now));
    CHECK_FALSE(p.ep.end(Ending::reset_now));
    CHECK_FALSE(p.ep.end(Ending::fin));
    CHECK(p.run_until([&] { return p.closed(); }));
    CHECK_FALSE(p.ep.end(Ending::reset_now));  // closed: nothing to do
    CHECK(p.rec.closed == 1);
    auto r = p.peer_read_all();
    CHECK((r.err == ECONNRESET || r.eof));
}

TEST_CASE("endpoint: close kinds from half-closed states") {
    for (Ending k : kKinds) {
        for (int half = 0; half < 3; ++half) {  // peer FIN first, our FIN first, both
            CAPTURE(ending_name(k));
            CAPTURE(half);
            Pair p;
            if (half != 1) {
                shutdown(p.peer, SHUT_WR);
                REQUIRE(p.run_until([&] { return p.rec.eof; }));
                CHECK(p.ep.peer_fin());
            }
            if (half != 0) {
                REQUIRE(p.ep.shutdown_write() == 0);
                REQUIRE(p.run_until([&] { return p.rec.fin_sent; }));
                CHECK(p.peer_read_all().eof);
            }
            REQUIRE(p.ep.end(k));
            if (half == 1 && k == Ending::fin_then_discard) {
                CHECK_FALSE(p.closed());  // half-open: the peer has not closed
                shutdown(p.peer, SHUT_WR);
            }
            if (half == 1 && k == Ending::fin) shutdown(p.peer, SHUT_WR);
            CHECK(p.run_until([&] { return p.closed(); }));
            CHECK(p.rec.closed == 1);
        }
    }
}

TEST_CASE("endpoint: a peer that never reads is reset once 3 s pass without progress") {
    Pair p;
    int small = 4096;
    setsockopt(p.peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    std::string block(1 << 20, 'x');
    for (int i = 0; i < 8; ++i) REQUIRE(p.ep.write(block.data(), block.size(), nullptr) == 0);
    CHECK(p.ep.queued_bytes() > 0);
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(p.ep.end(Ending::reset));
    CHECK(p.run_until([&] { return p.closed(); }, 8));
    double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(took >= 2.8);
    CHECK(took < 5.0);
    CHECK(p.rec.closed == 1);
}

TEST_CASE(
    "endpoint: writes refused once the FIN is asked; queued writes never call back after "
    "a reset") {
    Pair p;
    int small = 4096;
    setsockopt(p.peer, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    std::string block(1 << 20, 'y');
    for (int i = 0; i < 4; ++i) REQUIRE(p.ep.write(block.data(), block.size(), nullptr) == 0);
    REQUIRE(p.ep.shutdown_write() == 0);
    CHECK(p.ep.write("z", 1, nullptr) == UV_EPIPE);
    REQUIRE(p.ep.end(Ending::reset_now));
    CHECK(p.run_until([&] { return p.closed(); }));
    CHECK(p.rec.write_error == 0);  // the queued writes came back cancelled, unreported
}

TEST_CASE(
    "deadlines: due clients are told once per pass, never from set(), and never re-armed "
    "for 0 ms") {
    uv_loop_t loop;
    uv_loop_init(&loop);
    Recorder owner;
    Deadlines d(&loop, owner);
    struct C : Deadlines::Client {
        Deadlines* d;
        int calls = 0;
        bool again = false;
        void on_deadline(uint64_t now) override {
            ++calls;
            if (again) d->set(this, now);  // due at once again: the next pass, >= 1 ms later
        }
    };
    C a, b;
    a.d = b.d = &d;
    a.again = true;
    uint64_t now = Deadlines::now_us();
    d.set(&a, now);
    d.set(&b, now + 2000);
    CHECK(a.calls == 0);  // never synchronously
    auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(20))
        uv_run(&loop, UV_RUN_NOWAIT);
    // At most one call per millisecond for a client that keeps itself due: no spin.
    CHECK(a.calls >= 2);
    CHECK(a.calls <= 22);
    CHECK(b.calls == 1);
    a.again = false;
    d.clear(&a);
    d.next_turn(&b);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(b.calls == 2);
    d.close();
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(owner.handles == 0);
    CHECK(uv_loop_close(&loop) == 0);
}

namespace {
// The peer's bytes and FIN as one segment (corked until the shutdown).
void peer_send_with_fin(int peer, const char* bytes) {
    int one = 1;
    REQUIRE(setsockopt(peer, IPPROTO_TCP, TCP_CORK, &one, sizeof one) == 0);
    REQUIRE(send(peer, bytes, strlen(bytes), MSG_NOSIGNAL) == static_cast<ssize_t>(strlen(bytes)));
    REQUIRE(shutdown(peer, SHUT_WR) == 0);
}

// The peer's bytes, then its RST at once (an abortive close); both are in our socket when
// this returns (loopback delivers during the calls).
void peer_send_then_reset(int& peer, const char* bytes) {
    int one = 1;
    REQUIRE(setsockopt(peer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
    REQUIRE(send(peer, bytes, strlen(bytes), MSG_NOSIGNAL) == static_cast<ssize_t>(strlen(bytes)));
    linger lg{1, 0};
    REQUIRE(setsockopt(peer, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
    close(peer);
    peer = -1;
}
}  // namespace

TEST_CASE("endpoint: a RST right behind the bytes is reported after them, never as EOF") {
    // Read together, the bytes come back short and the RST is only a hang-up: the peek of an
    // early read takes its error, and libuv reports the hang-up as EOF without reading again.
    SUBCASE("an early read: the FIN peek finds the RST") {
        Pair p;
        peer_send_then_reset(p.peer, "last words");
        REQUIRE(p.run_until([&] { return p.rec.read_error != 0 || p.rec.eof; }));
        CHECK(p.rec.data == "last words");
        CHECK(p.rec.read_error == UV_ECONNRESET);
        CHECK_FALSE(p.rec.eof);
        CHECK(p.rec.fin_follows == 0);
        CHECK_FALSE(p.ep.peer_fin());
        CHECK_FALSE(p.ep.reading());
    }
    SUBCASE("a later read, not peeked: the hang-up is told apart by the socket's error") {
        Pair p;
        int one = 1;
        REQUIRE(setsockopt(p.peer, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
        for (size_t i = 1; i <= 6; ++i) {  // more than the reads that are peeked
            REQUIRE(send(p.peer, "x", 1, MSG_NOSIGNAL) == 1);
            REQUIRE(p.run_until([&] { return p.rec.data.size() == i; }));
        }
        peer_send_then_reset(p.peer, "last words");
        REQUIRE(p.run_until([&] { return p.rec.read_error != 0 || p.rec.eof; }));
        CHECK(p.rec.data == "xxxxxxlast words");
        CHECK(p.rec.read_error == UV_ECONNRESET);
        CHECK_FALSE(p.rec.eof);
    }
    SUBCASE("an error taken before reading (libuv's connect check): the EOF is the RST") {
        Pair p;
        p.ep.stop_reading();
        peer_send_then_reset(p.peer, "banner");
        int err = 0;
        socklen_t len = sizeof err;
        REQUIRE(getsockopt(p.ep.fd(), SOL_SOCKET, SO_ERROR, &err, &len) == 0);
        REQUIRE(err == ECONNRESET);  // taken: from here on the kernel reads the bytes, then 0
        p.ep.reset_taken(UV_ECONNRESET);
        p.ep.start_reading();
        REQUIRE(p.run_until([&] { return p.rec.read_error != 0 || p.rec.eof; }));
        CHECK(p.rec.data == "banner");
        CHECK(p.rec.read_error == UV_ECONNRESET);
        CHECK_FALSE(p.rec.eof);
    }
    SUBCASE("while ending: the RST closes the socket at once") {
        Pair p;
        REQUIRE(p.ep.end(Ending::fin));  // waits for the peer's FIN (linger)
        peer_send_then_reset(p.peer, "late");
        REQUIRE(p.run_until([&] { return p.closed(); }, 1.0));  // not the 2 s linger
        CHECK(p.rec.discarded == 4);
    }
}

TEST_CASE("endpoint: a FIN right behind the bytes is reported with them, then on_eof once") {
    Pair p;
    peer_send_with_fin(p.peer, "last words");
    REQUIRE(p.run_until([&] { return p.rec.eof; }));
    CHECK(p.rec.data == "last words");
    CHECK(p.rec.fin_follows == 1);
    CHECK(p.ep.peer_fin());
    CHECK_FALSE(p.ep.reading());
    // Bytes with no FIN behind them say so.
    Pair q;
    REQUIRE(send(q.peer, "more to come", 12, MSG_NOSIGNAL) == 12);
    REQUIRE(q.run_until([&] { return q.rec.data.size() == 12; }));
    CHECK(q.rec.fin_follows == 0);
    CHECK_FALSE(q.rec.eof);
}

TEST_CASE("endpoint: bytes written to leave with the FIN do, and uncork() sends them without") {
    SUBCASE("the FIN follows: bytes then EOF") {
        Pair p;
        REQUIRE(p.ep.write("reply", 5, nullptr, Endpoint::Push::with_fin) == 0);
        REQUIRE(p.ep.shutdown_write() == 0);
        auto r = p.peer_read_all();
        CHECK(r.bytes == "reply");
        CHECK(r.eof);
    }
    SUBCASE("no FIN: held by the kernel until uncork(), then sent, the socket still open") {
        Pair p;
        REQUIRE(p.ep.write("reply", 5, nullptr, Endpoint::Push::with_fin) == 0);
        char c;
        CHECK(recv(p.peer, &c, 1, MSG_DONTWAIT) == -1);  // waiting for the FIN (MSG_MORE)
        CHECK(errno == EAGAIN);
        p.ep.uncork();
        auto r = p.peer_read_all(0.5);
        CHECK(r.bytes == "reply");
        CHECK_FALSE(r.eof);
        CHECK(r.err == 0);
        CHECK(p.ep.open());
    }
    SUBCASE("an ending sends them first, a RST's too") {
        for (Ending k : kKinds) {
            if (k == Ending::reset_now) continue;  // discards what is unsent, by definition
            CAPTURE(ending_name(k));
            Pair p;
            REQUIRE(p.ep.write("reply", 5, nullptr, Endpoint::Push::with_fin) == 0);
            REQUIRE(p.ep.end(k));
            auto r = p.peer_read_all(1.0);  // well within the kernel's own 200 ms+ probe
            CHECK(r.bytes == "reply");
        }
    }
}

TEST_CASE("endpoint: read_now() reads what is there without a turn of the loop") {
    Pair p;
    p.ep.read_now();  // nothing there yet: no report, still reading
    CHECK(p.rec.data.empty());
    CHECK(p.ep.reading());
    peer_send_with_fin(p.peer, "request");
    // Loopback delivers during send(): the bytes are in our socket before the loop runs.
    p.ep.read_now();
    CHECK(p.rec.data == "request");
    CHECK(p.rec.eof);
    CHECK_FALSE(p.ep.reading());
    p.ep.read_now();  // no longer reading: nothing
    uv_run(&p.loop, UV_RUN_NOWAIT);
    CHECK(p.rec.data == "request");
}

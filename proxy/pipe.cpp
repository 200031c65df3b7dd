#include "proxy/pipe.hpp"

#include "proxy/endpoint.hpp"
#include "proxy/session.hpp"

namespace tcpfault {

void Pipe::start() {
    if (!source_eof_ && !paused_) source_.start_reading();
}

void Pipe::on_read(Chunk& chunk, ssize_t nread) {
    if (discard_) {
        if (nread < 0) {
            source_eof_ = true;
            session_.on_discard_end();
        }
        return;
    }
    if (nread > 0) {
        forward(chunk, static_cast<size_t>(nread));
        return;
    }
    if (nread == UV_EOF) {
        source_eof_ = true;
        session_.trace(dir_ == config::Direction::upstream ? "client eof" : "server eof");
        maybe_pass_fin();
        return;
    }
    // ECONNRESET and friends: the source is gone abruptly. Mirror it, never turn it into a FIN.
    session_.on_peer_reset(source_, static_cast<int>(nread));
}

void Pipe::forward(Chunk& chunk, size_t len) {
    bytes_ += len;
    session_.on_bytes(dir_, len);
    int err = sink_.write(chunk, 0, len);
    if (err != 0) {
        session_.on_peer_reset(sink_, err);
        return;
    }
    apply_backpressure();
}

void Pipe::apply_backpressure() {
    size_t queued = sink_.queued_bytes();
    if (!paused_ && queued >= kHighWatermark) {
        paused_ = true;
        source_.stop_reading();
        session_.on_backpressure(true);
    } else if (paused_ && queued <= kLowWatermark) {
        paused_ = false;
        session_.on_backpressure(false);
        if (!source_eof_) source_.start_reading();
    }
}

void Pipe::on_write_done(int status) {
    if (status != 0) {
        // EPIPE/ECONNRESET: the sink reset us while bytes were in flight.
        session_.on_peer_reset(sink_, status);
        return;
    }
    apply_backpressure();
    maybe_pass_fin();
}

void Pipe::maybe_pass_fin() {
    if (!source_eof_ || sink_.fin_requested() || sink_.queued_bytes() != 0) return;
    int err = sink_.shutdown_write();
    if (err != 0) session_.on_peer_reset(sink_, err);
}

void Pipe::on_fin_sent(int status) {
    if (status != 0) {
        session_.on_peer_reset(sink_, status);
        return;
    }
    fin_done_ = true;
    session_.trace(dir_ == config::Direction::upstream ? "fin passed to server"
                                                       : "fin passed to client");
    session_.on_direction_done();
}

}  // namespace tcpfault

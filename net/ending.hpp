// How one socket of a connection ends: the close kinds. The socket layer (net/endpoint)
// carries them out; faults name them, per side, as what each peer observes.
#pragma once

#include <cstdint>

namespace tcpfault {

// How one socket of a connection ends: the close kinds. Every way a connection ends is one
// of these per side (what the docs' fault table calls the endings).
enum class Ending : uint8_t {
    none,              // not ending
    fin,               // FIN once every byte already forwarded to it is written; then its
                       // further bytes are read and dropped until its own FIN (or 2 s of
                       // silence), and the socket is closed: graceful, never a RST
    fin_then_discard,  // FIN after flush, then read and drop for as long as the peer keeps its
                       // half open (it is left half-open)
    fin_then_reset,    // FIN after flush; once the FIN is on the wire the socket is closed, so
                       // the peer's next segment is answered with RST (Winsock 10053)
    reset,             // RST once the peer acknowledged every forwarded byte (bounded)
    reset_now,         // RST at once; bytes not yet sent are discarded
    close_now,         // internal: close() at once, the kernel sends FIN (or RST over unread
                       // bytes); used when a grace period runs out
};

// YAML names (fin, fin_then_discard, fin_then_reset, reset, reset_now).
inline const char* ending_name(Ending e) {
    switch (e) {
        case Ending::none:
            return "none";
        case Ending::fin:
            return "fin";
        case Ending::fin_then_discard:
            return "fin_then_discard";
        case Ending::fin_then_reset:
            return "fin_then_reset";
        case Ending::reset:
            return "reset";
        case Ending::reset_now:
            return "reset_now";
        case Ending::close_now:
            return "close_now";
    }
    return "none";
}

// A later, stronger ending overrides an earlier one on the same side; never the reverse.
inline int ending_strength(Ending e) {
    // A graceful FIN may become an abort, never the reverse; close_now (the end of a grace
    // period) beats every ending that still waits for something, reset_now beats all.
    switch (e) {
        case Ending::none:
            return 0;
        case Ending::fin:
            return 1;
        case Ending::fin_then_discard:
            return 2;
        case Ending::fin_then_reset:
            return 3;
        case Ending::reset:
            return 4;
        case Ending::close_now:
            return 5;
        case Ending::reset_now:
            return 6;
    }
    return 0;
}

}  // namespace tcpfault

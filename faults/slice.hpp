// slice: the stream leaves in pieces of `size` bytes (a number, or a range drawn at random for
// each piece), each sent as a TCP segment of its own, `delay` apart: it exposes code that
// assumes TCP keeps message boundaries. Delays may be in microseconds (Toxiproxy's slicer);
// pieces are paced on a schedule, so the transfer takes pieces x delay however coarse the
// event loop's timer is.
#pragma once

#include <cstdint>

#include "faults/fault_base.hpp"

namespace tcpfault::faults {

struct SliceFault {
    static constexpr std::string_view kName = "slice";
    static constexpr Scope kScope = Scope::stage;
    static constexpr std::array kParams{std::string_view{"size"}, std::string_view{"delay"},
                                        std::string_view{"direction"}};

    uint64_t min_size = 1;  // `size: 4` gives min = max = 4; `size: 1-16` a range
    uint64_t max_size = 1;
    config::Duration delay{0};
    config::Direction direction = config::Direction::both;

    static std::optional<SliceFault> parse(const config::FaultParams& p);
    void apply(Connection& c, const std::string& rule) const;
};

}  // namespace tcpfault::faults

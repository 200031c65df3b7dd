#include "observe/clock.hpp"

#include <uv.h>

namespace tcpfault {

namespace {
uint64_t g_start_ns = uv_hrtime();
}

void mark_start() {
    g_start_ns = uv_hrtime();
}

config::Duration since_start() {
    return std::chrono::duration_cast<config::Duration>(
        std::chrono::nanoseconds(uv_hrtime() - g_start_ns));
}

}  // namespace tcpfault

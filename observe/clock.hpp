// Process uptime: the clock rule schedules count from ("clock starts at start-up").
#pragma once

#include "config/config.hpp"

namespace tcpfault {

void mark_start();  // called once at start-up
config::Duration since_start();

}  // namespace tcpfault

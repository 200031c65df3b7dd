// The series Toxiproxy's /metrics adds with -proxy-metrics and -runtime-metrics, rendered in
// Prometheus' text format for the Toxiproxy API's /metrics (next to tcpfault's own series).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tcpfault::toxiproxy {

// One proxy's byte counts since it started listening, with its Toxiproxy labels.
struct ProxyBytes {
    std::string proxy;              // the Toxiproxy name
    std::string listener;           // listen address
    std::string upstream;           // as given
    uint64_t upstream_bytes = 0;    // client -> server
    uint64_t downstream_bytes = 0;  // server -> client
};

// toxiproxy_proxy_received_bytes_total and toxiproxy_proxy_sent_bytes_total, labels
// direction, listener, proxy, upstream. Both count the bytes tcpfault read from the sending
// side: they differ from Toxiproxy's only for bytes a toxic drops (timeout, limit_data,
// reset_peer), which Toxiproxy counts as received but not sent.
std::string proxy_metrics_text(const std::vector<ProxyBytes>& proxies);

// The process series Prometheus' Go client exports with -runtime-metrics that make sense for a
// C++ process: process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds, process_start_time_seconds.
std::string runtime_metrics_text();

}  // namespace tcpfault::toxiproxy

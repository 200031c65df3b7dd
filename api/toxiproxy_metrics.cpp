#include "api/toxiproxy_metrics.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>
#include <cstdio>
#include <cstring>

namespace tcpfault::toxiproxy {

namespace {

prometheus::MetricFamily family(const char* name, const char* help, prometheus::MetricType type) {
    prometheus::MetricFamily f;
    f.name = name;
    f.help = help;
    f.type = type;
    return f;
}

void add(prometheus::MetricFamily& f, double value,
         std::vector<prometheus::ClientMetric::Label> labels = {}) {
    prometheus::ClientMetric m;
    m.label = std::move(labels);
    if (f.type == prometheus::MetricType::Counter)
        m.counter.value = value;
    else
        m.gauge.value = value;
    f.metric.push_back(std::move(m));
}

// /proc/self/stat fields after the command name: utime (14), stime (15), starttime (22),
// vsize (23), rss (24), counted from 1 over the whole line.
struct ProcStat {
    double cpu_seconds = 0;
    double start_seconds = 0;
    double vsize = 0;
    double rss_bytes = 0;
    bool ok = false;
};

ProcStat read_proc_stat() {
    ProcStat st;
    FILE* f = std::fopen("/proc/self/stat", "r");
    if (f == nullptr) return st;
    char buf[1024];
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char* p = std::strrchr(buf, ')');  // the command name may hold spaces and parens
    if (p == nullptr) return st;
    unsigned long utime = 0, stime = 0, vsize = 0;
    unsigned long long starttime = 0;
    long rss = 0;
    // From field 3 (state) on.
    int got = std::sscanf(p + 2,
                          "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d "
                          "%*d %*d %llu %lu %ld",
                          &utime, &stime, &starttime, &vsize, &rss);
    if (got != 5) return st;
    double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    double page = static_cast<double>(sysconf(_SC_PAGESIZE));
    st.cpu_seconds = static_cast<double>(utime + stime) / ticks;
    st.vsize = static_cast<double>(vsize);
    st.rss_bytes = static_cast<double>(rss) * page;
    // starttime counts ticks since boot: add the boot time (btime in /proc/stat).
    FILE* s = std::fopen("/proc/stat", "r");
    if (s != nullptr) {
        char line[256];
        while (std::fgets(line, sizeof line, s) != nullptr) {
            unsigned long long btime = 0;
            if (std::sscanf(line, "btime %llu", &btime) == 1) {
                st.start_seconds =
                    static_cast<double>(btime) + static_cast<double>(starttime) / ticks;
                break;
            }
        }
        std::fclose(s);
    }
    st.ok = true;
    return st;
}

double open_fds() {
    DIR* d = opendir("/proc/self/fd");
    if (d == nullptr) return 0;
    double n = 0;
    while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') ++n;
    closedir(d);
    return n - 1;  // the directory stream's own descriptor
}

}  // namespace

std::string proxy_metrics_text(const std::vector<ProxyBytes>& proxies) {
    using prometheus::MetricType;
    auto received = family("toxiproxy_proxy_received_bytes_total",
                           "The total number of bytes received on a proxy link in a direction",
                           MetricType::Counter);
    auto sent = family("toxiproxy_proxy_sent_bytes_total",
                       "The total number of bytes sent on a proxy link in a direction",
                       MetricType::Counter);
    for (const auto& p : proxies) {
        for (bool up : {true, false}) {
            double v = static_cast<double>(up ? p.upstream_bytes : p.downstream_bytes);
            std::vector<prometheus::ClientMetric::Label> labels = {
                {"direction", up ? "upstream" : "downstream"},
                {"listener", p.listener},
                {"proxy", p.proxy},
                {"upstream", p.upstream}};
            add(received, v, labels);
            add(sent, v, labels);
        }
    }
    return prometheus::TextSerializer().Serialize({received, sent});
}

std::string runtime_metrics_text() {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    ProcStat st = read_proc_stat();
    if (st.ok) {
        auto cpu = family("process_cpu_seconds_total",
                          "Total user and system CPU time spent in seconds.", MetricType::Counter);
        add(cpu, st.cpu_seconds);
        auto rss = family("process_resident_memory_bytes", "Resident memory size in bytes.",
                          MetricType::Gauge);
        add(rss, st.rss_bytes);
        auto vm = family("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                         MetricType::Gauge);
        add(vm, st.vsize);
        auto start =
            family("process_start_time_seconds",
                   "Start time of the process since unix epoch in seconds.", MetricType::Gauge);
        add(start, st.start_seconds);
        out.push_back(cpu);
        out.push_back(rss);
        out.push_back(vm);
        out.push_back(start);
    }
    auto fds = family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge);
    add(fds, open_fds());
    out.push_back(fds);
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
        auto max = family("process_max_fds", "Maximum number of open file descriptors.",
                          MetricType::Gauge);
        add(max, static_cast<double>(lim.rlim_cur));
        out.push_back(max);
    }
    return prometheus::TextSerializer().Serialize(out);
}

}  // namespace tcpfault::toxiproxy

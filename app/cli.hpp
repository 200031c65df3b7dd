// Command-line parsing (docs/cli.md), separate from main() so it is unit-tested.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace tcpfault {

// `tcpfault toxiproxy-server` (or the binary run as `toxiproxy-server`): Toxiproxy's server
// command line (cmd/server/server.go), for compose files and CI scripts written for it.
struct ToxiproxyServerOptions {
    std::string host = "localhost";          // -host
    uint16_t port = 8474;                    // -port
    bool listen_given = false;               // -host or -port was given
    std::optional<std::string> config_json;  // -config: Toxiproxy's JSON proxy list
    std::optional<uint64_t> seed;            // -seed (an int64, as Toxiproxy's)
    bool proxy_metrics = false;              // -proxy-metrics
    bool runtime_metrics = false;            // -runtime-metrics
    // The address -host and -port mean, as Go's net.Listen reads them: localhost is
    // 127.0.0.1, "" and 0.0.0.0 every IPv4 interface.
    config::HostPort listen() const;
};

struct Options {
    enum class Mode { run, check, version, help };
    Mode mode = Mode::run;
    std::string config_path = "tcpfault.yaml";
    bool config_given = false;
    std::optional<std::string> listen;    // -l: one proxy without a file
    std::optional<std::string> upstream;  // -u
    std::optional<std::string> admin;     // --admin ADDR|off
    std::optional<std::string> toxiproxy_api;
    std::optional<config::LogLevel> log_level;
    std::optional<config::LogFormat> log_format;
    std::optional<ToxiproxyServerOptions> toxiproxy_server;  // set: toxiproxy-server mode
    bool watch = false;  // --watch: as `watch: true` in the file
};

struct CliResult {
    Options options;
    std::string error;  // non-empty: usage error (exit 2)
};

// args exclude argv[0]. `toxiproxy-server` as the first argument switches to that command.
CliResult parse_cli(const std::vector<std::string>& args);
const char* usage_text();

// Toxiproxy's server flags, the Go way (-flag, --flag, -flag=value, -flag value; booleans as
// -flag or -flag=false), plus tcpfault's -c/-tcpfault-config, -admin, -log-level, -log-format.
CliResult parse_toxiproxy_server_cli(const std::vector<std::string>& args);
const char* toxiproxy_server_usage();
// True when argv[0]'s file name is toxiproxy-server or toxiproxy (a link to the binary).
bool invoked_as_toxiproxy_server(const std::string& argv0);

// The YAML a `-l ADDR -u HOST:PORT` run is equivalent to, so it goes through the same
// validation as a file.
std::string quick_proxy_yaml(const std::string& listen, const std::string& upstream);

}  // namespace tcpfault

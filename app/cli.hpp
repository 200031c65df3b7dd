// Command-line parsing (SPEC section 1), separate from main() so it is unit-tested.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace tcpfault {

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
    bool watch = false;  // --watch: as `watch: true` in the file
};

struct CliResult {
    Options options;
    std::string error;  // non-empty: usage error (exit 2)
};

CliResult parse_cli(const std::vector<std::string>& args);  // args exclude argv[0]
const char* usage_text();

// The YAML a `-l ADDR -u HOST:PORT` run is equivalent to, so it goes through the same
// validation as a file.
std::string quick_proxy_yaml(const std::string& listen, const std::string& upstream);

}  // namespace tcpfault

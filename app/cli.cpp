#include "app/cli.hpp"

namespace tcpfault {

const char* usage_text() {
    return R"(usage:
  tcpfault [-c FILE]                 run with FILE (default ./tcpfault.yaml)
  tcpfault --check -c FILE           validate FILE, print errors, exit 0 or 2
  tcpfault -l ADDR -u HOST:PORT      one proxy without a file (no rules; add rules over the API)
options:
  -c, --config FILE                  configuration file
  -l, --listen ADDR                  listen address for the quick proxy (e.g. 127.0.0.1:8080)
  -u, --upstream HOST:PORT           upstream for the quick proxy
  --admin ADDR|off                   override admin.listen
  --toxiproxy-api ADDR               also serve Toxiproxy's HTTP API
  --watch                            re-read the file when it changes (as `watch: true`)
  --log-level error|warn|info|debug  override log.level
  --log-format text|json             override log.format
  --version                          print the version
  -h, --help                         print this help
exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error
signals: SIGTERM/SIGINT graceful stop, SIGHUP reload the file
)";
}

CliResult parse_cli(const std::vector<std::string>& args) {
    CliResult r;
    Options& o = r.options;
    auto need_value = [&](size_t& i, const std::string& flag) -> const std::string* {
        if (i + 1 >= args.size()) {
            r.error = "option " + flag + " needs a value";
            return nullptr;
        }
        return &args[++i];
    };
    for (size_t i = 0; i < args.size() && r.error.empty(); ++i) {
        const std::string& a = args[i];
        const std::string* v = nullptr;
        if (a == "-h" || a == "--help") {
            o.mode = Options::Mode::help;
        } else if (a == "--version") {
            o.mode = Options::Mode::version;
        } else if (a == "--check") {
            o.mode = Options::Mode::check;
        } else if (a == "-c" || a == "--config") {
            if ((v = need_value(i, a))) {
                o.config_path = *v;
                o.config_given = true;
            }
        } else if (a == "-l" || a == "--listen") {
            if ((v = need_value(i, a))) o.listen = *v;
        } else if (a == "-u" || a == "--upstream") {
            if ((v = need_value(i, a))) o.upstream = *v;
        } else if (a == "--admin") {
            if ((v = need_value(i, a))) o.admin = *v;
        } else if (a == "--watch") {
            o.watch = true;
        } else if (a == "--toxiproxy-api") {
            if ((v = need_value(i, a))) o.toxiproxy_api = *v;
        } else if (a == "--log-level") {
            if ((v = need_value(i, a))) {
                if (*v == "error")
                    o.log_level = config::LogLevel::error;
                else if (*v == "warn")
                    o.log_level = config::LogLevel::warn;
                else if (*v == "info")
                    o.log_level = config::LogLevel::info;
                else if (*v == "debug")
                    o.log_level = config::LogLevel::debug;
                else
                    r.error = "invalid --log-level \"" + *v +
                              "\" (expected one of: error, warn, info, debug)";
            }
        } else if (a == "--log-format") {
            if ((v = need_value(i, a))) {
                if (*v == "text")
                    o.log_format = config::LogFormat::text;
                else if (*v == "json")
                    o.log_format = config::LogFormat::json;
                else
                    r.error = "invalid --log-format \"" + *v + "\" (expected one of: text, json)";
            }
        } else {
            r.error = "unknown option \"" + a + "\"";
        }
    }
    if (!r.error.empty()) return r;
    if (o.listen.has_value() != o.upstream.has_value()) {
        r.error = "-l and -u go together";
    } else if (o.listen && o.config_given) {
        r.error = "-l/-u and -c are exclusive";
    } else if (o.mode == Options::Mode::check && o.listen) {
        r.error = "--check validates a file: use it with -c FILE";
    } else if (o.watch && o.listen) {
        r.error = "--watch watches the config file: use it with -c FILE, not -l/-u";
    }
    return r;
}

namespace {
// Single-quoted YAML scalar: the only escape is '' for '.
std::string yaml_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\'') out += '\'';
        out += c;
    }
    return out + "'";
}
}  // namespace

std::string quick_proxy_yaml(const std::string& listen, const std::string& upstream) {
    return "proxies:\n  - name: main\n    listen: " + yaml_quote(listen) +
           "\n    upstream: " + yaml_quote(upstream) + "\n";
}

}  // namespace tcpfault

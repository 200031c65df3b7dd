#include "app/cli.hpp"

#include <charconv>
#include <tuple>

#include "config/units.hpp"

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
  toxiproxy-server [FLAGS]           run as Toxiproxy's server (toxiproxy-server -help)
  --watch                            re-read the file when it changes (as `watch: true`)
  --log-level error|warn|info|debug  override log.level
  --log-format text|json             override log.format
  --version                          print the version
  -h, --help                         print this help
exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error
signals: SIGTERM/SIGINT graceful stop, SIGHUP reload the file
)";
}

namespace {

std::optional<config::LogLevel> log_level_named(const std::string& v) {
    if (v == "error") return config::LogLevel::error;
    if (v == "warn") return config::LogLevel::warn;
    if (v == "info") return config::LogLevel::info;
    if (v == "debug") return config::LogLevel::debug;
    return std::nullopt;
}

std::optional<config::LogFormat> log_format_named(const std::string& v) {
    if (v == "text") return config::LogFormat::text;
    if (v == "json") return config::LogFormat::json;
    return std::nullopt;
}

}  // namespace

CliResult parse_cli(const std::vector<std::string>& args) {
    if (!args.empty() && args[0] == "toxiproxy-server")
        return parse_toxiproxy_server_cli({args.begin() + 1, args.end()});
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
            if ((v = need_value(i, a)) && !(o.log_level = log_level_named(*v)))
                r.error = "invalid --log-level \"" + *v +
                          "\" (expected one of: error, warn, info, debug)";
        } else if (a == "--log-format") {
            if ((v = need_value(i, a)) && !(o.log_format = log_format_named(*v)))
                r.error = "invalid --log-format \"" + *v + "\" (expected one of: text, json)";
        } else {
            r.error = "unknown option \"" + a + "\"";
        }
    }
    if (!r.error.empty()) return r;
    // Addresses are checked here, so the message names the flag (not a line of a config).
    for (const auto& [flag, value, port_zero_ok, off_ok] :
         {std::tuple{"-l", &o.listen, true, false}, std::tuple{"-u", &o.upstream, false, false},
          std::tuple{"--admin", &o.admin, true, true},
          std::tuple{"--toxiproxy-api", &o.toxiproxy_api, true, true}}) {
        if (!*value || (off_ok && **value == "off")) continue;
        if (auto hp = config::parse_host_port(**value, port_zero_ok); !hp) {
            r.error = std::string(flag) + ": " + hp.error;
            return r;
        }
    }
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

const char* toxiproxy_server_usage() {
    return R"(usage: tcpfault toxiproxy-server [FLAGS]   (or the binary run as toxiproxy-server)
Toxiproxy's server command line; its HTTP API on -host:-port.
  -host HOST             host for the API to listen on (default "localhost")
  -port PORT             port for the API to listen on (default "8474")
  -config FILE           JSON file with proxies to create on startup (as POST /populate;
                         each proxy's "toxics" are applied too)
  -seed N                seed for randomizing toxics (toxicity)
  -proxy-metrics         toxiproxy_proxy_* series on /metrics
  -runtime-metrics       process_* series on /metrics
  -version               print the version
tcpfault's own:
  -c, -tcpfault-config FILE  a tcpfault YAML config besides (toxiproxy: keys, admin, log,
                         proxies); -host/-port, when given, override its toxiproxy.listen
  -admin ADDR|off        tcpfault's admin API (default off unless the YAML file sets it)
  -log-level LEVEL       error|warn|info|debug
  -log-format FORMAT     text|json
Flags take one or two dashes, and -flag=value or -flag value.
)";
}

bool invoked_as_toxiproxy_server(const std::string& argv0) {
    size_t slash = argv0.rfind('/');
    std::string base = slash == std::string::npos ? argv0 : argv0.substr(slash + 1);
    return base == "toxiproxy-server" || base == "toxiproxy";
}

config::HostPort ToxiproxyServerOptions::listen() const {
    std::string h = host;
    if (h == "localhost")
        h = "127.0.0.1";
    else if (h.empty())
        h = "0.0.0.0";
    else if (h.size() >= 2 && h.front() == '[' && h.back() == ']')
        h = h.substr(1, h.size() - 2);
    return config::HostPort{h, port};
}

CliResult parse_toxiproxy_server_cli(const std::vector<std::string>& args) {
    CliResult r;
    Options& o = r.options;
    ToxiproxyServerOptions& t = o.toxiproxy_server.emplace();
    o.admin = "off";
    bool admin_given = false;
    for (size_t i = 0; i < args.size() && r.error.empty(); ++i) {
        const std::string& a = args[i];
        if (a == "--") {
            if (i + 1 < args.size()) r.error = "unexpected argument \"" + args[i + 1] + "\"";
            break;
        }
        if (a.size() < 2 || a[0] != '-' || (a.size() > 2 && a[1] == '-' && a[2] == '-')) {
            r.error = a.size() > 1 && a[0] == '-' ? "bad flag syntax: " + a
                                                  : "unexpected argument \"" + a + "\"";
            break;
        }
        std::string name = a.substr(a[1] == '-' ? 2 : 1);
        std::optional<std::string> value;
        if (size_t eq = name.find('='); eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
        }
        auto boolean = [&](bool& out) {
            if (!value) {
                out = true;
            } else if (*value == "1" || *value == "t" || *value == "T" || *value == "true" ||
                       *value == "TRUE" || *value == "True") {
                out = true;
            } else if (*value == "0" || *value == "f" || *value == "F" || *value == "false" ||
                       *value == "FALSE" || *value == "False") {
                out = false;
            } else {
                r.error = "invalid boolean value \"" + *value + "\" for -" + name;
            }
        };
        auto text = [&]() -> const std::string* {
            if (!value) {
                if (i + 1 >= args.size()) {
                    r.error = "flag needs an argument: -" + name;
                    return nullptr;
                }
                value = args[++i];
            }
            return &*value;
        };
        bool help = false, version = false;
        const std::string* v = nullptr;
        if (name == "h" || name == "help") {
            boolean(help);
            if (help) o.mode = Options::Mode::help;
        } else if (name == "version") {
            boolean(version);
            if (version) o.mode = Options::Mode::version;
        } else if (name == "proxy-metrics") {
            boolean(t.proxy_metrics);
        } else if (name == "runtime-metrics") {
            boolean(t.runtime_metrics);
        } else if (name == "host") {
            if ((v = text())) {
                t.host = *v;
                t.listen_given = true;
            }
        } else if (name == "port") {
            if ((v = text())) {
                auto hp = config::parse_host_port("0.0.0.0:" + *v, true);
                if (!hp || v->empty())
                    r.error = "invalid value \"" + *v + "\" for flag -port: expected 0-65535";
                else
                    t.port = hp->port;
                t.listen_given = true;
            }
        } else if (name == "config") {
            if ((v = text())) t.config_json = *v;
        } else if (name == "seed") {
            if ((v = text())) {
                int64_t seed = 0;
                const char* b = v->data();
                const char* e = b + v->size();
                auto [end, ec] = std::from_chars(b + (v->starts_with('+') ? 1 : 0), e, seed);
                if (v->empty() || ec != std::errc() || end != e)
                    r.error = "invalid value \"" + *v + "\" for flag -seed: expected an integer";
                else
                    t.seed = static_cast<uint64_t>(seed);
            }
        } else if (name == "c" || name == "tcpfault-config") {
            if ((v = text())) {
                o.config_path = *v;
                o.config_given = true;
            }
        } else if (name == "admin") {
            if ((v = text())) {
                o.admin = *v;
                admin_given = true;
            }
        } else if (name == "log-level") {
            if ((v = text()) && !(o.log_level = log_level_named(*v)))
                r.error = "invalid value \"" + *v +
                          "\" for flag -log-level (expected one of: error, warn, info, debug)";
        } else if (name == "log-format") {
            if ((v = text()) && !(o.log_format = log_format_named(*v)))
                r.error = "invalid value \"" + *v +
                          "\" for flag -log-format (expected one of: text, json)";
        } else {
            r.error = "flag provided but not defined: -" + name;
        }
    }
    // With a tcpfault YAML file, its admin section applies unless -admin says otherwise.
    if (o.config_given && !admin_given) o.admin.reset();
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

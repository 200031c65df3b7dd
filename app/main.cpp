#include <cstdio>
#include <string>
#include <vector>

#include "api/toxiproxy_api.hpp"
#include "app/app.hpp"
#include "app/cli.hpp"
#include "config/config.hpp"

int main(int argc, char** argv) {
    using tcpfault::Options;
    std::vector<std::string> args(argv + 1, argv + argc);
    // Run as toxiproxy-server (a link to the binary): Toxiproxy's command line.
    bool toxiproxy = argc > 0 && tcpfault::invoked_as_toxiproxy_server(argv[0]);
    tcpfault::CliResult cli =
        toxiproxy ? tcpfault::parse_toxiproxy_server_cli(args) : tcpfault::parse_cli(args);
    const Options& o = cli.options;
    const char* usage =
        o.toxiproxy_server ? tcpfault::toxiproxy_server_usage() : tcpfault::usage_text();
    if (!cli.error.empty()) {
        if (o.toxiproxy_server) {
            // As Go's flag package does for toxiproxy-server: the error, then the usage.
            std::fprintf(stderr, "toxiproxy-server: %s\n%s", cli.error.c_str(), usage);
            return 2;
        }
        // The message alone, so it stays on screen; the usage is one flag away.
        std::fprintf(stderr, "tcpfault: %s\nTry 'tcpfault --help' for more information.\n",
                     cli.error.c_str());
        return 2;
    }
    switch (o.mode) {
        case Options::Mode::help:
            std::fputs(usage, stdout);
            return 0;
        case Options::Mode::version:
            if (o.toxiproxy_server)
                std::printf("toxiproxy-server version %s (tcpfault %s)\n",
                            tcpfault::ToxiproxyApi::kVersion, TCPFAULT_VERSION);
            else
                std::puts("tcpfault " TCPFAULT_VERSION);
            return 0;
        case Options::Mode::check: {
            auto r = tcpfault::config::load_file(o.config_path);
            for (const auto& d : r.errors) std::fprintf(stderr, "%s\n", d.str().c_str());
            if (!r.config) {
                size_t n = r.errors.size();
                std::fprintf(stderr, "%zu %s\n", n, n == 1 ? "error" : "errors");
                return 2;
            }
            for (auto w : r.warnings) {
                w.message = "warning: " + w.message;
                std::fprintf(stderr, "%s\n", w.str().c_str());
            }
            size_t n = r.config->proxies.size();
            std::printf("%s: ok (%zu %s)\n", o.config_path.c_str(), n,
                        n == 1 ? "proxy" : "proxies");
            return 0;
        }
        case Options::Mode::run:
            break;
    }
    tcpfault::App app(o);
    return app.run();
}

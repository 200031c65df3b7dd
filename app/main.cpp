#include <cstdio>
#include <string>
#include <vector>

#include "app/app.hpp"
#include "app/cli.hpp"
#include "config/config.hpp"

int main(int argc, char** argv) {
    using tcpfault::Options;
    std::vector<std::string> args(argv + 1, argv + argc);
    tcpfault::CliResult cli = tcpfault::parse_cli(args);
    if (!cli.error.empty()) {
        // The message alone, so it stays on screen; the usage is one flag away.
        std::fprintf(stderr, "tcpfault: %s\nTry 'tcpfault --help' for more information.\n",
                     cli.error.c_str());
        return 2;
    }
    const Options& o = cli.options;
    switch (o.mode) {
        case Options::Mode::help:
            std::fputs(tcpfault::usage_text(), stdout);
            return 0;
        case Options::Mode::version:
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

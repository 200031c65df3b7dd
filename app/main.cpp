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
        std::fprintf(stderr, "tcpfault: %s\n%s", cli.error.c_str(), tcpfault::usage_text());
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
                std::fprintf(stderr, "%zu error(s)\n", r.errors.size());
                return 2;
            }
            std::printf("%s: ok (%zu proxies)\n", o.config_path.c_str(), r.config->proxies.size());
            return 0;
        }
        case Options::Mode::run:
            break;
    }
    tcpfault::App app(o);
    return app.run();
}

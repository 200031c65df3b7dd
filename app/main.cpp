#include <malloc.h>

#include <cstdio>
#include <string>
#include <vector>

#include "api/toxiproxy_api.hpp"
#include "app/app.hpp"
#include "app/cli.hpp"
#include "config/config.hpp"
#include "net/nft.hpp"

namespace {
// `--check`: the rules that drop packets need CAP_NET_ADMIN; says which, and whether this
// process has it (by creating its nftables table, which goes when it exits).
void check_packet_rules(const std::string& file, const tcpfault::config::Config& cfg) {
    using tcpfault::config::Diagnostic;
    size_t n = 0;
    for (const auto& p : cfg.proxies) {
        for (const auto& r : p.rules) {
            if (!tcpfault::faults::drops_packets(r.fault)) continue;
            ++n;
            Diagnostic d{file, r.pos,
                         "note: rule \"" + r.name + "\" of proxy \"" + p.name +
                             "\" (fault type \"" + tcpfault::config::fault_name(r.fault) +
                             "\") drops packets with nftables: it needs CAP_NET_ADMIN"};
            std::fprintf(stderr, "%s\n", d.str().c_str());
        }
    }
    if (n == 0) return;
    std::string why;
    Diagnostic d{file, {}, ""};
    if (tcpfault::NftFilter::open(&why))
        d.message = "note: this process has CAP_NET_ADMIN (it could create an nftables table)";
    else
        d.message = "warning: this process cannot drop packets (" + why +
                    "): started like this, tcpfault would refuse the rules above";
    std::fprintf(stderr, "%s\n", d.str().c_str());
}
}  // namespace

int main(int argc, char** argv) {
    using tcpfault::Options;
    // Read buffers are 256 KiB. glibc raises its mmap threshold past the size of every mmapped
    // block freed, after which such buffers come from the heap, where a burst of a thousand
    // slow connections leaves the process holding (not leaking) 100+ MB long after they
    // closed. A fixed threshold keeps big blocks mmapped, so what is freed goes back.
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
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
            check_packet_rules(o.config_path, *r.config);
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

// The process: the main event loop (plus `workers` - 1 worker loops), the running proxies,
// signals, reload and graceful stop.
#pragma once

#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "api/admin_api.hpp"
#include "api/http_server.hpp"
#include "api/toxiproxy_api.hpp"
#include "app/cli.hpp"
#include "app/config_watch.hpp"
#include "config/config.hpp"
#include "net/nft.hpp"
#include "net/worker.hpp"
#include "observe/events.hpp"
#include "observe/metrics.hpp"
#include "proxy/proxy_server.hpp"

namespace tcpfault {

class App {
  public:
    explicit App(Options opts);
    ~App();
    App(const App&) = delete;
    App& operator=(const App&) = delete;

    // Loads the config, binds every proxy and runs until stopped. Returns the exit code.
    int run();

    // Runtime proxy management (Toxiproxy API). On the loop thread only.
    std::vector<ProxyServer*> servers();
    ProxyServer* find_server(const std::string& name);
    // Binds and starts a new proxy; "" or the error (name taken, cannot listen: the libuv
    // error in *listen_error).
    std::string add_proxy(const config::Proxy& p, int* listen_error = nullptr);
    // Stops accepting and resets its open connections; false if there is no such proxy.
    bool remove_proxy(const std::string& name);

  private:
    config::LoadResult load();
    void apply_overrides(config::Config& cfg) const;
    // Makes the running set of proxies match `cfg`. New listeners are bound before anything
    // running is touched, so a failure leaves the old set intact. Returns "" or the error.
    std::string apply(const config::Config& cfg);
    // Re-reads the file; returns "" or why the running config was kept.
    std::string reload();
    void begin_shutdown(const char* why);
    void check_shutdown_done();
    void schedule_reap();
    void close_process_handles();
    std::string start_admin();
    std::string start_toxiproxy();
    // toxiproxy-server's -config file, read and checked before anything starts: "" or the
    // error. Its text waits in toxiproxy_config_ until the API starts.
    std::string read_toxiproxy_config();
    // Running without a config file to reload (-l/-u, or toxiproxy-server without -c).
    bool without_file() const;
    void start_workers();
    // Tries once to create this process's nftables table (the packet faults need it, and
    // CAP_NET_ADMIN to make it) and tells the config loader whether it could.
    void open_packet_filter();
    // Starts or stops the config file watch as --watch and the file's `watch:` ask;
    // "" or why it cannot watch.
    std::string update_watch();

    static void on_signal(uv_signal_t* h, int signum);
    static void on_grace_timeout(uv_timer_t* t);
    static void on_reap(uv_timer_t* t);

    Options opts_;
    uv_loop_t loop_{};
    config::Config cfg_;
    Metrics metrics_;
    EventLog events_;       // the admin API's event timeline, fed by every proxy
    unsigned workers_ = 1;  // fixed for the process's life
    std::unique_ptr<LoopQueue> main_queue_;
    // Declared before the proxies: they hold replicas on these loops.
    WorkerPool pool_;
    // Before the proxies, whose sessions hold drops in it. Null without CAP_NET_ADMIN.
    std::unique_ptr<NftFilter> packet_filter_;
    std::string packet_filter_error_;  // why there is none
    std::unique_ptr<AdminApi> api_;
    std::unique_ptr<HttpServer> admin_;
    std::unique_ptr<ToxiproxyApi> toxi_api_;
    std::unique_ptr<HttpServer> toxi_http_;
    std::string toxiproxy_config_;
    std::vector<std::unique_ptr<ProxyServer>> servers_;
    // Proxies removed or re-bound by a reload, finishing their open sessions.
    std::vector<std::unique_ptr<ProxyServer>> retiring_;
    std::unique_ptr<ConfigWatch> watch_;  // made on first use
    uv_signal_t sigterm_{}, sigint_{}, sighup_{};
    uv_timer_t grace_timer_{};
    uv_timer_t reap_timer_{};
    uint64_t seed_ = 0;
    bool stopping_ = false;
    bool handles_closed_ = false;
};

}  // namespace tcpfault

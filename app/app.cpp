#include "app/app.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <thread>

#include "api/request_guard.hpp"
#include "api/toxiproxy_policy.hpp"
#include "config/units.hpp"
#include "net/uv_util.hpp"
#include "observe/clock.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {
std::string join_errors(const std::vector<config::Diagnostic>& errors) {
    std::string out;
    for (const auto& d : errors) {
        if (!out.empty()) out += "; ";
        out += d.str();
    }
    return out;
}

void log_warnings(const std::vector<config::Diagnostic>& warnings) {
    for (const auto& w : warnings)
        log::warn("config warning", {{"file", w.file}, {"warning", w.message}});
}

// `workers: auto` (0) is one loop per core.
unsigned resolve_workers(unsigned configured) {
    return configured != 0 ? configured : std::max(1u, std::thread::hardware_concurrency());
}

bool same_listen(const config::Proxy& a, const config::Proxy& b) {
    return a.listen.host == b.listen.host && a.listen.port == b.listen.port;
}

// The file's entry for proxy `name`, or null.
const config::Proxy* entry_of(const config::Config& cfg, const std::string& name) {
    for (const auto& p : cfg.proxies)
        if (p.name == name) return &p;
    return nullptr;
}
}  // namespace

App::App(Options opts) : opts_(std::move(opts)) {
    uv_loop_init(&loop_);
}

App::~App() {
    // Every handle was closed by run(); this only releases the loop's own resources.
    uv_loop_close(&loop_);
}

bool App::without_file() const {
    return opts_.listen.has_value() || (opts_.toxiproxy_server && !opts_.config_given);
}

config::LoadResult App::load() {
    config::LoadResult r;
    if (opts_.toxiproxy_server && !opts_.config_given)
        r = config::load_string("proxies: []\n", "toxiproxy-server");
    else if (opts_.listen)
        r = config::load_string(quick_proxy_yaml(*opts_.listen, *opts_.upstream), "command line");
    else
        r = config::load_file(opts_.config_path);
    if (r.config) apply_overrides(*r.config);
    return r;
}

void App::apply_overrides(config::Config& cfg) const {
    if (opts_.log_level) cfg.log.level = *opts_.log_level;
    if (opts_.log_format) cfg.log.format = *opts_.log_format;
    if (opts_.toxiproxy_api) {
        cfg.toxiproxy.enabled = *opts_.toxiproxy_api != "off";
        // Validated in run() before we get here.
        if (cfg.toxiproxy.enabled)
            cfg.toxiproxy.listen = *config::parse_host_port(*opts_.toxiproxy_api, true);
    }
    if (opts_.admin) {
        cfg.admin.enabled = *opts_.admin != "off";
        // Validated in run() before we get here.
        if (cfg.admin.enabled) cfg.admin.listen = *config::parse_host_port(*opts_.admin, true);
    }
    if (const auto& t = opts_.toxiproxy_server) {
        // -host/-port, or the file's toxiproxy.listen when they are not given.
        if (t->listen_given || !cfg.toxiproxy.enabled) cfg.toxiproxy.listen = t->listen();
        cfg.toxiproxy.enabled = true;
        if (t->seed) cfg.seed = *t->seed;
        cfg.toxiproxy.proxy_metrics = cfg.toxiproxy.proxy_metrics || t->proxy_metrics;
        cfg.toxiproxy.runtime_metrics = cfg.toxiproxy.runtime_metrics || t->runtime_metrics;
    }
}

int App::run() {
    // The flags' addresses are checked like the file's, before anything starts.
    for (const auto& [flag, value] :
         {std::pair{"--admin", opts_.admin}, std::pair{"--toxiproxy-api", opts_.toxiproxy_api}}) {
        if (!value || *value == "off") continue;
        auto hp = config::parse_host_port(*value, true);
        if (!hp) {
            log::error("invalid address",
                       {{"option", flag}, {"value", *value}, {"error", hp.error}});
            return 2;
        }
    }
    open_packet_filter();
    config::LoadResult r = load();
    if (!r.config) {
        for (const auto& d : r.errors) log::error("config error", {{"error", d.str()}});
        return 2;
    }
    cfg_ = std::move(*r.config);
    log::configure(cfg_.log.level, cfg_.log.format);
    if (packet_filter_)
        log::debug("packet filter ready", {{"nftables_table", "inet " + packet_filter_->table()}});
    else
        log::debug("no packet filter: blackhole, loss and drop_syn rules are refused",
                   {{"reason", packet_filter_error_}});
    log_warnings(r.warnings);
    // The file's own toxiproxy section was checked by the loader; a flag may have turned the
    // Toxiproxy API on since.
    const char* how = opts_.toxiproxy_server ? "toxiproxy-server"
                      : opts_.toxiproxy_api  ? "--toxiproxy-api"
                                             : "toxiproxy.listen";
    if (std::string e = toxiproxy::unauthenticated_error(cfg_, how); !e.empty()) {
        log::error("config error", {{"error", e}});
        return 2;
    }
    if (std::string e = read_toxiproxy_config(); !e.empty()) {
        log::error("config error", {{"error", e}});
        return 2;
    }
    mark_start();
    // Without a configured seed every run differs; with one, every random decision repeats.
    seed_ = cfg_.seed ? *cfg_.seed : uv_hrtime();
    start_workers();

    uv_signal_init(&loop_, &sigterm_);
    uv_signal_init(&loop_, &sigint_);
    uv_signal_init(&loop_, &sighup_);
    sigterm_.data = sigint_.data = sighup_.data = this;
    uv_signal_start(&sigterm_, on_signal, SIGTERM);
    uv_signal_start(&sigint_, on_signal, SIGINT);
    uv_signal_start(&sighup_, on_signal, SIGHUP);
    uv_timer_init(&loop_, &grace_timer_);
    uv_timer_init(&loop_, &reap_timer_);
    grace_timer_.data = reap_timer_.data = this;
    // A peer that vanishes mid-write must give us EPIPE, not kill the process.
    signal(SIGPIPE, SIG_IGN);

    std::string err = apply(cfg_);
    if (err.empty()) err = start_admin();
    if (err.empty()) err = start_toxiproxy();
    if (err.empty()) err = update_watch();
    int exit_code = 0;
    if (!err.empty()) {
        log::error("cannot start", {{"error", err}});
        exit_code = 1;
        begin_shutdown("startup failed");
    } else {
        log::info("started", {{"version", TCPFAULT_VERSION}, {"proxies", servers_.size()}});
    }
    uv_run(&loop_, UV_RUN_DEFAULT);
    if (exit_code == 0) log::info("stopped");
    return exit_code;
}

std::string App::apply(const config::Config& cfg) {
    std::map<std::string, ProxyServer*> running;
    for (auto& s : servers_) running[s->name()] = s.get();

    // Phase 1: bind every listener the new config needs, touching nothing that runs.
    std::vector<std::unique_ptr<ProxyServer>> fresh;
    std::vector<std::string> declared;  // proxies whose series phase 1 declared
    std::string error;
    for (const auto& p : cfg.proxies) {
        auto it = running.find(p.name);
        if (it != running.end() && same_listen(it->second->config(), p)) continue;
        auto server =
            std::make_unique<ProxyServer>(&loop_, std::make_shared<config::Proxy>(p), &pool_);
        server->set_seed(seed_);
        server->set_metrics(&metrics_);
        declared.push_back(p.name);
        server->set_events(&events_);
        server->set_packet_filter(packet_filter_.get());
        int e = server->listen();
        if (e != 0) {
            error = "proxy " + p.name + ": cannot listen on " + p.listen.str() + ": " +
                    uv_error_string(e);
            server->stop_accepting();
            retiring_.push_back(std::move(server));
            break;
        }
        fresh.push_back(std::move(server));
    }
    if (!error.empty()) {
        for (auto& s : fresh) {
            s->stop_accepting();
            retiring_.push_back(std::move(s));
        }
        // The fresh instances declared their series: those of proxies that do not run go as
        // a deleted proxy's do, and the running config's rules' come back (the fresh
        // instances retired those they lack).
        for (const auto& name : declared)
            if (running.count(name) == 0) metrics_.retire_proxy(name);
        for (auto& s : servers_) s->set_metrics(&metrics_);
        schedule_reap();
        return error;
    }

    // Phase 2: swap. Unchanged listeners keep their open sessions and get the new config.
    std::vector<std::unique_ptr<ProxyServer>> next;
    for (const auto& p : cfg.proxies) {
        auto it = running.find(p.name);
        if (it != running.end() && same_listen(it->second->config(), p)) {
            for (auto& s : servers_) {
                if (s.get() == it->second) {
                    s->update_config(std::make_shared<config::Proxy>(p));
                    next.push_back(std::move(s));
                    break;
                }
            }
            continue;
        }
        for (auto& s : fresh) {
            if (s && s->name() == p.name) {
                next.push_back(std::move(s));
                break;
            }
        }
    }
    for (auto& s : servers_) {
        if (!s) continue;
        // Proxies made at runtime (Toxiproxy API) are not the file's to remove.
        if (s->created_at_runtime() && running.count(s->name()) != 0 &&
            entry_of(cfg, s->name()) == nullptr) {
            next.push_back(std::move(s));
            continue;
        }
        // Removed or re-bound: stop accepting; its open connections finish. They follow the
        // file as a running proxy's do (below): the rules of the proxy that replaces it
        // (re-bound) or none (removed). So a rule the file no longer has is lifted from them
        // (an endless stall no longer holds them forever), and a cap's held clients go on.
        if (entry_of(cfg, s->name()) == nullptr) metrics_.retire_proxy(s->name());
        s->stop_accepting();
        retiring_.push_back(std::move(s));
    }
    servers_ = std::move(next);
    // Every instance still finishing (retired by this reload or an earlier one) follows the
    // file too: the rules of its name's entry, or none.
    for (auto& s : retiring_) {
        const config::Proxy* now = entry_of(cfg, s->name());
        s->take_rules(now != nullptr ? now->rules : std::vector<config::Rule>{});
    }
    for (auto& s : servers_) s->set_on_idle([this] { schedule_reap(); });
    for (auto& s : retiring_) s->set_on_idle([this] { schedule_reap(); });
    schedule_reap();
    return "";
}

std::vector<ProxyServer*> App::servers() {
    std::vector<ProxyServer*> out;
    for (auto& s : servers_) out.push_back(s.get());
    return out;
}

ProxyServer* App::find_server(const std::string& name) {
    for (auto& s : servers_)
        if (s->name() == name) return s.get();
    return nullptr;
}

std::string App::add_proxy(const config::Proxy& p, int* listen_error) {
    if (stopping_) return "shutting down";
    if (find_server(p.name) != nullptr) return "proxy " + p.name + " already exists";
    auto server = std::make_unique<ProxyServer>(&loop_, std::make_shared<config::Proxy>(p), &pool_);
    server->set_seed(seed_);
    server->set_metrics(&metrics_);
    server->set_events(&events_);
    server->set_packet_filter(packet_filter_.get());
    server->set_created_at_runtime();
    server->set_on_idle([this] { schedule_reap(); });
    int e = server->listen();
    if (e != 0) {
        metrics_.retire_proxy(p.name);  // declared by set_metrics, never served
        server->stop_accepting();
        retiring_.push_back(std::move(server));
        schedule_reap();
        if (listen_error != nullptr) *listen_error = e;
        return "cannot listen on " + p.listen.str() + ": " + uv_error_string(e);
    }
    servers_.push_back(std::move(server));
    return "";
}

bool App::remove_proxy(const std::string& name) {
    for (auto it = servers_.begin(); it != servers_.end(); ++it) {
        if ((*it)->name() != name) continue;
        metrics_.retire_proxy(name);
        (*it)->stop_accepting();
        (*it)->abort_sessions(true);
        retiring_.push_back(std::move(*it));
        servers_.erase(it);
        schedule_reap();
        return true;
    }
    return false;
}

void App::open_packet_filter() {
    packet_filter_ = NftFilter::open(&packet_filter_error_);
    config::set_packet_filter(packet_filter_ != nullptr, packet_filter_error_);
}

void App::start_workers() {
    workers_ = resolve_workers(cfg_.workers);
    main_queue_ = std::make_unique<LoopQueue>(&loop_);
    pool_.main = main_queue_.get();
    pool_.on_idle = [this] { schedule_reap(); };
    // The main loop is the first worker: it serves connections as well as the APIs.
    for (unsigned i = 1; i < workers_; ++i) pool_.workers.push_back(std::make_unique<Worker>(i));
    if (workers_ > 1) log::info("workers started", {{"workers", workers_}});
}

std::string App::start_admin() {
    if (!cfg_.admin.enabled) return "";
    AdminApi::Hooks hooks;
    hooks.servers = [this] {
        std::vector<ProxyServer*> out;
        for (auto& s : servers_) out.push_back(s.get());
        return out;
    };
    hooks.all_servers = [this] {
        std::vector<ProxyServer*> out;
        for (auto& s : servers_) out.push_back(s.get());
        for (auto& s : retiring_) out.push_back(s.get());
        return out;
    };
    hooks.reload = [this] { return reload(); };
    hooks.metrics = &metrics_;
    hooks.events = &events_;
    hooks.token = cfg_.admin.token;
    api_ = std::make_unique<AdminApi>(std::move(hooks));
    // Browser protections before any route (docs/security.md); the Host rule needs to know
    // whether the bound address is a loopback one.
    auto guard = std::make_shared<RequestGuard>();
    admin_ = std::make_unique<HttpServer>(&loop_, [this, guard](const HttpRequest& r) {
        if (auto refusal = guard->check(r)) return refusal->response(false);
        return api_->handle(r);
    });
    int e = admin_->listen(cfg_.admin.listen.host, cfg_.admin.listen.port);
    if (e != 0)
        return "admin: cannot listen on " + cfg_.admin.listen.str() + ": " + uv_error_string(e);
    guard->set_policy({"admin API", admin_->loopback(), true});
    log::info("admin listening", {{"addr", admin_->address()}});
    if (!admin_->loopback() && cfg_.admin.token.empty()) {
        log::warn(
            "SECURITY: the admin API is reachable from other hosts and has no token: anyone who "
            "can connect can add and enable faults, reset every connection and reload the "
            "config. Set admin.token (TCPFAULT_TOKEN in the Docker image) or listen on "
            "127.0.0.1; see docs/security.md",
            {{"addr", admin_->address()}});
    }
    return "";
}

std::string App::read_toxiproxy_config() {
    if (!opts_.toxiproxy_server || !opts_.toxiproxy_server->config_json) return "";
    const std::string& path = *opts_.toxiproxy_server->config_json;
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) return "-config " + path + ": cannot read file: " + std::strerror(errno);
    constexpr size_t kMax = 4 * 1024 * 1024;
    std::string text;
    char buf[65536];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0 && text.size() <= kMax)
        text.append(buf, n);
    if (text.size() > kMax) return "-config " + path + ": file too large (the limit is 4 MiB)";
    if (std::string e = ToxiproxyApi::check_config(text); !e.empty())
        return "-config " + path + ": " + e;
    toxiproxy_config_ = std::move(text);
    return "";
}

std::string App::start_toxiproxy() {
    if (!cfg_.toxiproxy.enabled) return "";
    ToxiproxyApi::Hooks h;
    h.proxies.servers = [this] { return servers(); };
    h.proxies.find = [this](const std::string& n) { return find_server(n); };
    h.proxies.add_proxy = [this](const config::Proxy& p, int* listen_error) {
        return add_proxy(p, listen_error);
    };
    h.proxies.remove_proxy = [this](const std::string& n) { return remove_proxy(n); };
    h.metrics = [this] {
        std::vector<ProxyServer*> all = servers();
        for (auto& s : retiring_) all.push_back(s.get());
        sync_all_metrics(all);
        return metrics_.render();
    };
    toxi_api_ = std::make_unique<ToxiproxyApi>(std::move(h), cfg_.toxiproxy);
    // The admin API's browser rules, except the body type: Toxiproxy's own documentation
    // sends JSON with `curl -d` (a form type), and Toxiproxy refuses browsers by User-Agent.
    auto guard = std::make_shared<RequestGuard>();
    toxi_http_ = std::make_unique<HttpServer>(&loop_, [this, guard](const HttpRequest& r) {
        if (auto refusal = guard->check(r)) return refusal->response(true);
        return toxi_api_->handle(r);
    });
    int e = toxi_http_->listen(cfg_.toxiproxy.listen.host, cfg_.toxiproxy.listen.port);
    if (e != 0)
        return "toxiproxy api: cannot listen on " + cfg_.toxiproxy.listen.str() + ": " +
               uv_error_string(e);
    guard->set_policy({"Toxiproxy API", toxi_http_->loopback(), false});
    log::info("toxiproxy api listening", {{"addr", toxi_http_->address()}});
    const std::string& host = cfg_.toxiproxy.listen.host;
    if (host != "127.0.0.1" && host != "::1" && host.rfind("127.", 0) != 0)
        log::warn("the Toxiproxy API has no authentication and is reachable from other hosts",
                  {{"addr", toxi_http_->address()}});
    if (!toxiproxy_config_.empty()) {
        std::string err = toxi_api_->load_config(toxiproxy_config_);
        toxiproxy_config_.clear();
        if (!err.empty())
            return "toxiproxy-server -config " + *opts_.toxiproxy_server->config_json + ": " + err;
        log::info("toxiproxy-server: proxies created from -config",
                  {{"file", *opts_.toxiproxy_server->config_json}});
    }
    return "";
}

std::string App::reload() {
    if (stopping_) return "shutting down";
    if (without_file()) {
        log::warn("reload ignored: running without a config file");
        return "running without a config file (-l/-u, or toxiproxy-server without -c): "
               "nothing to reload";
    }
    config::LoadResult r = load();
    std::string err = r.config ? apply(*r.config) : join_errors(r.errors);
    if (!err.empty()) {
        // The running config stays as it was: apply() binds before it changes anything.
        metrics_.reload(false);
        log::error("reload failed", {{"file", opts_.config_path}, {"error", err}});
        return err;
    }
    metrics_.reload(true);
    unsigned want = resolve_workers(r.config->workers);
    if (want != workers_)
        log::warn("workers changed in the file; it takes effect at the next start",
                  {{"running", workers_}, {"configured", want}});
    cfg_ = std::move(*r.config);
    log::configure(cfg_.log.level, cfg_.log.format);
    log_warnings(r.warnings);
    log::info("reloaded", {{"file", opts_.config_path}, {"proxies", servers_.size()}});
    if (std::string e = update_watch(); !e.empty()) log::error("watch failed", {{"error", e}});
    return "";
}

std::string App::update_watch() {
    bool want = !opts_.listen && !stopping_ && (opts_.watch || cfg_.watch);
    if (!want) {
        if (watch_ && watch_->watching()) {
            watch_->stop();
            log::info("config file no longer watched", {{"file", opts_.config_path}});
        }
        return "";
    }
    if (!watch_)
        watch_ = std::make_unique<ConfigWatch>(&loop_, opts_.config_path, [this] { reload(); });
    if (watch_->watching()) return "";
    if (int e = watch_->start(); e != 0)
        return "cannot watch the config file " + opts_.config_path + ": " + uv_error_string(e);
    log::info("watching the config file", {{"file", opts_.config_path}});
    return "";
}

void App::on_signal(uv_signal_t* h, int signum) {
    auto* self = static_cast<App*>(h->data);
    if (signum == SIGHUP) {
        self->reload();
        return;
    }
    if (self->stopping_) {
        // A second SIGINT/SIGTERM: do not wait out the grace period.
        log::warn("second stop signal: closing connections now");
        for (auto& s : self->servers_) s->abort_sessions(false);
        for (auto& s : self->retiring_) s->abort_sessions(false);
        return;
    }
    self->begin_shutdown(signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

void App::begin_shutdown(const char* why) {
    if (stopping_) return;
    stopping_ = true;
    if (watch_) watch_->stop();
    size_t open = 0;
    for (auto& s : retiring_) open += s->active();  // removed or re-bound, still finishing
    for (auto& s : servers_) {
        s->stop_accepting();
        open += s->active();
        retiring_.push_back(std::move(s));
    }
    servers_.clear();
    for (auto& s : retiring_) s->set_on_idle([this] { schedule_reap(); });
    log::info("shutting down", {{"reason", why},
                                {"open_connections", open},
                                {"grace_ms", cfg_.shutdown_grace.count() / 1000}});
    uint64_t ms = static_cast<uint64_t>(cfg_.shutdown_grace.count() / 1000);
    uv_timer_start(&grace_timer_, on_grace_timeout, ms, 0);
    schedule_reap();
}

void App::on_grace_timeout(uv_timer_t* t) {
    auto* self = static_cast<App*>(t->data);
    size_t open = 0;
    for (auto& s : self->retiring_) {
        open += s->active();
        s->abort_sessions(false);
    }
    if (open > 0) log::warn("grace period over: closing connections", {{"open_connections", open}});
}

void App::schedule_reap() {
    if (handles_closed_) return;
    uv_timer_start(&reap_timer_, on_reap, 0, 0);
}

// Deferred to its own callback so a ProxyServer is never freed while its own code is on the stack.
void App::on_reap(uv_timer_t* t) {
    auto* self = static_cast<App*>(t->data);
    std::erase_if(self->retiring_, [](const auto& s) { return s->finished(); });
    self->check_shutdown_done();
}

void App::check_shutdown_done() {
    if (!stopping_ || !retiring_.empty() || !servers_.empty()) return;
    close_process_handles();
}

void App::close_process_handles() {
    if (handles_closed_) return;
    handles_closed_ = true;
    if (admin_) admin_->close([] {});
    // Every proxy, and so every replica, is gone: the workers' loops have nothing left.
    for (auto& w : pool_.workers) w->stop();
    pool_.workers.clear();
    if (main_queue_) main_queue_->close();
    if (toxi_http_) toxi_http_->close([] {});
    if (watch_) watch_->close();
    for (uv_handle_t* h :
         {reinterpret_cast<uv_handle_t*>(&sigterm_), reinterpret_cast<uv_handle_t*>(&sigint_),
          reinterpret_cast<uv_handle_t*>(&sighup_), reinterpret_cast<uv_handle_t*>(&grace_timer_),
          reinterpret_cast<uv_handle_t*>(&reap_timer_)}) {
        uv_close(h, nullptr);  // embedded in App, which outlives uv_run
    }
    // Closing the watchers restored the default actions: a stop signal arriving in the last
    // instants (a supervisor repeating SIGTERM) would kill a process that is exiting cleanly.
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
}

}  // namespace tcpfault

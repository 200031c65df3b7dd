#include "app/config_watch.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string_view>

#include "net/uv_util.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {
// Config files are rejected past 4 MiB; a larger file only needs to differ, not to be hashed.
constexpr size_t kMaxRead = 4 * 1024 * 1024 + 1;

template <typename H>
uv_handle_t* as_handle(H* h) {
    return reinterpret_cast<uv_handle_t*>(h);
}
}  // namespace

ConfigWatch::ConfigWatch(uv_loop_t* loop, const std::string& path, std::function<void()> on_change)
    : loop_(loop), path_(path), on_change_(std::move(on_change)) {
    std::error_code ec;
    std::filesystem::path p = std::filesystem::absolute(path, ec);
    if (ec) p = path;
    dir_ = p.parent_path().string();
}

int ConfigWatch::start() {
    if (closed_) return UV_EINVAL;
    if (watching_) return 0;
    if (!initialized_) {
        uv_fs_event_init(loop_, &dir_event_);
        uv_fs_event_init(loop_, &real_event_);
        uv_timer_init(loop_, &timer_);
        dir_event_.data = real_event_.data = timer_.data = this;
        initialized_ = true;
    }
    int e = uv_fs_event_start(&dir_event_, on_event, dir_.c_str(), 0);
    if (e != 0) return e;
    watching_ = true;
    seen_ = read();
    follow_symlinks();
    return 0;
}

void ConfigWatch::stop() {
    if (!watching_) return;
    uv_fs_event_stop(&dir_event_);
    if (!real_dir_.empty()) uv_fs_event_stop(&real_event_);
    real_dir_.clear();
    uv_timer_stop(&timer_);
    watching_ = false;
    burst_ = false;
}

void ConfigWatch::close() {
    if (!initialized_ || closed_) return;
    stop();
    closed_ = true;
    // Embedded handles: nothing to free, the owner outlives the loop run.
    for (uv_handle_t* h : {as_handle(&dir_event_), as_handle(&real_event_), as_handle(&timer_)})
        uv_close(h, nullptr);
}

void ConfigWatch::on_event(uv_fs_event_t* h, const char* name, int /*events*/, int status) {
    auto* self = static_cast<ConfigWatch*>(h->data);
    if (!self->watching_) return;
    if (status < 0) {
        log::warn("config watch error", {{"file", self->path_},
                                         {"name", name != nullptr ? name : ""},
                                         {"error", uv_error_string(status)}});
    }
    self->arm();
}

// Trailing debounce: fire kQuietMs after the last event, but no later than kMaxWaitMs after
// the first, so a directory that never goes quiet (a log written next to the file) cannot
// hold a change back for ever.
void ConfigWatch::arm() {
    uint64_t now = uv_now(loop_);
    if (!burst_) {
        burst_ = true;
        burst_start_ = now;
    }
    uint64_t elapsed = now - burst_start_;
    uint64_t left = elapsed >= kMaxWaitMs ? 1 : kMaxWaitMs - elapsed;
    uv_timer_start(&timer_, on_timer, std::max<uint64_t>(1, std::min(kQuietMs, left)), 0);
}

void ConfigWatch::on_timer(uv_timer_t* t) {
    auto* self = static_cast<ConfigWatch*>(t->data);
    self->burst_ = false;
    if (self->watching_) self->check();
}

void ConfigWatch::check() {
    follow_symlinks();
    Content now = read();
    if (now == seen_) {
        log::debug("config file unchanged", {{"file", path_}});
        return;
    }
    seen_ = now;
    if (now.readable && now.size == 0) {
        log::warn("config file is empty: waiting for content before reloading", {{"file", path_}});
        return;
    }
    log::info("config file changed", {{"file", path_}});
    on_change_();  // may stop() this watch (the new file says `watch: false`)
}

// The directory the path resolves into, when it is not the path's own: watched as well, so an
// in-place write to a symlink's target elsewhere is seen. Re-pointed when the resolution
// changes (a new ..data target) or the directory was replaced.
void ConfigWatch::follow_symlinks() {
    std::error_code ec;
    std::string want;
    ino_t want_ino = 0;
    std::filesystem::path real = std::filesystem::canonical(path_, ec);
    if (!ec) {
        std::filesystem::path own = std::filesystem::canonical(dir_, ec);
        struct stat st {};
        if (!ec && real.parent_path() != own && ::stat(real.parent_path().c_str(), &st) == 0) {
            want = real.parent_path().string();
            want_ino = st.st_ino;
        }
    }
    if (want == real_dir_ && want_ino == real_ino_) return;
    if (!real_dir_.empty()) uv_fs_event_stop(&real_event_);
    real_dir_.clear();
    real_ino_ = 0;
    if (want.empty()) return;
    int e = uv_fs_event_start(&real_event_, on_event, want.c_str(), 0);
    if (e != 0) {
        log::warn("cannot watch the config file's directory",
                  {{"file", path_}, {"dir", want}, {"error", uv_error_string(e)}});
        return;
    }
    real_dir_ = want;
    real_ino_ = want_ino;
}

ConfigWatch::Content ConfigWatch::read() const {
    Content c;
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path_.c_str(), "rb"),
                                                      &std::fclose);
    if (!f) return c;
    std::string text;
    char buf[65536];
    while (text.size() < kMaxRead) {
        size_t n = std::fread(buf, 1, std::min(sizeof buf, kMaxRead - text.size()), f.get());
        text.append(buf, n);
        if (n == 0) {
            if (std::ferror(f.get())) return c;
            break;
        }
    }
    c.readable = true;
    c.size = text.size();
    c.hash = std::hash<std::string_view>{}(text);
    return c;
}

}  // namespace tcpfault

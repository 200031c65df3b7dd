// Watches the config file and calls back once per change (`watch: true` or `--watch`).
//
// Followed: a tool writing the file in place; an editor replacing it (write a new file, rename
// it over the old one); a Kubernetes ConfigMap volume, where the file is a symlink
// `NAME -> ..data/NAME`, `..data` a symlink to a timestamped directory, and the kubelet
// publishes a new version by writing a new timestamped directory and renaming a new `..data`
// symlink over the old one.
//
// How: uv_fs_event (inotify) on the directory of the path as given, which sees all three (the
// file's own writes and renames, and `..data` being renamed), and, when the path resolves
// through symlinks into another directory, on that directory too (re-resolved after every
// change, so it follows the kubelet's new timestamped directory). An event only (re)arms a
// debounce timer; once the directory has been quiet for kQuietMs (at most kMaxWaitMs after the
// burst's first event) the file is read, and on_change runs only if its bytes differ from the
// last ones seen. So a burst of events (the kubelet's creates, renames and deletes, an
// editor's backup-write-rename) gives one call; an event about another file of the directory,
// or the file written back unchanged, gives none. A missing or unreadable file counts as a
// change (the owner's reload reports it and keeps the running config); an empty one is taken
// for a write in progress (an editor truncated it) and waited out: no call until it has
// content.
//
// On the loop thread only. The handles are embedded: after close(), the owner keeps this
// object until the loop has run the close callbacks.
#pragma once

#include <uv.h>

#include <sys/types.h>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace tcpfault {

class ConfigWatch {
  public:
    static constexpr uint64_t kQuietMs = 200;
    static constexpr uint64_t kMaxWaitMs = 2000;

    ConfigWatch(uv_loop_t* loop, const std::string& path, std::function<void()> on_change);
    ConfigWatch(const ConfigWatch&) = delete;
    ConfigWatch& operator=(const ConfigWatch&) = delete;

    // Starts watching; the file's current content is the baseline. 0 or a libuv error (the
    // directory cannot be watched). Does nothing while already watching.
    int start();
    // No more calls until start().
    void stop();
    // Closes the handles (once; stop() first if needed).
    void close();
    bool watching() const { return watching_; }

  private:
    struct Content {
        bool readable = false;
        size_t size = 0;
        size_t hash = 0;
        bool operator==(const Content&) const = default;
    };

    static void on_event(uv_fs_event_t* h, const char* name, int events, int status);
    static void on_timer(uv_timer_t* t);
    void arm();
    void check();
    void follow_symlinks();
    Content read() const;

    uv_loop_t* loop_;
    std::string path_;  // as given (the process never changes directory)
    std::string dir_;   // its directory, absolute, symlinks as given
    std::function<void()> on_change_;
    uv_fs_event_t dir_event_{};
    uv_fs_event_t real_event_{};  // the resolved file's directory, when another one
    uv_timer_t timer_{};
    std::string real_dir_;  // "" when real_event_ is not started
    ino_t real_ino_ = 0;
    bool initialized_ = false;
    bool watching_ = false;
    bool closed_ = false;
    bool burst_ = false;
    uint64_t burst_start_ = 0;
    Content seen_;
};

}  // namespace tcpfault

#include "observe/log.hpp"

#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include <nlohmann/json.hpp>

namespace tcpfault::log {
namespace {

// Worker threads log too; a reload may change these meanwhile.
std::atomic<config::LogLevel> g_level{config::LogLevel::info};
std::atomic<config::LogFormat> g_format{config::LogFormat::text};

const char* level_name(config::LogLevel l) {
    switch (l) {
        case config::LogLevel::error:
            return "error";
        case config::LogLevel::warn:
            return "warn";
        case config::LogLevel::info:
            return "info";
        case config::LogLevel::debug:
            return "debug";
    }
    return "info";
}

std::string timestamp() {
    timeval tv{};
    gettimeofday(&tv, nullptr);
    tm t{};
    gmtime_r(&tv.tv_sec, &t);
    char buf[40];
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
    snprintf(buf + n, sizeof buf - n, ".%03ldZ", static_cast<long>(tv.tv_usec / 1000));
    return buf;
}

// Text values with spaces, quotes or '=' are quoted so lines stay machine-splittable.
std::string text_value(std::string_view v) {
    bool plain = !v.empty();
    for (char c : v) {
        if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
            plain = false;
            break;
        }
    }
    if (plain) return std::string(v);
    std::string out(1, '"');
    out.append(json_escape(v)).push_back('"');
    return out;
}

}  // namespace

void configure(config::LogLevel level, config::LogFormat format) {
    g_level = level;
    g_format = format;
}

bool enabled(config::LogLevel level) {
    return static_cast<int>(level) <= static_cast<int>(g_level.load(std::memory_order_relaxed));
}

namespace {
// JSON text of a string: always valid UTF-8, whatever bytes came in (request paths and bodies
// echoed in errors, peer data in logs): ill-formed UTF-8 becomes U+FFFD.
std::string json_string(std::string_view s) {
    return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// A pre-rendered number back as a JSON number (NaN and infinities, which JSON lacks, as null).
nlohmann::json json_number(const std::string& text) {
    const char* b = text.data();
    const char* e = b + text.size();
    int64_t i = 0;
    if (auto r = std::from_chars(b, e, i); r.ec == std::errc() && r.ptr == e) return i;
    uint64_t u = 0;
    if (auto r = std::from_chars(b, e, u); r.ec == std::errc() && r.ptr == e) return u;
    double d = std::strtod(text.c_str(), nullptr);
    if (!std::isfinite(d)) return nullptr;
    return d;
}
}  // namespace

std::string json_escape(std::string_view s) {
    std::string quoted = json_string(s);
    return quoted.substr(1, quoted.size() - 2);
}

void write(config::LogLevel level, std::string_view msg, std::initializer_list<Field> fields) {
    if (!enabled(level)) return;
    std::string line;
    line.reserve(160);
    if (g_format == config::LogFormat::json) {
        nlohmann::ordered_json obj;
        obj["ts"] = timestamp();
        obj["level"] = level_name(level);
        obj["msg"] = msg;
        for (const auto& f : fields) {
            if (f.quoted)
                obj[std::string(f.key)] = f.value;
            else
                obj[std::string(f.key)] = json_number(f.value);
        }
        line = obj.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        line.push_back('\n');
    } else {
        line.append(timestamp()).append(" ").append(level_name(level)).append(" ").append(msg);
        for (const auto& f : fields) {
            line.append(" ").append(f.key).append("=").append(text_value(f.value));
        }
        line.push_back('\n');
    }
    // One write(2) per line so concurrent writers (and tests tailing stderr) never see
    // interleaved halves.
    ssize_t off = 0;
    while (off < static_cast<ssize_t>(line.size())) {
        ssize_t n = ::write(STDERR_FILENO, line.data() + off, line.size() - off);
        if (n <= 0) break;
        off += n;
    }
}

}  // namespace tcpfault::log

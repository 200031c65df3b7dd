#include "observe/log.hpp"

#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <ctime>

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
// Length of the well-formed UTF-8 sequence starting at s[i], or 0 if it is not one.
size_t utf8_sequence(std::string_view s, size_t i) {
    auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    auto cont = [&](size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
    unsigned char c = b(i);
    if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (!cont(i + 1) || !cont(i + 2)) return 0;
        if (c == 0xE0 && b(i + 1) < 0xA0) return 0;  // overlong
        if (c == 0xED && b(i + 1) > 0x9F) return 0;  // UTF-16 surrogate
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
        if (c == 0xF0 && b(i + 1) < 0x90) return 0;  // overlong
        if (c == 0xF4 && b(i + 1) > 0x8F) return 0;  // above U+10FFFF
        return 4;
    }
    return 0;
}
}  // namespace

// Output is always valid UTF-8 JSON: bytes that are not well-formed UTF-8 (request paths and
// bodies echoed in errors, peer data in logs) become U+FFFD.
std::string json_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size() + 8);
    for (size_t i = 0; i < s.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        switch (c) {
            case '"':
                out += "\\\"";
                continue;
            case '\\':
                out += "\\\\";
                continue;
            case '\n':
                out += "\\n";
                continue;
            case '\r':
                out += "\\r";
                continue;
            case '\t':
                out += "\\t";
                continue;
            default:
                break;
        }
        if (c < 0x20 || c == 0x7f) {
            char buf[8];
            snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else if (c < 0x80) {
            out += static_cast<char>(c);
        } else if (size_t n = utf8_sequence(s, i); n > 0) {
            out.append(s.substr(i, n));
            i += n - 1;
        } else {
            out += "\\ufffd";
        }
    }
    return out;
}

void write(config::LogLevel level, std::string_view msg, std::initializer_list<Field> fields) {
    if (!enabled(level)) return;
    std::string line;
    line.reserve(160);
    if (g_format == config::LogFormat::json) {
        line.append("{\"ts\":\"").append(timestamp()).append("\",\"level\":\"");
        line.append(level_name(level)).append("\",\"msg\":\"").append(json_escape(msg));
        line.push_back('"');
        for (const auto& f : fields) {
            line.append(",\"").append(json_escape(f.key)).append("\":");
            if (f.quoted)
                line.append("\"").append(json_escape(f.value)).append("\"");
            else
                line.append(f.value);
        }
        line.append("}\n");
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

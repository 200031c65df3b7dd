#include "proxy/log.hpp"

#include <sys/time.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>

namespace tcpfault::log {
namespace {

config::LogLevel g_level = config::LogLevel::info;
config::LogFormat g_format = config::LogFormat::text;

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
    return static_cast<int>(level) <= static_cast<int>(g_level);
}

std::string json_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size() + 8);
    for (unsigned char c : s) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    char buf[8];
                    snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
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

// Structured logging to stderr: one line per event, as text (`ts level msg k=v ...`) or JSON.
// Tests and log shippers rely on the `msg` values and field names; change them with care.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "config/config.hpp"

namespace tcpfault::log {

// A field value is stored pre-rendered; `quoted` tells JSON output whether it is a string.
struct Field {
    std::string_view key;
    std::string value;
    bool quoted = true;
    Field(std::string_view k, std::string_view v) : key(k), value(v) {}
    Field(std::string_view k, const char* v) : key(k), value(v) {}
    Field(std::string_view k, const std::string& v) : key(k), value(v) {}
    template <typename N>
    requires std::is_arithmetic_v<N> Field(std::string_view k, N n)
        : key(k), value(std::to_string(n)), quoted(false) {}
};

void configure(config::LogLevel level, config::LogFormat format);
bool enabled(config::LogLevel level);
void write(config::LogLevel level, std::string_view msg, std::initializer_list<Field> fields = {});

inline void error(std::string_view m, std::initializer_list<Field> f = {}) {
    write(config::LogLevel::error, m, f);
}
inline void warn(std::string_view m, std::initializer_list<Field> f = {}) {
    write(config::LogLevel::warn, m, f);
}
inline void info(std::string_view m, std::initializer_list<Field> f = {}) {
    write(config::LogLevel::info, m, f);
}
inline void debug(std::string_view m, std::initializer_list<Field> f = {}) {
    if (enabled(config::LogLevel::debug)) write(config::LogLevel::debug, m, f);
}

// The inside of a JSON string literal for `s` (nlohmann-json's escaping; ill-formed UTF-8
// becomes U+FFFD), for JSON built around it, such as the HTTP server's error bodies.
std::string json_escape(std::string_view s);

}  // namespace tcpfault::log

#include "config/quote.hpp"

namespace tcpfault::config {

namespace {

// The longest prefix of at most kQuoteBytes that does not split a UTF-8 sequence.
size_t cut_point(std::string_view s) {
    if (s.size() <= kQuoteBytes) return s.size();
    size_t n = kQuoteBytes;
    while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
    return n;
}

std::string size_note(std::string_view s) {
    return " (" + std::to_string(s.size()) + " bytes)";
}

}  // namespace

std::string quote_value(std::string_view s) {
    size_t n = cut_point(s);
    std::string out = "\"";
    for (char c : s.substr(0, n)) {
        auto u = static_cast<unsigned char>(c);
        if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c == '\t') {
            out += "\\t";
        } else if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20 || u == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[u >> 4];
            out += hex[u & 15];
        } else {
            out += c;
        }
    }
    if (n < s.size()) return out + "...\"" + size_note(s);
    return out + '"';
}

std::string shorten(std::string_view s) {
    size_t n = cut_point(s);
    if (n == s.size()) return std::string(s);
    return std::string(s.substr(0, n)) + "..." + size_note(s);
}

}  // namespace tcpfault::config

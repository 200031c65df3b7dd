#include "ftp/ftp_rewrite.hpp"

#include <arpa/inet.h>

#include <cctype>
#include <cstring>
#include <vector>

namespace tcpfault::faults {

namespace {

// Up to `count` comma-separated numbers 0-255 starting at the first digit at or after `from`.
bool six_numbers(std::string_view s, size_t from, unsigned out[6]) {
    size_t i = from;
    while (i < s.size() && !std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
    for (int k = 0; k < 6; ++k) {
        if (i >= s.size() || !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
        unsigned v = 0;
        int digits = 0;
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
            v = v * 10 + static_cast<unsigned>(s[i] - '0');
            if (++digits > 3 || v > 255) return false;
            ++i;
        }
        out[k] = v;
        if (k < 5) {
            if (i >= s.size() || s[i] != ',') return false;
            ++i;
        }
    }
    return true;
}

sockaddr_in from_numbers(const unsigned n[6]) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    uint32_t ip = (n[0] << 24) | (n[1] << 16) | (n[2] << 8) | n[3];
    a.sin_addr.s_addr = htonl(ip);
    a.sin_port = htons(static_cast<uint16_t>((n[4] << 8) | n[5]));
    return a;
}

std::string numbers_of(const sockaddr_in& a) {
    uint32_t ip = ntohl(a.sin_addr.s_addr);
    uint16_t port = ntohs(a.sin_port);
    return std::to_string(ip >> 24) + "," + std::to_string((ip >> 16) & 0xff) + "," +
           std::to_string((ip >> 8) & 0xff) + "," + std::to_string(ip & 0xff) + "," +
           std::to_string(port >> 8) + "," + std::to_string(port & 0xff);
}

bool starts_with_ci(std::string_view s, std::string_view prefix) {
    if (s.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i)
        if (std::toupper(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
    return true;
}

std::optional<uint16_t> parse_port(std::string_view s) {
    if (s.empty() || s.size() > 5) return std::nullopt;
    unsigned v = 0;
    for (char c : s) {
        if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v == 0 || v > 65535) return std::nullopt;
    return static_cast<uint16_t>(v);
}

// Splits "|a|b|c|" style fields with the delimiter being the first character.
std::optional<std::vector<std::string_view>> delimited(std::string_view s, size_t fields) {
    if (s.empty()) return std::nullopt;
    char d = s[0];
    if (d < 33 || d > 126) return std::nullopt;
    std::vector<std::string_view> out;
    size_t i = 1;
    while (out.size() < fields) {
        size_t j = s.find(d, i);
        if (j == std::string_view::npos) return std::nullopt;
        out.push_back(s.substr(i, j - i));
        i = j + 1;
    }
    return out;
}

std::string_view trim_eol(std::string_view line) {
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
    return line;
}

}  // namespace

std::optional<sockaddr_in> parse_pasv_reply(std::string_view line) {
    line = trim_eol(line);
    if (line.size() < 4 || line.substr(0, 4) != "227 ") return std::nullopt;
    unsigned n[6];
    if (!six_numbers(line, 4, n)) return std::nullopt;
    return from_numbers(n);
}

std::string format_pasv_reply(const sockaddr_in& addr) {
    return "227 Entering Passive Mode (" + numbers_of(addr) + ").\r\n";
}

std::optional<uint16_t> parse_epsv_reply(std::string_view line) {
    line = trim_eol(line);
    if (line.size() < 4 || line.substr(0, 4) != "229 ") return std::nullopt;
    size_t open = line.find('(');
    size_t close = line.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open)
        return std::nullopt;
    auto f = delimited(line.substr(open + 1, close - open - 1), 3);
    if (!f || !(*f)[0].empty() || !(*f)[1].empty()) return std::nullopt;
    return parse_port((*f)[2]);
}

std::string format_epsv_reply(uint16_t port) {
    return "229 Entering Extended Passive Mode (|||" + std::to_string(port) + "|)\r\n";
}

std::optional<sockaddr_in> parse_port_command(std::string_view line) {
    line = trim_eol(line);
    if (!starts_with_ci(line, "PORT ")) return std::nullopt;
    unsigned n[6];
    if (!six_numbers(line, 5, n)) return std::nullopt;
    return from_numbers(n);
}

std::string format_port_command(const sockaddr_in& addr) {
    return "PORT " + numbers_of(addr) + "\r\n";
}

std::optional<sockaddr_storage> parse_eprt_command(std::string_view line) {
    line = trim_eol(line);
    if (!starts_with_ci(line, "EPRT ")) return std::nullopt;
    auto f = delimited(line.substr(5), 3);
    if (!f) return std::nullopt;
    auto port = parse_port((*f)[2]);
    if (!port) return std::nullopt;
    std::string host((*f)[1]);
    sockaddr_storage ss{};
    if ((*f)[0] == "1") {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        in->sin_family = AF_INET;
        in->sin_port = htons(*port);
        if (inet_pton(AF_INET, host.c_str(), &in->sin_addr) != 1) return std::nullopt;
    } else if ((*f)[0] == "2") {
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(*port);
        if (inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) != 1) return std::nullopt;
    } else {
        return std::nullopt;
    }
    return ss;
}

std::string format_eprt_command(const sockaddr* addr) {
    char host[INET6_ADDRSTRLEN] = {};
    if (addr->sa_family == AF_INET) {
        auto* in = reinterpret_cast<const sockaddr_in*>(addr);
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        return "EPRT |1|" + std::string(host) + "|" + std::to_string(ntohs(in->sin_port)) + "|\r\n";
    }
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    return "EPRT |2|" + std::string(host) + "|" + std::to_string(ntohs(in6->sin6_port)) + "|\r\n";
}

void FtpLineFilter::feed(const char* p, size_t n, std::string& out) {
    size_t i = 0;
    while (i < n) {
        const char* nl = static_cast<const char*>(std::memchr(p + i, '\n', n - i));
        size_t end = nl ? static_cast<size_t>(nl - p) + 1 : n;
        if (passthrough_line_) {
            out.append(p + i, end - i);
            if (nl) passthrough_line_ = false;
            i = end;
            continue;
        }
        partial_.append(p + i, end - i);
        i = end;
        if (nl) {
            // However it was split, a line over the limit is never rewritten.
            if (partial_.size() > kMaxLine)
                out += partial_;
            else
                out += rewrite_(partial_);
            partial_.clear();
        } else if (partial_.size() > kMaxLine) {
            // Not a control line we could rewrite: forward it as it comes.
            out += partial_;
            partial_.clear();
            passthrough_line_ = true;
        }
    }
}

void FtpLineFilter::flush(std::string& out) {
    out += partial_;
    partial_.clear();
}

int FtpReplyTracker::complete_reply_code(std::string_view line) {
    auto code_of = [](std::string_view l) -> int {
        if (l.size() < 4) return 0;
        for (int k = 0; k < 3; ++k)
            if (!std::isdigit(static_cast<unsigned char>(l[k]))) return 0;
        return (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
    };
    int code = code_of(line);
    if (open_code_ != 0) {
        // Inside a multi-line reply only "<same code> " ends it.
        if (code == open_code_ && line[3] == ' ') {
            open_code_ = 0;
            return code;
        }
        return 0;
    }
    if (code == 0) return 0;
    if (line[3] == '-') {
        open_code_ = code;
        return 0;
    }
    return line[3] == ' ' || line[3] == '\r' || line[3] == '\n' ? code : 0;
}

}  // namespace tcpfault::faults

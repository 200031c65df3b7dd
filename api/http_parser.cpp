#include "api/http_parser.hpp"

#include <limits>
#include <optional>

namespace tcpfault {

namespace {

constexpr size_t npos = std::string::npos;
constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

bool is_tchar(unsigned char c) {
    if (c >= '0' && c <= '9') return true;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
    switch (c) {
        case '!':
        case '#':
        case '$':
        case '%':
        case '&':
        case '\'':
        case '*':
        case '+':
        case '-':
        case '.':
        case '^':
        case '_':
        case '`':
        case '|':
        case '~':
            return true;
        default:
            return false;
    }
}

bool is_token(std::string_view s) {
    if (s.empty()) return false;
    for (unsigned char c : s)
        if (!is_tchar(c)) return false;
    return true;
}

char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string to_lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = lower(c);
    return out;
}

bool istarts_with(std::string_view s, std::string_view prefix) {
    return s.size() >= prefix.size() && ascii_iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// Calls f(element) for each trimmed element of a comma-separated list, empty ones included.
template <typename F>
void for_each_list_item(std::string_view s, F&& f) {
    for (;;) {
        size_t comma = s.find(',');
        f(trim(s.substr(0, comma)));
        if (comma == npos) return;
        s.remove_prefix(comma + 1);
    }
}

int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Decimal digits only (no sign, no spaces); saturates at kU64Max.
bool parse_decimal(std::string_view s, uint64_t* out) {
    if (s.empty()) return false;
    uint64_t v = 0;
    for (unsigned char c : s) {
        if (c < '0' || c > '9') return false;
        unsigned d = c - '0';
        v = (v > (kU64Max - d) / 10) ? kU64Max : v * 10 + d;
    }
    *out = v;
    return true;
}

}  // namespace

bool ascii_iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}

const std::string* HttpRequest::header(std::string_view lower_name) const {
    for (const auto& [name, value] : headers)
        if (name == lower_name) return &value;
    return nullptr;
}

bool percent_decode(std::string_view in, std::string& out) {
    out.clear();
    out.reserve(in.size());
    for (size_t i = 0; i < in.size(); ++i) {
        if (in[i] != '%') {
            out += in[i];
            continue;
        }
        if (i + 2 >= in.size()) return false;
        int hi = hex_value(static_cast<unsigned char>(in[i + 1]));
        int lo = hex_value(static_cast<unsigned char>(in[i + 2]));
        if (hi < 0 || lo < 0) return false;
        char c = static_cast<char>(hi * 16 + lo);
        if (c == '\0') return false;
        out += c;
        i += 2;
    }
    return true;
}

HttpRequestParser::Status HttpRequestParser::fail(int status, const char* reason) {
    state_ = State::error;
    error_status_ = status;
    error_reason_ = reason;
    buf_.clear();
    buf_.shrink_to_fit();
    pos_ = scan_ = 0;
    return Status::error;
}

void HttpRequestParser::compact() {
    if (pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
    } else if (pos_ >= 4096 && pos_ >= buf_.size() / 2) {
        buf_.erase(0, pos_);
        pos_ = 0;
    }
}

bool HttpRequestParser::next_line(size_t limit, std::string_view* line, bool* too_long) {
    *too_long = false;
    size_t nl = buf_.find('\n', pos_ + scan_);
    if (nl == npos) {
        scan_ = pending();
        *too_long = pending() > limit;
        return false;
    }
    size_t len = nl - pos_;
    if (len > limit) {
        *too_long = true;
        return false;
    }
    *line = std::string_view(buf_).substr(pos_, len);
    if (!line->empty() && line->back() == '\r') line->remove_suffix(1);
    pos_ = nl + 1;
    scan_ = 0;
    return true;
}

HttpRequestParser::Status HttpRequestParser::finish(HttpRequest& out) {
    out = std::move(cur_);
    cur_ = HttpRequest{};
    state_ = State::head;
    started_ = false;
    skipped_ = 0;
    scan_ = 0;
    remaining_ = 0;
    trailer_bytes_ = 0;
    compact();
    // A large body or a big pipelined read must not pin its buffer on an idle connection.
    if (buf_.empty() && buf_.capacity() > 16 * 1024) std::string().swap(buf_);
    return Status::request;
}

HttpRequestParser::Status HttpRequestParser::next(HttpRequest& out) {
    for (;;) {
        switch (state_) {
            case State::error:
                return Status::error;

            case State::head: {
                // Blank lines before a request line are tolerated (RFC 9112 2.2).
                if (scan_ == 0) {
                    while (pos_ < buf_.size() && (buf_[pos_] == '\r' || buf_[pos_] == '\n')) {
                        ++pos_;
                        ++skipped_;
                        started_ = true;
                    }
                    if (skipped_ > limits_.max_header_bytes)
                        return fail(431, "request header too large");
                }
                // The head ends at the first empty line: "\n\n" or "\n\r\n".
                size_t end = npos;
                size_t i = pos_ + scan_;
                for (;;) {
                    size_t nl = buf_.find('\n', i);
                    if (nl == npos) {
                        scan_ = pending();
                        break;
                    }
                    if (nl + 1 >= buf_.size()) {
                        scan_ = nl - pos_;  // look at this '\n' again when more arrives
                        break;
                    }
                    if (buf_[nl + 1] == '\n') {
                        end = nl + 2;
                        break;
                    }
                    if (buf_[nl + 1] == '\r') {
                        if (nl + 2 >= buf_.size()) {
                            scan_ = nl - pos_;
                            break;
                        }
                        if (buf_[nl + 2] == '\n') {
                            end = nl + 3;
                            break;
                        }
                    }
                    i = nl + 1;
                }
                size_t head_len = (end == npos ? pending() : end - pos_) + skipped_;
                if (head_len > limits_.max_header_bytes)
                    return fail(431, "request header too large");
                if (end == npos) {
                    if (pending() > 0) started_ = true;
                    compact();
                    return Status::need_more;
                }
                Status s = parse_head(end);
                if (s == Status::error) return s;
                if (state_ == State::head) return finish(out);
                continue;
            }

            case State::body: {
                size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, pending()));
                cur_.body.append(buf_, pos_, take);
                pos_ += take;
                remaining_ -= take;
                if (remaining_ == 0) return finish(out);
                compact();
                return Status::need_more;
            }

            case State::chunk_size: {
                std::string_view line;
                bool too_long = false;
                if (!next_line(limits_.max_header_bytes, &line, &too_long)) {
                    if (too_long) return fail(400, "chunk size line too long");
                    compact();
                    return Status::need_more;
                }
                size_t digits = 0;
                uint64_t size = 0;
                while (digits < line.size() &&
                       hex_value(static_cast<unsigned char>(line[digits])) >= 0) {
                    if (size > (kU64Max >> 4)) return fail(413, "request body too large");
                    size = size * 16 + hex_value(static_cast<unsigned char>(line[digits]));
                    ++digits;
                }
                if (digits == 0) return fail(400, "invalid chunk size");
                std::string_view rest = trim(line.substr(digits));
                if (!rest.empty() && rest.front() != ';') return fail(400, "invalid chunk size");
                if (size > limits_.max_body_bytes - cur_.body.size())
                    return fail(413, "request body too large");
                if (size == 0) {
                    state_ = State::trailers;
                } else {
                    remaining_ = size;
                    state_ = State::chunk_data;
                }
                continue;
            }

            case State::chunk_data: {
                size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, pending()));
                cur_.body.append(buf_, pos_, take);
                pos_ += take;
                remaining_ -= take;
                if (remaining_ > 0) {
                    compact();
                    return Status::need_more;
                }
                state_ = State::chunk_data_end;
                continue;
            }

            case State::chunk_data_end: {
                if (pending() == 0) return Status::need_more;
                if (buf_[pos_] == '\n') {
                    ++pos_;
                } else if (buf_[pos_] == '\r') {
                    if (pending() < 2) return Status::need_more;
                    if (buf_[pos_ + 1] != '\n') return fail(400, "invalid chunk framing");
                    pos_ += 2;
                } else {
                    return fail(400, "invalid chunk framing");
                }
                state_ = State::chunk_size;
                continue;
            }

            case State::trailers: {
                std::string_view line;
                bool too_long = false;
                size_t budget =
                    limits_.max_header_bytes - std::min(limits_.max_header_bytes, trailer_bytes_);
                size_t before = pos_;
                if (!next_line(budget, &line, &too_long)) {
                    if (too_long) return fail(431, "request header too large");
                    compact();
                    return Status::need_more;
                }
                trailer_bytes_ += pos_ - before;
                if (line.empty()) return finish(out);
                // Trailer fields are dropped, but must still look like fields.
                size_t colon = line.find(':');
                if (colon == npos || !is_token(line.substr(0, colon)))
                    return fail(400, "malformed trailer line");
                continue;
            }
        }
    }
}

HttpRequestParser::Status HttpRequestParser::parse_head(size_t end) {
    std::string_view head = std::string_view(buf_).substr(pos_, end - pos_);
    HttpRequest& req = cur_;
    req = HttpRequest{};
    std::optional<uint64_t> content_length;
    std::string transfer_encoding;
    bool has_te = false;
    bool conn_close = false;
    bool conn_keep_alive = false;
    int hosts = 0;
    bool first = true;

    size_t i = 0;
    while (i < head.size()) {
        size_t nl = head.find('\n', i);  // the head always ends with '\n'
        std::string_view line = head.substr(i, nl - i);
        i = nl + 1;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty()) break;  // the blank line that ends the head
        if (line.find('\r') != npos) return fail(400, "malformed line ending");

        if (first) {
            first = false;
            size_t sp1 = line.find(' ');
            size_t sp2 = line.rfind(' ');
            if (sp1 == npos || sp1 == sp2) return fail(400, "malformed request line");
            std::string_view method = line.substr(0, sp1);
            std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
            std::string_view version = line.substr(sp2 + 1);
            if (!is_token(method)) return fail(400, "malformed request line");
            if (target.empty()) return fail(400, "malformed request line");
            for (unsigned char c : target)
                if (c <= 0x20 || c == 0x7f) return fail(400, "malformed request line");
            if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' ||
                version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9')
                return fail(400, "malformed request line");
            if (version[5] != '1' || (version[7] != '0' && version[7] != '1'))
                return fail(505, "HTTP version not supported");
            req.version_minor = version[7] - '0';
            req.method = std::string(method);
            req.target = std::string(target);

            if (target.find('#') != npos) return fail(400, "invalid request target");
            std::string_view t = target;
            if (t == "*") {
                if (method != "OPTIONS") return fail(400, "invalid request target");
                req.path = "*";
                continue;
            }
            if (t.front() != '/') {
                // Absolute form: the scheme and authority are dropped.
                size_t skip = istarts_with(t, "http://") ? 7 : istarts_with(t, "https://") ? 8 : 0;
                if (skip == 0) return fail(400, "invalid request target");
                t.remove_prefix(skip);
                size_t path_start = t.find_first_of("/?");
                if (path_start == 0) return fail(400, "invalid request target");
                t = path_start == npos ? std::string_view("/") : t.substr(path_start);
                if (t.front() == '?') {
                    req.query = std::string(t.substr(1));
                    req.path = "/";
                    continue;
                }
            }
            size_t q = t.find('?');
            if (q != npos) req.query = std::string(t.substr(q + 1));
            if (!percent_decode(t.substr(0, q), req.path))
                return fail(400, "invalid percent-encoding in path");
            continue;
        }

        size_t colon = line.find(':');
        if (colon == npos || !is_token(line.substr(0, colon)))
            return fail(400, "malformed header line");
        std::string name = to_lower(line.substr(0, colon));
        std::string_view value = trim(line.substr(colon + 1));
        for (unsigned char c : value)
            if ((c < 0x20 && c != '\t') || c == 0x7f) return fail(400, "invalid header value");

        if (name == "content-length") {
            bool ok = true;
            for_each_list_item(value, [&](std::string_view item) {
                uint64_t v = 0;
                if (!parse_decimal(item, &v) || (content_length && *content_length != v))
                    ok = false;
                else
                    content_length = v;
            });
            if (!ok) return fail(400, "invalid Content-Length");
        } else if (name == "transfer-encoding") {
            has_te = true;
            if (!transfer_encoding.empty()) transfer_encoding += ',';
            transfer_encoding += value;
        } else if (name == "connection") {
            for_each_list_item(value, [&](std::string_view item) {
                if (ascii_iequals(item, "close")) conn_close = true;
                if (ascii_iequals(item, "keep-alive")) conn_keep_alive = true;
            });
        } else if (name == "host") {
            if (++hosts > 1) return fail(400, "duplicate Host header");
        } else if (name == "expect") {
            if (ascii_iequals(value, "100-continue")) req.expect_continue = true;
        }
        req.headers.emplace_back(std::move(name), std::string(value));
    }

    pos_ = end;
    scan_ = 0;

    req.keep_alive = !conn_close && (req.version_minor == 1 || conn_keep_alive);
    if (req.version_minor == 0) req.expect_continue = false;

    if (has_te) {
        if (req.version_minor == 0) return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
        if (content_length) return fail(400, "both Content-Length and Transfer-Encoding");
        int chunked = 0;
        bool other = false;
        bool empty = false;
        for_each_list_item(transfer_encoding, [&](std::string_view item) {
            if (item.empty())
                empty = true;
            else if (ascii_iequals(item, "chunked"))
                ++chunked;
            else
                other = true;
        });
        if (other) return fail(501, "transfer coding not implemented");
        if (empty || chunked != 1) return fail(400, "invalid Transfer-Encoding");
        state_ = State::chunk_size;
        return Status::need_more;
    }
    if (content_length) {
        if (*content_length > limits_.max_body_bytes) return fail(413, "request body too large");
        if (*content_length > 0) {
            remaining_ = *content_length;
            state_ = State::body;
            return Status::need_more;
        }
    }
    state_ = State::head;
    return Status::need_more;
}

}  // namespace tcpfault

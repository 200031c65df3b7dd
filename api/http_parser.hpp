// HTTP/1.x request parsing for the admin API, without any I/O: bytes go in (split anywhere),
// complete requests or one error status come out. Bodies are opaque bytes.
//
// What is accepted:
//  - request line `METHOD SP target SP HTTP/1.0|HTTP/1.1`; other well-formed versions -> 505;
//  - targets in origin form (`/p?q`), absolute form (`http://h/p?q`, the path is used) and `*`;
//  - lines ended by CRLF or a bare LF; blank lines before a request line are skipped;
//  - bodies framed by Content-Length (a list of identical values is allowed) or by
//    `Transfer-Encoding: chunked` (decoded; chunk extensions and trailers are dropped).
// What is rejected (status, then the caller closes the connection):
//  - 400: malformed request line, header line (incl. obs-fold, space before the colon, control
//    characters), target (`#`, bad or `%00` percent-encoding), Content-Length (sign, non-digit,
//    conflicting duplicates), both Content-Length and Transfer-Encoding, duplicate Host,
//    Transfer-Encoding on HTTP/1.0, malformed chunk framing;
//  - 413: declared Content-Length (or decoded chunked size) above max_body_bytes, detected
//    from the head alone so the body is never read;
//  - 431: request line + headers above max_header_bytes (also for chunk trailers);
//  - 501: a transfer coding other than `chunked`.
// Bytes >= 0x80 are carried as-is (no UTF-8 validation); a missing Host is tolerated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tcpfault {

struct HttpRequest {
    std::string method;  // "GET", "POST", ... (case-sensitive, as sent)
    std::string target;  // raw request target, e.g. "/api/proxies?x=1"
    std::string path;    // percent-decoded path without query, e.g. "/api/proxies"
    std::string query;   // raw query string without '?'
    std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased, in order
    std::string body;                                          // de-chunked if it was chunked
    int version_minor = 1;                                     // HTTP/1.<version_minor>
    bool keep_alive = true;        // 1.1 unless `Connection: close`; 1.0 only with keep-alive
    bool expect_continue = false;  // HTTP/1.1 `Expect: 100-continue`

    // First header with that (lower-case) name; nullptr if absent.
    const std::string* header(std::string_view lower_name) const;
};

class HttpRequestParser {
  public:
    struct Limits {
        size_t max_header_bytes = 16 * 1024;  // request line + headers (+ CR/LF); over -> 431
        size_t max_body_bytes = 1024 * 1024;  // over -> 413
    };
    enum class Status { need_more, request, error };

    HttpRequestParser() = default;
    explicit HttpRequestParser(Limits limits) : limits_(limits) {}

    // Appends bytes; parsing happens in next().
    void feed(std::string_view bytes) { buf_.append(bytes); }

    // The next complete request (pipelined requests come out one call at a time), need_more,
    // or error. An error is final: every later call returns it again.
    Status next(HttpRequest& out);

    int error_status() const { return error_status_; }                 // 400/413/431/501/505
    const std::string& error_reason() const { return error_reason_; }  // short, ASCII

    // No byte of the next request has arrived (not even a blank line): between requests.
    bool idle() const { return state_ == State::head && !started_ && pending() == 0; }
    // The head of a request was parsed and its body is still being received.
    bool in_body() const { return state_ != State::head && state_ != State::error; }
    // in_body() and that request asked for `Expect: 100-continue`.
    bool expects_continue() const { return in_body() && cur_.expect_continue; }
    // Bytes received but not yet consumed.
    size_t pending() const { return buf_.size() - pos_; }

  private:
    enum class State { head, body, chunk_size, chunk_data, chunk_data_end, trailers, error };

    Status fail(int status, const char* reason);
    Status parse_head(size_t end);
    Status finish(HttpRequest& out);
    // Consumes the next complete line into *line (without CR/LF). False when none is complete
    // yet; then *too_long tells whether more than `limit` bytes wait without a line end.
    bool next_line(size_t limit, std::string_view* line, bool* too_long);
    void compact();

    Limits limits_;
    std::string buf_;
    size_t pos_ = 0;   // consumed prefix of buf_
    size_t scan_ = 0;  // head: offset (from pos_) where the search for the blank line resumes
    State state_ = State::head;
    bool started_ = false;      // skipped blank lines count as the start of a request
    size_t skipped_ = 0;        // blank-line bytes skipped before the current request line
    uint64_t remaining_ = 0;    // body / chunk bytes still to come
    size_t trailer_bytes_ = 0;  // chunked: bytes of chunk-size lines and trailers so far
    HttpRequest cur_;
    int error_status_ = 0;
    std::string error_reason_;
};

// Percent-decodes `in` into `out`; false on a malformed escape or an encoded NUL.
bool percent_decode(std::string_view in, std::string& out);

// ASCII case-insensitive equality (header names and tokens, JSON keys the Go way).
bool ascii_iequals(std::string_view a, std::string_view b);

}  // namespace tcpfault

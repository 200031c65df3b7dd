// fuzz_ftp: the FTP control-channel rewriting core (faults/ftp_rewrite.hpp) on arbitrary
// streams split at fuzzer-chosen points.
// Invariants beyond "no crash / no sanitizer report":
//  - FtpLineFilter's output does not depend on how the stream was split into reads;
//  - with an identity rewrite, the output is the input, byte for byte;
//  - every line handed to the callback is complete (ends in '\n') and at most kMaxLine bytes;
//  - whatever parse_pasv_reply / parse_epsv_reply / parse_port_command / parse_eprt_command
//    accept, the matching format_* produces text that parses back to the same address;
//  - FtpReplyTracker only reports 3-digit codes (or 0).
#include <arpa/inet.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "ftp/ftp_rewrite.hpp"
#include "fuzz_common.hpp"

using namespace tcpfault::faults;

namespace {

bool same4(const sockaddr_in& a, const sockaddr_in& b) {
    return a.sin_family == b.sin_family && a.sin_port == b.sin_port &&
           a.sin_addr.s_addr == b.sin_addr.s_addr;
}

bool same_storage(const sockaddr_storage& a, const sockaddr_storage& b) {
    if (a.ss_family != b.ss_family) return false;
    if (a.ss_family == AF_INET)
        return same4(reinterpret_cast<const sockaddr_in&>(a),
                     reinterpret_cast<const sockaddr_in&>(b));
    const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port &&
           std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
}

// What the proxy does with a line: parse every notation, check the round trips, and replace
// PASV/EPSV/PORT/EPRT with the proxy's own (fixed) address.
std::string rewrite(std::string_view line) {
    FUZZ_CHECK(!line.empty() && line.back() == '\n');
    FUZZ_CHECK(line.size() <= FtpLineFilter::kMaxLine);
    sockaddr_in proxy{};
    proxy.sin_family = AF_INET;
    proxy.sin_port = htons(40001);
    proxy.sin_addr.s_addr = htonl(0x7f000001);

    std::string out(line);
    if (auto a = parse_pasv_reply(line)) {
        FUZZ_CHECK(a->sin_family == AF_INET);
        auto b = parse_pasv_reply(format_pasv_reply(*a));
        FUZZ_CHECK(b && same4(*a, *b));
        out = format_pasv_reply(proxy);
    }
    if (auto p = parse_epsv_reply(line)) {
        FUZZ_CHECK(*p != 0);
        auto q = parse_epsv_reply(format_epsv_reply(*p));
        FUZZ_CHECK(q && *q == *p);
        out = format_epsv_reply(40001);
    }
    if (auto a = parse_port_command(line)) {
        auto b = parse_port_command(format_port_command(*a));
        FUZZ_CHECK(b && same4(*a, *b));
        out = format_port_command(proxy);
    }
    if (auto s = parse_eprt_command(line)) {
        FUZZ_CHECK(s->ss_family == AF_INET || s->ss_family == AF_INET6);
        auto t = parse_eprt_command(format_eprt_command(reinterpret_cast<const sockaddr*>(&*s)));
        FUZZ_CHECK(t && same_storage(*s, *t));
        out = format_eprt_command(reinterpret_cast<const sockaddr*>(&proxy));
    }
    return out;
}

std::string run_filter(std::string_view stream, const std::vector<size_t>& cuts, bool identity,
                       std::vector<int>* codes) {
    FtpReplyTracker tracker;
    FtpLineFilter f([&](std::string_view line) {
        if (codes) {
            int c = tracker.complete_reply_code(line);
            FUZZ_CHECK(c == 0 || (c >= 0 && c <= 999));
            codes->push_back(c);
        }
        return identity ? std::string(line) : rewrite(line);
    });
    std::string out;
    for (std::string_view chunk : fuzz::split(stream, cuts))
        f.feed(chunk.data(), chunk.size(), out);
    f.flush(out);
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 64 * 1024) return 0;
    fuzz::Input in(data, size);
    std::vector<size_t> cuts = fuzz::read_cuts(in, /*allow_empty=*/true);
    // A cut byte scaled up lets small inputs still cross the 4 KiB line limit in pieces.
    uint8_t scale = in.byte() % 4;
    for (auto& c : cuts) c <<= (scale * 3);
    std::string_view stream = in.rest();

    std::vector<int> codes_split, codes_whole;
    std::string split_out = run_filter(stream, cuts, false, &codes_split);
    std::string whole_out = run_filter(stream, {}, false, &codes_whole);
    FUZZ_CHECK(split_out == whole_out);
    FUZZ_CHECK(codes_split == codes_whole);
    FUZZ_CHECK(run_filter(stream, cuts, true, nullptr) == stream);

    // The parsers directly on the raw text too (not only on complete lines).
    (void)rewrite(std::string(stream.substr(0, FtpLineFilter::kMaxLine - 1)) + "\n");
    return 0;
}

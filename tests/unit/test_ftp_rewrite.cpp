#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <string>

#include "ftp/ftp_rewrite.hpp"

using namespace tcpfault::faults;

namespace {
std::string ip_of(const sockaddr_in& a) {
    char b[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a.sin_addr, b, sizeof b);
    return b;
}
}  // namespace

TEST_CASE("ftp: PASV replies parse and format") {
    auto a = parse_pasv_reply("227 Entering Passive Mode (192,168,1,20,195,80).\r\n");
    REQUIRE(a);
    CHECK(ip_of(*a) == "192.168.1.20");
    CHECK(ntohs(a->sin_port) == 195 * 256 + 80);
    CHECK(format_pasv_reply(*a) == "227 Entering Passive Mode (192,168,1,20,195,80).\r\n");
    // Servers vary the text; some omit the parentheses.
    CHECK(parse_pasv_reply("227 =127,0,0,1,4,1\r\n"));
    CHECK_FALSE(parse_pasv_reply("227 Entering Passive Mode (1,2,3,4,5)\r\n"));
    CHECK_FALSE(parse_pasv_reply("227 Entering Passive Mode (1,2,3,256,5,6)\r\n"));
    CHECK_FALSE(parse_pasv_reply("227-Entering Passive Mode (1,2,3,4,5,6)\r\n"));
    CHECK_FALSE(parse_pasv_reply("200 OK\r\n"));
}

TEST_CASE("ftp: EPSV replies") {
    CHECK(parse_epsv_reply("229 Entering Extended Passive Mode (|||6446|)\r\n") == uint16_t(6446));
    CHECK(parse_epsv_reply("229 EPSV ok (!!!1234!)\n") == uint16_t(1234));
    CHECK_FALSE(parse_epsv_reply("229 Entering Extended Passive Mode (|1|1.2.3.4|6446|)\r\n"));
    CHECK_FALSE(parse_epsv_reply("229 Entering Extended Passive Mode (|||70000|)\r\n"));
    CHECK_FALSE(parse_epsv_reply("229 no parens\r\n"));
    CHECK(format_epsv_reply(6446) == "229 Entering Extended Passive Mode (|||6446|)\r\n");
}

TEST_CASE("ftp: PORT and EPRT commands, any case") {
    auto p = parse_port_command("port 10,0,0,7,19,137\r\n");
    REQUIRE(p);
    CHECK(ip_of(*p) == "10.0.0.7");
    CHECK(ntohs(p->sin_port) == 19 * 256 + 137);
    CHECK(format_port_command(*p) == "PORT 10,0,0,7,19,137\r\n");
    auto e4 = parse_eprt_command("EPRT |1|132.235.1.2|6275|\r\n");
    REQUIRE(e4);
    CHECK(format_eprt_command(reinterpret_cast<sockaddr*>(&*e4)) ==
          "EPRT |1|132.235.1.2|6275|\r\n");
    auto e6 = parse_eprt_command("EPRT |2|::1|5282|\r\n");
    REQUIRE(e6);
    CHECK(e6->ss_family == AF_INET6);
    CHECK(format_eprt_command(reinterpret_cast<sockaddr*>(&*e6)) == "EPRT |2|::1|5282|\r\n");
    CHECK_FALSE(parse_eprt_command("EPRT |3|x|1|\r\n"));
    CHECK_FALSE(parse_eprt_command("EPRT |1|999.1.1.1|1|\r\n"));
    CHECK_FALSE(parse_port_command("PORTX 1,2,3,4,5,6\r\n"));
}

TEST_CASE("ftp: line filter sees whole lines across any split and passes the rest") {
    const std::string stream = "220 hi\r\n227 Entering Passive Mode (1,2,3,4,5,6).\r\n150 ok\r\n";
    for (size_t cut = 0; cut <= stream.size(); ++cut) {
        std::string seen_lines;
        FtpLineFilter f([&](std::string_view l) {
            seen_lines += "[" + std::string(l) + "]";
            return l.substr(0, 4) == "227 " ? std::string("227 X\r\n") : std::string(l);
        });
        std::string out;
        f.feed(stream.data(), cut, out);
        f.feed(stream.data() + cut, stream.size() - cut, out);
        CHECK(out == "220 hi\r\n227 X\r\n150 ok\r\n");
        CHECK(seen_lines ==
              "[220 hi\r\n][227 Entering Passive Mode (1,2,3,4,5,6).\r\n][150 ok\r\n]");
    }
}

TEST_CASE("ftp: an over-long line is forwarded untouched, byte for byte") {
    std::string longline(FtpLineFilter::kMaxLine + 100, 'a');
    longline += "\r\n200 next\r\n";
    int calls = 0;
    FtpLineFilter f([&](std::string_view l) {
        ++calls;
        return std::string(l);
    });
    std::string out;
    for (size_t i = 0; i < longline.size(); i += 1000)
        f.feed(longline.data() + i, std::min<size_t>(1000, longline.size() - i), out);
    CHECK(out == longline);
    CHECK(calls == 1);  // only "200 next"
}

TEST_CASE("ftp: only the last line of a multi-line reply completes it") {
    FtpReplyTracker t;
    CHECK(t.complete_reply_code("220-Welcome\r\n") == 0);
    CHECK(t.complete_reply_code("227 not a reply here\r\n") == 0);
    CHECK(t.complete_reply_code("220 ready\r\n") == 220);
    CHECK(t.complete_reply_code("227 Entering Passive Mode (1,2,3,4,5,6)\r\n") == 227);
}

// Shared helpers for the libFuzzer harnesses in tests/fuzz (header-only, no project code).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

namespace fuzz {

// A failed invariant: print it and abort, so libFuzzer records a crash with the input.
[[noreturn]] inline void fail(const char* what, const char* file, int line) {
    std::fprintf(stderr, "\nINVARIANT FAILED: %s (%s:%d)\n", what, file, line);
    std::abort();
}
#define FUZZ_CHECK(cond)                                      \
    do {                                                      \
        if (!(cond)) ::fuzz::fail(#cond, __FILE__, __LINE__); \
    } while (0)

// Reads from the front of the fuzzer's input; returns 0 / empty once it is used up.
class Input {
  public:
    Input(const uint8_t* data, size_t size) : p_(data), n_(size) {}
    uint8_t byte() {
        if (n_ == 0) return 0;
        --n_;
        return *p_++;
    }
    uint16_t u16() { return static_cast<uint16_t>(byte() | (byte() << 8)); }
    std::string_view take(size_t len) {
        if (len > n_) len = n_;
        std::string_view s(reinterpret_cast<const char*>(p_), len);
        p_ += len;
        n_ -= len;
        return s;
    }
    std::string_view rest() { return take(n_); }
    size_t left() const { return n_; }

  private:
    const uint8_t* p_;
    size_t n_;
};

// Chunk sizes chosen by the fuzzer: one count byte (up to 15 cuts) then one byte per cut;
// the last chunk takes whatever is left. Zero-length chunks are allowed when `allow_empty`.
inline std::vector<size_t> read_cuts(Input& in, bool allow_empty = false) {
    size_t cuts = in.byte() % 16;
    std::vector<size_t> sizes;
    for (size_t i = 0; i < cuts; ++i) {
        size_t s = in.byte();
        if (s == 0 && !allow_empty) s = 1;
        sizes.push_back(s);
    }
    return sizes;
}

// Splits `s` by `sizes` (clamped), the remainder as a last chunk.
inline std::vector<std::string_view> split(std::string_view s, const std::vector<size_t>& sizes) {
    std::vector<std::string_view> out;
    size_t pos = 0;
    for (size_t n : sizes) {
        if (pos >= s.size()) break;
        size_t len = n < s.size() - pos ? n : s.size() - pos;
        out.push_back(s.substr(pos, len));
        pos += len;
    }
    if (pos < s.size() || out.empty()) out.push_back(s.substr(pos));
    return out;
}

}  // namespace fuzz

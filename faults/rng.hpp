// The per-connection random engine (jitter, slice sizes), seeded from the process seed and
// the connection id so a seeded run repeats.
#pragma once

#include <cstdint>

namespace tcpfault::faults {

// SplitMix64 as a C++ random engine: 8 bytes of state per connection where std::mt19937_64
// carries 2.5 KB, and plenty for jitter and slice sizes.
class SplitMix64 {
  public:
    using result_type = uint64_t;
    explicit SplitMix64(uint64_t seed = 0) : state_(seed) {}
    void seed(uint64_t s) { state_ = s; }
    static constexpr result_type min() { return 0; }
    static constexpr result_type max() { return ~result_type{0}; }
    result_type operator()() {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

  private:
    uint64_t state_;
};

}  // namespace tcpfault::faults

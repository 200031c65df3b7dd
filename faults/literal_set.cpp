#include "faults/literal_set.hpp"

#include <algorithm>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <string_view>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace tcpfault::faults {

namespace {

// Rough share of each byte value in typical traffic (text protocols and binary payloads):
// letters, digits, space and line ends are common; most other bytes are rare.
double byte_share(uint8_t c) {
    if (c == ' ') return 0.12;
    if (c == 'e' || c == 't' || c == 'a' || c == 'o') return 0.06;
    if (c >= 'a' && c <= 'z') return 0.03;
    if (c >= 'A' && c <= 'Z') return 0.012;
    if (c >= '0' && c <= '9') return 0.012;
    if (c == '\r' || c == '\n' || c == 0 || c == 0xff) return 0.02;
    if (c >= 0x21 && c < 0x7f) return 0.006;
    return 0.002;
}

size_t popcount(uint64_t x) {
    return static_cast<size_t>(__builtin_popcountll(x));
}

}  // namespace

LiteralSet::LiteralSet(std::vector<std::string> literals) : literals_(std::move(literals)) {
    if (literals_.empty()) throw std::invalid_argument("LiteralSet: no literals");
    min_len_ = SIZE_MAX;
    for (const auto& l : literals_) {
        if (l.empty()) throw std::invalid_argument("LiteralSet: empty literal");
        min_len_ = std::min(min_len_, l.size());
        max_len_ = std::max(max_len_, l.size());
    }
    build_automaton();
    choose_fingerprints();
    build_teddy();
    kernel_ = filter_generic;
#if defined(__aarch64__)
    // NEON's byte table lookup (tbl) makes the portable Teddy fast there.
    if (prints_.size() > 2) kernel_ = teddy_generic;
#endif
#if defined(__x86_64__)
    __builtin_cpu_init();
    // Teddy where it beats comparing each fingerprint (measured on AMD EPYC, Zen 4: per
    // fingerprint ~0.0065 ns/byte with AVX-512, ~0.008 with AVX2; Teddy ~0.023 and ~0.05).
    if (__builtin_cpu_supports("avx512bw"))
        kernel_ = prints_.size() > 2 ? teddy_avx512 : filter_avx512;
    else if (__builtin_cpu_supports("avx2"))
        kernel_ = prints_.size() > 5 ? teddy_avx2 : filter_avx2;
#endif
}

void LiteralSet::build_teddy() {
    // Literals with the same first bytes share a bucket; similar ones (sorted) go to the same
    // bucket, so its nibble sets stay small.
    teddy_len_ = std::min<size_t>(3, min_len_);
    std::vector<std::string> prefixes;
    for (const auto& l : literals_) prefixes.push_back(l.substr(0, teddy_len_));
    std::sort(prefixes.begin(), prefixes.end());
    prefixes.erase(std::unique(prefixes.begin(), prefixes.end()), prefixes.end());
    for (size_t k = 0; k < prefixes.size(); ++k) {
        auto bucket = static_cast<uint8_t>(1u << (k * 8 / prefixes.size()));
        for (size_t j = 0; j < teddy_len_; ++j) {
            auto c = static_cast<uint8_t>(prefixes[k][j]);
            teddy_lo_[j][c & 15] |= bucket;
            teddy_hi_[j][c >> 4] |= bucket;
        }
    }
}

bool LiteralSet::use_kernel(const char* name) {
    std::string_view k(name);
    if (k == "generic") {
        kernel_ = filter_generic;
        return true;
    }
    if (k == "teddy-generic") {
        kernel_ = teddy_generic;
        return true;
    }
#if defined(__x86_64__)
    bool avx2 = __builtin_cpu_supports("avx2"), avx512 = __builtin_cpu_supports("avx512bw");
    Kernel want = k == "avx2" && avx2               ? filter_avx2
                  : k == "avx512bw" && avx512       ? filter_avx512
                  : k == "teddy-avx2" && avx2       ? teddy_avx2
                  : k == "teddy-avx512bw" && avx512 ? teddy_avx512
                                                    : nullptr;
    if (want != nullptr) {
        kernel_ = want;
        return true;
    }
#endif
    return false;
}

const char* LiteralSet::kernel() const {
#if defined(__x86_64__)
    if (kernel_ == filter_avx512) return "avx512bw";
    if (kernel_ == filter_avx2) return "avx2";
    if (kernel_ == teddy_avx512) return "teddy-avx512bw";
    if (kernel_ == teddy_avx2) return "teddy-avx2";
#endif
    if (kernel_ == teddy_generic) return "teddy-generic";
    return "generic";
}

void LiteralSet::build_automaton() {
    // Byte classes: each byte some literal uses gets its own; all others share the last.
    bool used[256] = {};
    for (const auto& l : literals_)
        for (unsigned char c : l) used[c] = true;
    uint32_t n = 0;
    for (int c = 0; c < 256; ++c)
        if (used[c]) class_of_[c] = static_cast<uint8_t>(n++);
    for (int c = 0; c < 256; ++c)
        if (!used[c]) class_of_[c] = static_cast<uint8_t>(n);
    classes_ = n < 256 ? n + 1 : 256;

    // The trie (transitions missing: kNone), then failure links breadth first, which also
    // fill in the missing transitions: a complete DFA.
    constexpr State kNone = UINT32_MAX;
    next_.assign(classes_, kNone);
    out_.assign(1, -1);
    depth_.assign(1, 0);
    for (size_t id = 0; id < literals_.size(); ++id) {
        State s = 0;
        for (unsigned char c : literals_[id]) {
            State& t = next_[s * classes_ + class_of_[c]];
            if (t == kNone) {
                t = static_cast<State>(out_.size());
                next_.insert(next_.end(), classes_, kNone);
                out_.push_back(-1);
                depth_.push_back(depth_[s] + 1);
            }
            s = next_[s * classes_ + class_of_[c]];
        }
        if (out_[s] >= 0) throw std::invalid_argument("LiteralSet: duplicate literal");
        out_[s] = static_cast<int32_t>(id);
    }
    std::vector<State> fail(out_.size(), 0);
    dict_.assign(out_.size(), 0);
    std::deque<State> queue;
    for (uint32_t k = 0; k < classes_; ++k) {
        State& t = next_[k];
        if (t == kNone) {
            t = 0;
        } else {
            fail[t] = 0;
            queue.push_back(t);
        }
    }
    while (!queue.empty()) {
        State s = queue.front();
        queue.pop_front();
        dict_[s] = out_[fail[s]] >= 0 ? fail[s] : dict_[fail[s]];
        for (uint32_t k = 0; k < classes_; ++k) {
            State& t = next_[s * classes_ + k];
            if (t == kNone) {
                t = next_[fail[s] * classes_ + k];
            } else {
                fail[t] = next_[fail[s] * classes_ + k];
                queue.push_back(t);
            }
        }
    }
    if (out_.size() >= kOutput) throw std::invalid_argument("LiteralSet: too many states");
    for (State& t : next_)
        if (out_[t] >= 0 || dict_[t] != 0) t |= kOutput;
}

void LiteralSet::choose_fingerprints() {
    // Offsets o1 < o2 inside the shortest literal (both 0 for 1-byte literals), chosen for the
    // least expected work per byte: each distinct fingerprint costs a compare per position,
    // and each position that matches one costs a check of its literals.
    size_t span = std::min<size_t>(min_len_, 32);
    double best = 0;
    bool have = false;
    std::vector<uint16_t> pairs;  // reused: b1 << 8 | b2
    pairs.reserve(literals_.size());
    auto consider = [&](size_t a, size_t b) {
        pairs.clear();
        for (const auto& l : literals_)
            pairs.push_back(static_cast<uint16_t>(static_cast<uint8_t>(l[a]) << 8 |
                                                  static_cast<uint8_t>(l[b])));
        std::sort(pairs.begin(), pairs.end());
        pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
        double candidates = 0;
        for (uint16_t xy : pairs) {
            auto x = static_cast<uint8_t>(xy >> 8), y = static_cast<uint8_t>(xy);
            candidates += a == b ? byte_share(x) : byte_share(x) * byte_share(y);
        }
        // ~0.01 ns per fingerprint and byte against ~20 ns per candidate checked.
        double cost = 0.01 * static_cast<double>(pairs.size()) + 20 * candidates;
        if (!have || cost < best) {
            have = true;
            best = cost;
            o1_ = a;
            o2_ = b;
        }
    };
    if (span == 1) {
        consider(0, 0);
    } else {
        for (size_t a = 0; a < span; ++a)
            for (size_t b = a + 1; b < span; ++b) consider(a, b);
    }
    for (size_t id = 0; id < literals_.size(); ++id) {
        auto b1 = static_cast<uint8_t>(literals_[id][o1_]);
        auto b2 = static_cast<uint8_t>(literals_[id][o2_]);
        auto it = std::find_if(prints_.begin(), prints_.end(),
                               [&](const Fingerprint& f) { return f.b1 == b1 && f.b2 == b2; });
        if (it == prints_.end()) {
            prints_.push_back(Fingerprint{b1, b2, {}});
            it = prints_.end() - 1;
        }
        it->ids.push_back(static_cast<uint32_t>(id));
    }
}

LiteralSet::State LiteralSet::advance(State s, const char* data, size_t n) const {
    const auto* p = reinterpret_cast<const uint8_t*>(data);
    // The state depends on the last max_len() bytes only.
    if (n >= max_len_) {
        s = 0;
        p += n - max_len_;
        n = max_len_;
    }
    for (size_t i = 0; i < n; ++i) s = step(s, p[i]);
    return s;
}

// The scalar end of every kernel: candidate starts from i to last.
size_t LiteralSet::filter_tail(const LiteralSet& set, const uint8_t* p, size_t i, size_t last,
                               uint32_t* out, size_t k, size_t cap, size_t* resume) {
    for (; i <= last; ++i) {
        for (const Fingerprint& f : set.prints_) {
            if (p[i + set.o1_] != f.b1 || p[i + set.o2_] != f.b2) continue;
            if (k == cap) {
                *resume = i;
                return k;
            }
            out[k++] = static_cast<uint32_t>(i);
            break;
        }
    }
    *resume = SIZE_MAX;
    return k;
}

// Candidate starts i in [0, n - min_len]: positions where some fingerprint's two bytes are.
// At most `cap` of them; when full, *resume is where to go on (else SIZE_MAX).
size_t LiteralSet::filter_generic(const LiteralSet& set, const uint8_t* p, size_t n, uint32_t* out,
                                  size_t cap, size_t* resume) {
    using V = uint8_t __attribute__((vector_size(16)));
    using U = uint64_t __attribute__((vector_size(16)));
    constexpr size_t W = 16;
    const size_t o1 = set.o1_, o2 = set.o2_;
    const size_t last = n - set.min_len_;  // n >= min_len here
    size_t k = 0;
    size_t i = 0;
    for (; i + W - 1 <= last; i += W) {  // i + W - 1 + o2 < n: the loads stay inside
        V x, y;
        std::memcpy(&x, p + i + o1, W);
        std::memcpy(&y, p + i + o2, W);
        V m = {};
        for (const Fingerprint& f : set.prints_) m |= (x == f.b1) & (y == f.b2);
        U u;
        std::memcpy(&u, &m, sizeof u);
        if ((u[0] | u[1]) == 0) continue;
        if (k + W > cap) {
            *resume = i;
            return k;
        }
        for (size_t j = 0; j < W; ++j)
            if (m[j] != 0) out[k++] = static_cast<uint32_t>(i + j);
    }
    return filter_tail(set, p, i, last, out, k, cap, resume);
}

// Teddy in GCC's portable vector code: __builtin_shuffle is one table lookup instruction on
// NEON (tbl) and with SSSE3 (pshufb); on a plain x86-64 baseline it is emulated (slow), and
// x86-64 has the AVX2 kernels anyway.
namespace {
using V16 = uint8_t __attribute__((vector_size(16)));
// table[idx[q] & 15] for each of the 16 bytes.
inline V16 lookup16(V16 table, V16 idx) {
#if defined(__aarch64__)
    return reinterpret_cast<V16>(
        vqtbl1q_u8(reinterpret_cast<uint8x16_t>(table), reinterpret_cast<uint8x16_t>(idx & 15)));
#elif defined(__clang__)
    V16 r;  // clang has no __builtin_shuffle with a variable mask (this path: tests only)
    for (int q = 0; q < 16; ++q) r[q] = table[idx[q] & 15];
    return r;
#else
    return __builtin_shuffle(table, idx);
#endif
}
}  // namespace

size_t LiteralSet::teddy_generic(const LiteralSet& set, const uint8_t* p, size_t n, uint32_t* out,
                                 size_t cap, size_t* resume) {
    using V = V16;
    using U = uint64_t __attribute__((vector_size(16)));
    constexpr size_t W = 16;
    const size_t last = n - set.min_len_;
    const size_t m = set.teddy_len_;
    V lo[3], hi[3];
    for (size_t j = 0; j < m; ++j) {
        std::memcpy(&lo[j], set.teddy_lo_[j], W);
        std::memcpy(&hi[j], set.teddy_hi_[j], W);
    }
    size_t k = 0;
    size_t i = 0;
    for (; i + W - 1 <= last; i += W) {
        V acc = ~V{};
        for (size_t j = 0; j < m; ++j) {
            V v;
            std::memcpy(&v, p + i + j, W);
            acc &= lookup16(lo[j], v & 15) & lookup16(hi[j], v >> 4);
        }
        U u;
        std::memcpy(&u, &acc, sizeof u);
        if ((u[0] | u[1]) == 0) continue;
        if (k + W > cap) {
            *resume = i;
            return k;
        }
        for (size_t q = 0; q < W; ++q)
            if (acc[q] != 0) out[k++] = static_cast<uint32_t>(i + q);
    }
    return filter_tail(set, p, i, last, out, k, cap, resume);
}

#if defined(__x86_64__)
namespace {
__attribute__((target("avx2"))) inline __m256i hit(__m256i x, __m256i y, __m256i pa, __m256i pb) {
    return _mm256_and_si256(_mm256_cmpeq_epi8(x, pa), _mm256_cmpeq_epi8(y, pb));
}
// Positions of the 64 at x where x[i] == a and y[i] == b.
__attribute__((target("avx512bw"))) inline __mmask64 pair_mask(const uint8_t* x, const uint8_t* y,
                                                               __m512i a, __m512i b) {
    return _mm512_mask_cmpeq_epi8_mask(_mm512_cmpeq_epi8_mask(_mm512_loadu_si512(x), a),
                                       _mm512_loadu_si512(y), b);
}
}  // namespace

__attribute__((target("avx2"))) size_t LiteralSet::filter_avx2(const LiteralSet& set,
                                                               const uint8_t* p, size_t n,
                                                               uint32_t* out, size_t cap,
                                                               size_t* resume) {
    constexpr size_t W = 64;  // two 32-byte vectors per step
    const size_t o1 = set.o1_, o2 = set.o2_;
    const size_t last = n - set.min_len_;
    const size_t nf = set.prints_.size();
    const size_t fast = std::min<size_t>(nf, 8);
    __m256i a[8], b[8];
    for (size_t f = 0; f < fast; ++f) {
        a[f] = _mm256_set1_epi8(static_cast<char>(set.prints_[f].b1));
        b[f] = _mm256_set1_epi8(static_cast<char>(set.prints_[f].b2));
    }
    size_t k = 0;
    size_t i = 0;
    for (; i + W - 1 <= last; i += W) {
        const auto* px = reinterpret_cast<const __m256i*>(p + i + o1);
        const auto* py = reinterpret_cast<const __m256i*>(p + i + o2);
        __m256i x0 = _mm256_loadu_si256(px), x1 = _mm256_loadu_si256(px + 1);
        __m256i y0 = _mm256_loadu_si256(py), y1 = _mm256_loadu_si256(py + 1);
        __m256i m0 = hit(x0, y0, a[0], b[0]);
        __m256i m1 = hit(x1, y1, a[0], b[0]);
        for (size_t f = 1; f < fast; ++f) {
            m0 = _mm256_or_si256(m0, hit(x0, y0, a[f], b[f]));
            m1 = _mm256_or_si256(m1, hit(x1, y1, a[f], b[f]));
        }
        for (size_t f = fast; f < nf; ++f) {
            __m256i af = _mm256_set1_epi8(static_cast<char>(set.prints_[f].b1));
            __m256i bf = _mm256_set1_epi8(static_cast<char>(set.prints_[f].b2));
            m0 = _mm256_or_si256(m0, hit(x0, y0, af, bf));
            m1 = _mm256_or_si256(m1, hit(x1, y1, af, bf));
        }
        __m256i any = _mm256_or_si256(m0, m1);
        if (_mm256_testz_si256(any, any)) continue;
        uint64_t bits =
            static_cast<uint32_t>(_mm256_movemask_epi8(m0)) |
            (static_cast<uint64_t>(static_cast<uint32_t>(_mm256_movemask_epi8(m1))) << 32);
        if (k + popcount(bits) > cap) {
            *resume = i;
            return k;
        }
        for (; bits != 0; bits &= bits - 1)
            out[k++] = static_cast<uint32_t>(i + static_cast<size_t>(__builtin_ctzll(bits)));
    }
    return filter_tail(set, p, i, last, out, k, cap, resume);
}

__attribute__((target("avx512bw"))) size_t LiteralSet::filter_avx512(const LiteralSet& set,
                                                                     const uint8_t* p, size_t n,
                                                                     uint32_t* out, size_t cap,
                                                                     size_t* resume) {
    constexpr size_t W = 64;
    const size_t o1 = set.o1_, o2 = set.o2_;
    const size_t last = n - set.min_len_;
    const size_t nf = set.prints_.size();
    const size_t fast = std::min<size_t>(nf, 8);
    __m512i a[8], b[8];
    for (size_t f = 0; f < fast; ++f) {
        a[f] = _mm512_set1_epi8(static_cast<char>(set.prints_[f].b1));
        b[f] = _mm512_set1_epi8(static_cast<char>(set.prints_[f].b2));
    }
    size_t k = 0;
    size_t i = 0;
    if (nf == 1) {
        // One fingerprint (the common case: a few rules, or similar literals): 256 bytes per
        // step, one test for all four masks.
        const uint8_t* x = p + o1;
        const uint8_t* y = p + o2;
        for (; i + 4 * W - 1 <= last; i += 4 * W) {
            __mmask64 m[4] = {pair_mask(x + i, y + i, a[0], b[0]),
                              pair_mask(x + i + W, y + i + W, a[0], b[0]),
                              pair_mask(x + i + 2 * W, y + i + 2 * W, a[0], b[0]),
                              pair_mask(x + i + 3 * W, y + i + 3 * W, a[0], b[0])};
            if ((m[0] | m[1] | m[2] | m[3]) == 0) continue;
            for (size_t q = 0; q < 4; ++q) {
                uint64_t bits = m[q];
                if (k + popcount(bits) > cap) {
                    *resume = i + q * W;
                    return k;
                }
                for (; bits != 0; bits &= bits - 1)
                    out[k++] = static_cast<uint32_t>(i + q * W +
                                                     static_cast<size_t>(__builtin_ctzll(bits)));
            }
        }
    }
    for (; i + W - 1 <= last; i += W) {
        __m512i x = _mm512_loadu_si512(p + i + o1);
        __m512i y = _mm512_loadu_si512(p + i + o2);
        __mmask64 m = _mm512_mask_cmpeq_epi8_mask(_mm512_cmpeq_epi8_mask(x, a[0]), y, b[0]);
        for (size_t f = 1; f < fast; ++f)
            m |= _mm512_mask_cmpeq_epi8_mask(_mm512_cmpeq_epi8_mask(x, a[f]), y, b[f]);
        for (size_t f = fast; f < nf; ++f) {
            __m512i af = _mm512_set1_epi8(static_cast<char>(set.prints_[f].b1));
            __m512i bf = _mm512_set1_epi8(static_cast<char>(set.prints_[f].b2));
            m |= _mm512_mask_cmpeq_epi8_mask(_mm512_cmpeq_epi8_mask(x, af), y, bf);
        }
        if (m == 0) continue;
        uint64_t bits = m;
        if (k + popcount(bits) > cap) {
            *resume = i;
            return k;
        }
        for (; bits != 0; bits &= bits - 1)
            out[k++] = static_cast<uint32_t>(i + static_cast<size_t>(__builtin_ctzll(bits)));
    }
    return filter_tail(set, p, i, last, out, k, cap, resume);
}

// Teddy: a position passes if, for some bucket, each of the literals' first bytes there has
// its low and its high nibble in that bucket's sets. Candidates are then checked against the
// fingerprints (verify), like the other kernels' (filter_tail for the end of the read).
__attribute__((target("avx2"))) size_t LiteralSet::teddy_avx2(const LiteralSet& set,
                                                              const uint8_t* p, size_t n,
                                                              uint32_t* out, size_t cap,
                                                              size_t* resume) {
    constexpr size_t W = 32;
    const size_t last = n - set.min_len_;
    const size_t m = set.teddy_len_;
    __m256i lo[3], hi[3];
    for (size_t j = 0; j < m; ++j) {
        lo[j] = _mm256_broadcastsi128_si256(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(set.teddy_lo_[j])));
        hi[j] = _mm256_broadcastsi128_si256(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(set.teddy_hi_[j])));
    }
    const __m256i nib = _mm256_set1_epi8(0x0f);
    size_t k = 0;
    size_t i = 0;
    for (; i + W - 1 <= last; i += W) {  // loads up to i + W - 1 + m - 1 < n (m <= min_len)
        __m256i acc = _mm256_set1_epi8(-1);
        for (size_t j = 0; j < m; ++j) {
            __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + j));
            __m256i l = _mm256_shuffle_epi8(lo[j], _mm256_and_si256(v, nib));
            __m256i h = _mm256_shuffle_epi8(hi[j], _mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
            acc = _mm256_and_si256(acc, _mm256_and_si256(l, h));
        }
        if (_mm256_testz_si256(acc, acc)) continue;
        uint32_t bits = ~static_cast<uint32_t>(
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(acc, _mm256_setzero_si256())));
        if (k + popcount(bits) > cap) {
            *resume = i;
            return k;
        }
        for (; bits != 0; bits &= bits - 1)
            out[k++] = static_cast<uint32_t>(i + static_cast<size_t>(__builtin_ctz(bits)));
    }
    return filter_tail(set, p, i, last, out, k, cap, resume);
}

__attribute__((target("avx512bw"))) size_t LiteralSet::teddy_avx512(const LiteralSet& set,
                                                                    const uint8_t* p, size_t n,
                                                                    uint32_t* out, size_t cap,
                                                                    size_t* resume) {
    constexpr size_t W = 64;
    const size_t last = n - set.min_len_;
    const size_t m = set.teddy_len_;
    __m512i lo[3], hi[3];
    for (size_t j = 0; j < m; ++j) {
        // The 16-byte tables in each 128-bit lane (vpshufb looks up within lanes).
        uint8_t l4[64], h4[64];
        for (size_t q = 0; q < 4; ++q) {
            std::memcpy(l4 + 16 * q, set.teddy_lo_[j], 16);
            std::memcpy(h4 + 16 * q, set.teddy_hi_[j], 16);
        }
        lo[j] = _mm512_loadu_si512(l4);
        hi[j] = _mm512_loadu_si512(h4);
    }
    const __m512i nib = _mm512_set1_epi8(0x0f);
    size_t k = 0;
    size_t i = 0;
    for (; i + W - 1 <= last; i += W) {
        __m512i acc = _mm512_set1_epi8(-1);
        for (size_t j = 0; j < m; ++j) {
            __m512i v = _mm512_loadu_si512(p + i + j);
            __m512i l = _mm512_shuffle_epi8(lo[j], _mm512_and_si512(v, nib));
            __m512i h = _mm512_shuffle_epi8(hi[j], _mm512_and_si512(_mm512_srli_epi16(v, 4), nib));
            acc = _mm512_and_si512(acc, _mm512_and_si512(l, h));
        }
        uint64_t bits = _mm512_test_epi8_mask(acc, acc);
        if (bits == 0) continue;
        if (k + popcount(bits) > cap) {
            *resume = i;
            return k;
        }
        for (; bits != 0; bits &= bits - 1)
            out[k++] = static_cast<uint32_t>(i + static_cast<size_t>(__builtin_ctzll(bits)));
    }
    return filter_tail(set, p, i, last, out, k, cap, resume);
}
#endif

}  // namespace tcpfault::faults

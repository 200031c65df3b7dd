// Every `data` literal of one direction of a proxy's rules, searched in ONE pass over a chunk,
// with a per-connection state of 4 bytes that carries partial matches across reads.
//
// Two parts, built once per config snapshot and shared (immutable) by every connection:
//  - an Aho-Corasick automaton over the literals (a DFA on byte classes: only the bytes the
//    literals use get a column of their own), for what crosses a read boundary: a match that
//    began in an earlier read ends within the first `max_len()` bytes of this one, and the
//    state carried into the next read depends only on the last `max_len()` bytes of this one;
//  - a SIMD filter for everything inside a read: each literal has a fingerprint, its bytes at
//    two offsets (o1, o2) chosen for the whole set so that as many literals as possible share
//    one and the bytes are rare in typical traffic ("never-sent-marker-1" and "-2" share one).
//    Up to 4 distinct fingerprints, each is compared at 32 (AVX2) or 64 (AVX-512BW) positions
//    per step. With more, the filter is Hyperscan's "Teddy": the literals' first 3 bytes, in 8
//    buckets, looked up by nibble with byte shuffles, so its cost does not grow with the
//    number of literals. Only a position that passes is compared with the literals.
// So a chunk costs one filter pass plus at most 2 x max_len() automaton steps (usually
// max_len(): a read seldom starts inside a partial match).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tcpfault::faults {

class LiteralSet {
  public:
    using State = uint32_t;  // 0: nothing of any literal pending

    // Non-empty, distinct literals; their ids are their indexes here.
    explicit LiteralSet(std::vector<std::string> literals);

    size_t size() const { return literals_.size(); }
    const std::string& literal(size_t id) const { return literals_[id]; }
    size_t max_len() const { return max_len_; }
    // The filter kernel in use ("avx512bw", "avx2", "teddy-avx512bw", "teddy-avx2", "generic",
    // "teddy-generic": GCC vector code, a byte shuffle per lookup, for NEON), for diagnostics
    // and tests.
    const char* kernel() const;

    // Calls hit(end, id) for every occurrence of a literal that ends inside [p, p+n), given the
    // state after the bytes before p (occurrences that began there included). `end` is the
    // offset in [p, p+n] just past the occurrence. Occurrences come in no particular order and
    // one may be reported twice; the first end of each literal is the minimum reported.
    template <class Hit>
    void scan(State s, const char* p, size_t n, Hit&& hit) const;
    // The state after [p, p+n), given the state before.
    State advance(State s, const char* p, size_t n) const;

    // Uses the named kernel (see kernel()); false if this CPU lacks it. Tests compare them.
    bool use_kernel(const char* name);

  private:
    struct Fingerprint {
        uint8_t b1, b2;
        std::vector<uint32_t> ids;  // literals with these bytes at o1, o2
    };
    using Kernel = size_t (*)(const LiteralSet&, const uint8_t* p, size_t n, uint32_t* out,
                              size_t cap, size_t* resume);

    // A transition's target, with kOutput set when some literal ends there (itself or down
    // its suffix chain): the common step is a load, a mask and a test.
    static constexpr State kOutput = State{1} << 31;
    State edge(State s, uint8_t c) const { return next_[s * classes_ + class_of_[c]]; }
    State step(State s, uint8_t c) const { return edge(s, c) & ~kOutput; }
    template <class Hit>
    void run_dfa(State& s, const uint8_t* p, size_t n, size_t base, Hit&& hit) const;
    template <class Hit>
    void verify(const uint8_t* p, size_t n, size_t i, Hit&& hit) const;
    void build_automaton();
    void choose_fingerprints();
    void build_teddy();

    static size_t filter_tail(const LiteralSet&, const uint8_t* p, size_t i, size_t last,
                              uint32_t* out, size_t k, size_t cap, size_t* resume);
    static size_t filter_generic(const LiteralSet&, const uint8_t*, size_t, uint32_t*, size_t,
                                 size_t*);
    static size_t teddy_generic(const LiteralSet&, const uint8_t*, size_t, uint32_t*, size_t,
                                size_t*);
#if defined(__x86_64__)
    static size_t filter_avx2(const LiteralSet&, const uint8_t*, size_t, uint32_t*, size_t,
                              size_t*);
    static size_t filter_avx512(const LiteralSet&, const uint8_t*, size_t, uint32_t*, size_t,
                                size_t*);
    static size_t teddy_avx2(const LiteralSet&, const uint8_t*, size_t, uint32_t*, size_t, size_t*);
    static size_t teddy_avx512(const LiteralSet&, const uint8_t*, size_t, uint32_t*, size_t,
                               size_t*);
#endif

    std::vector<std::string> literals_;
    size_t min_len_ = 0;
    size_t max_len_ = 0;
    // The automaton: next_[state * classes_ + class] (| kOutput), the literal a state completes
    // (-1), the next state down its suffix chain that completes one (0: none), and its depth.
    uint8_t class_of_[256] = {};
    uint32_t classes_ = 1;
    std::vector<State> next_;
    std::vector<int32_t> out_;
    std::vector<State> dict_;
    std::vector<uint32_t> depth_;
    // The filter.
    size_t o1_ = 0, o2_ = 0;
    std::vector<Fingerprint> prints_;
    // Teddy: for the literals' bytes 0..teddy_len_-1, per low and high nibble, the buckets
    // (bits) holding a literal with that nibble there.
    size_t teddy_len_ = 0;
    uint8_t teddy_lo_[3][16] = {};
    uint8_t teddy_hi_[3][16] = {};
    Kernel kernel_ = nullptr;
};

template <class Hit>
void LiteralSet::run_dfa(State& s, const uint8_t* p, size_t n, size_t base, Hit&& hit) const {
    for (size_t i = 0; i < n; ++i) {
        State t = edge(s, p[i]);
        s = t & ~kOutput;
        if (t & kOutput) [[unlikely]] {
            for (State o = out_[s] >= 0 ? s : dict_[s]; o != 0; o = dict_[o])
                hit(base + i + 1, static_cast<size_t>(out_[o]));
        }
    }
}

template <class Hit>
void LiteralSet::verify(const uint8_t* p, size_t n, size_t i, Hit&& hit) const {
    for (const Fingerprint& f : prints_) {
        if (p[i + o1_] != f.b1 || p[i + o2_] != f.b2) continue;
        for (uint32_t id : f.ids) {
            const std::string& lit = literals_[id];
            if (i + lit.size() <= n &&
                std::char_traits<char>::compare(reinterpret_cast<const char*>(p + i), lit.data(),
                                                lit.size()) == 0)
                hit(i + lit.size(), static_cast<size_t>(id));
        }
    }
}

template <class Hit>
void LiteralSet::scan(State s, const char* data, size_t n, Hit&& hit) const {
    const auto* p = reinterpret_cast<const uint8_t*>(data);
    // Occurrences that began before p: run the automaton until its current partial match
    // starts inside this read (at most max_len() bytes).
    for (size_t i = 0; s != 0 && i < n; ++i) {
        run_dfa(s, p + i, 1, i, hit);
        if (depth_[s] <= i + 1) break;
    }
    // Occurrences inside the read: candidates from the filter, in batches.
    if (n < min_len_) return;
    uint32_t cand[256];
    size_t from = 0;
    for (;;) {
        size_t resume = SIZE_MAX;
        size_t k = kernel_(*this, p + from, n - from, cand, 256, &resume);
        for (size_t j = 0; j < k; ++j)
            verify(p + from, n - from, cand[j],
                   [&](size_t end, size_t id) { hit(from + end, id); });
        if (resume == SIZE_MAX) break;
        from += resume;
    }
}

}  // namespace tcpfault::faults

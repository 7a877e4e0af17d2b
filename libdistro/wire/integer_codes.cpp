#include "wire/integer_codes.hpp"

#include <bit>
#include <string>

#include "core/error.hpp"

namespace distro::wire {

namespace {

inline uint64_t low_mask(unsigned bits) { return bits >= 64 ? ~uint64_t(0) : (uint64_t(1) << bits) - 1; }

}  // namespace

// Codes of more than 31 bits (values of 2^15 - 1 and more): zeros, the 1 and the suffix separately.
void put_exp_golomb_long(BitWriter& w, uint64_t v) {
  uint64_t x = v + 1;
  unsigned z = unsigned(std::bit_width(x)) - 1;
  w.put_wide(0, z);
  w.put(1, 1);
  w.put_wide(x & low_mask(z), z);
}

// Codes whose prefix does not fit the peeked word with its suffix (more than 28 zeros). Counts zeros
// 32 at a time so a corrupt stream of zeros stops at the limit.
uint64_t get_exp_golomb_long(BitReader& r) {
  unsigned lead = 0;
  for (;;) {
    uint32_t w32 = uint32_t(r.peek_word());
    if (w32 != 0) {
      unsigned t = unsigned(std::countr_zero(w32));
      lead += t;
      if (lead > kMaxExpGolombPrefix) break;
      r.skip(t + 1);
      return ((uint64_t(1) << lead) | r.get_wide(lead)) - 1;
    }
    r.skip(32);
    lead += 32;
    if (lead > kMaxExpGolombPrefix) break;
  }
  fail(Code::corrupt, "exp-Golomb code with more than " + std::to_string(kMaxExpGolombPrefix) +
                          " leading zero bits at bit " + std::to_string(r.position()));
}

// Inline forms for the BIC loops (the hot path); the exported functions wrap them.
namespace {

// Both are branch-free in the short/long choice: on random indices it goes either way about as often,
// and a mispredicted branch costs more than computing both forms.
inline void truncated_put(BitWriter& w, uint32_t v, uint32_t n) {
  if (n <= 1) return;
  unsigned b = unsigned(std::bit_width(n)) - 1;
  uint64_t u = (uint64_t(2) << b) - n;  // number of b-bit (short) codewords
  // Long: y = v + u as the b-bit field y >> 1, then the bit y & 1, written as one (b + 1)-bit field.
  uint64_t y = v + u;
  uint64_t is_long = v >= u;
  uint64_t long_code = (y >> 1) | ((y & 1) << b);
  w.put(v ^ ((v ^ long_code) & (0 - is_long)), b + unsigned(is_long));  // a select by mask, branch-free
}

inline uint32_t truncated_get(BitReader& r, uint32_t n) {
  if (n <= 1) return 0;
  unsigned b = unsigned(std::bit_width(n)) - 1;
  uint64_t u = (uint64_t(2) << b) - n;
  uint64_t word = r.peek_word();  // b + 1 <= 32 bits are all in it
  uint64_t x = word & low_mask(b);
  uint64_t is_long = x >= u;
  uint64_t long_v = ((x << 1) | ((word >> b) & 1)) - u;
  uint64_t v = x ^ ((x ^ long_v) & (0 - is_long));  // a select by mask: compilers keep it branch-free
  r.skip(b + unsigned(is_long));  // throws "truncated" if the code runs past the end
  return uint32_t(v);
}

}  // namespace

void put_truncated(BitWriter& w, uint32_t v, uint32_t n) { truncated_put(w, v, n); }
uint32_t get_truncated(BitReader& r, uint32_t n) { return truncated_get(r, n); }

unsigned truncated_bits(uint32_t v, uint32_t n) {
  if (n <= 1) return 0;
  unsigned b = unsigned(std::bit_width(n)) - 1;
  uint64_t u = (uint64_t(2) << b) - n;
  return v < u ? b : b + 1;
}

// Binary interpolative coding. The middle element x[m], m = k / 2, of values in [lo, hi] must lie in
// [lo + m, hi - (k - 1 - m)] (room for m smaller and k - 1 - m larger distinct values), so it is sent
// in truncated binary over that range; then the left half in [lo, x[m] - 1] and the right half in
// [x[m] + 1, hi]. When the range holds exactly k values every value is implied and no bits are
// spent (the recursion would send only n == 1 codes); both sides stop there, which keeps dense sets
// (k close to universe) at O(k).
//
// The recursion runs as a loop over an explicit stack of pending right halves (pre-order: middle,
// left half, right half), which saves a function call per element on the hot path. A right half is
// pushed only when descending left, and the left half has at most half the elements, so the stack
// never holds more than log2(k) + 1 <= 17 entries.
namespace {

struct Span {
  uint32_t at, k, lo, hi;  // x[at .. at + k) lie in [lo, hi]
};
constexpr unsigned kMaxBicDepth = 24;

void bic_put(BitWriter& w, const uint16_t* x, uint32_t k, uint32_t lo, uint32_t hi) {
  Span pending[kMaxBicDepth];
  unsigned depth = 0;
  uint32_t at = 0;
  for (;;) {
    if (k == 0 || hi - lo + 1 == k) {  // nothing left here, or every value implied
      if (depth == 0) return;
      const Span& s = pending[--depth];
      at = s.at, k = s.k, lo = s.lo, hi = s.hi;
      continue;
    }
    const uint32_t m = k / 2;
    const uint32_t min = lo + m, max = hi - (k - 1 - m);
    const uint32_t v = x[at + m];
    truncated_put(w, v - min, max - min + 1);
    if (k - 1 - m > 0) pending[depth++] = {at + m + 1, k - 1 - m, v + 1, hi};
    k = m;  // the left half next
    hi = v - 1;
  }
}

void bic_get(BitReader& reader, uint16_t* x, uint32_t k, uint32_t lo, uint32_t hi) {
  BitReader r = reader;  // a local copy stays in registers; written back at the end
  Span pending[kMaxBicDepth];
  unsigned depth = 0;
  uint32_t at = 0;
  for (;;) {
    if (k == 0 || hi - lo + 1 == k) {
      for (uint32_t i = 0; i < k; ++i) x[at + i] = uint16_t(lo + i);
      if (depth == 0) {
        reader = r;
        return;
      }
      const Span& s = pending[--depth];
      at = s.at, k = s.k, lo = s.lo, hi = s.hi;
      continue;
    }
    const uint32_t m = k / 2;
    const uint32_t min = lo + m, max = hi - (k - 1 - m);
    const uint32_t v = min + truncated_get(r, max - min + 1);
    x[at + m] = uint16_t(v);
    if (k - 1 - m > 0) pending[depth++] = {at + m + 1, k - 1 - m, v + 1, hi};
    k = m;
    hi = v - 1;
  }
}

// The same codes for a set size K known at compile time (the top-k of most runs is 1 to 4): the
// recursion unrolls into straight-line code with no stack. It leaves out the "every value implied"
// stop, which changes nothing: in a range of exactly K values every code has n == 1 and takes no
// bits, and yields lo, lo + 1, ... as the stop does.
template <uint32_t K>
inline void bic_put_k(BitWriter& w, const uint16_t* x, uint32_t lo, uint32_t hi) {
  if constexpr (K > 0) {
    constexpr uint32_t m = K / 2;
    const uint32_t min = lo + m, max = hi - (K - 1 - m);
    const uint32_t v = x[m];
    truncated_put(w, v - min, max - min + 1);
    bic_put_k<m>(w, x, lo, v - 1);
    bic_put_k<K - 1 - m>(w, x + m + 1, v + 1, hi);
  }
}

template <uint32_t K>
inline void bic_get_k(BitReader& r, uint16_t* x, uint32_t lo, uint32_t hi) {
  if constexpr (K > 0) {
    constexpr uint32_t m = K / 2;
    const uint32_t min = lo + m, max = hi - (K - 1 - m);
    const uint32_t v = min + truncated_get(r, max - min + 1);
    x[m] = uint16_t(v);
    bic_get_k<m>(r, x, lo, v - 1);
    bic_get_k<K - 1 - m>(r, x + m + 1, v + 1, hi);
  }
}

}  // namespace

void put_interpolative(BitWriter& w, const uint16_t* x, uint32_t k, uint32_t universe) {
  const uint32_t hi = universe - 1;
  switch (k) {
    case 0: return;
    case 1: return bic_put_k<1>(w, x, 0, hi);
    case 2: return bic_put_k<2>(w, x, 0, hi);
    case 3: return bic_put_k<3>(w, x, 0, hi);
    case 4: return bic_put_k<4>(w, x, 0, hi);
    default: return bic_put(w, x, k, 0, hi);
  }
}

void get_interpolative(BitReader& reader, uint16_t* x, uint32_t k, uint32_t universe) {
  if (k > 4) return bic_get(reader, x, k, 0, universe - 1);
  BitReader r = reader;  // a local copy stays in registers; written back at the end
  const uint32_t hi = universe - 1;
  switch (k) {
    case 1: bic_get_k<1>(r, x, 0, hi); break;
    case 2: bic_get_k<2>(r, x, 0, hi); break;
    case 3: bic_get_k<3>(r, x, 0, hi); break;
    case 4: bic_get_k<4>(r, x, 0, hi); break;
    default: break;
  }
  reader = r;
}

}  // namespace distro::wire

#include "wire/integer_codes.hpp"

#include <bit>
#include <string>

#include "core/error.hpp"

namespace distro::wire {

namespace {

inline uint64_t low_mask(unsigned bits) { return bits >= 64 ? ~uint64_t(0) : (uint64_t(1) << bits) - 1; }

}  // namespace

void put_exp_golomb(BitWriter& w, uint64_t v) {
  uint64_t x = v + 1;
  unsigned z = unsigned(std::bit_width(x)) - 1;
  if (z <= 15) {
    // The whole code (2z + 1 <= 31 bits) as one field: z zeros, the 1, then x's low z bits.
    w.put((uint64_t(1) << z) | ((x & low_mask(z)) << (z + 1)), 2 * z + 1);
    return;
  }
  w.put_wide(0, z);
  w.put(1, 1);
  w.put_wide(x & low_mask(z), z);
}

uint64_t get_exp_golomb(BitReader& r) {
  uint64_t word = r.peek_word();  // >= 57 valid bits (zeros past the end of the stream)
  unsigned lead = 0;
  if (word != 0) {
    lead = unsigned(std::countr_zero(word));
    if (lead <= 28) {
      // Fast path: prefix, 1 and suffix all lie in the peeked word (2 * 28 + 1 = 57 bits).
      unsigned total = 2 * lead + 1;
      r.skip(total);  // throws "truncated" if the code runs past the end
      return ((uint64_t(1) << lead) | ((word >> (lead + 1)) & low_mask(lead))) - 1;
    }
  }
  // Long codes: count zeros 32 at a time so a corrupt stream of zeros stops at the limit.
  lead = 0;
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

unsigned exp_golomb_bits(uint64_t v) { return 2 * (unsigned(std::bit_width(v + 1)) - 1) + 1; }

// Inline forms for the BIC loops (the hot path); the exported functions wrap them.
namespace {

inline void truncated_put(BitWriter& w, uint32_t v, uint32_t n) {
  if (n <= 1) return;
  unsigned b = unsigned(std::bit_width(n)) - 1;
  uint64_t u = (uint64_t(2) << b) - n;  // number of b-bit (short) codewords
  if (v < u) {
    w.put(v, b);
  } else {
    uint64_t y = v + u;
    w.put(y >> 1, b);
    w.put(y & 1, 1);
  }
}

inline uint32_t truncated_get(BitReader& r, uint32_t n) {
  if (n <= 1) return 0;
  unsigned b = unsigned(std::bit_width(n)) - 1;
  uint64_t u = (uint64_t(2) << b) - n;
  uint64_t word = r.peek_word();  // b + 1 <= 32 bits are all in it
  uint64_t x = word & low_mask(b);
  if (x < u) {
    r.skip(b);
    return uint32_t(x);
  }
  r.skip(b + 1);
  return uint32_t(((x << 1) | ((word >> b) & 1)) - u);
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
// (k close to universe) at O(k). The right half is handled by the loop, so recursion depth is
// log2(k) <= 17.
namespace {

void bic_put(BitWriter& w, const uint16_t* x, uint32_t k, uint32_t lo, uint32_t hi) {
  while (k > 0 && hi - lo + 1 != k) {
    uint32_t m = k / 2;
    uint32_t min = lo + m, max = hi - (k - 1 - m);
    truncated_put(w, x[m] - min, max - min + 1);
    if (m > 0) bic_put(w, x, m, lo, uint32_t(x[m]) - 1);
    lo = uint32_t(x[m]) + 1;
    x += m + 1;
    k -= m + 1;
  }
}

void bic_get(BitReader& r, uint16_t* x, uint32_t k, uint32_t lo, uint32_t hi) {
  while (k > 0) {
    if (hi - lo + 1 == k) {
      for (uint32_t i = 0; i < k; ++i) x[i] = uint16_t(lo + i);
      return;
    }
    uint32_t m = k / 2;
    uint32_t min = lo + m, max = hi - (k - 1 - m);
    uint32_t v = min + truncated_get(r, max - min + 1);
    x[m] = uint16_t(v);
    if (m > 0) bic_get(r, x, m, lo, v - 1);
    lo = v + 1;
    x += m + 1;
    k -= m + 1;
  }
}

}  // namespace

void put_interpolative(BitWriter& w, const uint16_t* x, uint32_t k, uint32_t universe) {
  if (k > 0) bic_put(w, x, k, 0, universe - 1);
}

void get_interpolative(BitReader& r, uint16_t* x, uint32_t k, uint32_t universe) {
  if (k > 0) bic_get(r, x, k, 0, universe - 1);
}

}  // namespace distro::wire

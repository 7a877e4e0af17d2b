// The integer codes of wire format v2 (docs/protocol.md, "Integer codes"): exp-Golomb of order 0,
// truncated binary, and binary interpolative coding (Moffat & Stuiver) of sorted index sets.
// Encoders assume valid input (the codec validates it first, with better error messages); decoders
// accept any bit pattern and throw Error(corrupt) only when the stream ends or a code is too long.
#pragma once

#include <bit>
#include <cstdint>

#include "wire/bits.hpp"

namespace distro::wire {

// Longest exp-Golomb prefix (number of leading zero bits) a decoder accepts: values up to 2^63 - 2.
// No field of the format needs more; a longer run of zeros is rejected rather than looped over.
constexpr unsigned kMaxExpGolombPrefix = 62;

// Exp-Golomb order 0 of v: with x = v + 1 and z = floor(log2 x), z zero bits, one 1 bit, then the
// low z bits of x as a z-bit field. Equals Elias-gamma of v + 1. v <= 2^63 - 2.
// The short codes, the ones the format uses per chunk and per value, are inline (below); longer
// ones go through the out-of-line functions.
inline void put_exp_golomb(BitWriter& w, uint64_t v);
inline uint64_t get_exp_golomb(BitReader& r);
inline unsigned exp_golomb_bits(uint64_t v) { return 2 * (unsigned(std::bit_width(v + 1)) - 1) + 1; }
void put_exp_golomb_long(BitWriter& w, uint64_t v);
uint64_t get_exp_golomb_long(BitReader& r);

// Truncated (minimal) binary of v in [0, n), n >= 1: with b = floor(log2 n) and u = 2^(b+1) - n,
// v < u is a b-bit field; otherwise y = v + u is written as the b-bit field y >> 1, then the bit
// y & 1. n == 1 costs no bits. The decoder can only return values in [0, n).
void put_truncated(BitWriter& w, uint32_t v, uint32_t n);
uint32_t get_truncated(BitReader& r, uint32_t n);
unsigned truncated_bits(uint32_t v, uint32_t n);

// Binary interpolative coding of k strictly ascending values x[0..k) in [0, universe),
// k <= universe <= 65536. The decoder writes k values to x; they are strictly ascending and inside
// [0, universe) by construction, whatever the bits were.
void put_interpolative(BitWriter& w, const uint16_t* x, uint32_t k, uint32_t universe);
void get_interpolative(BitReader& r, uint16_t* x, uint32_t k, uint32_t universe);

// ---- inline fast paths ----------------------------------------------------------------------------

inline void put_exp_golomb(BitWriter& w, uint64_t v) {
  const uint64_t x = v + 1;
  const unsigned z = unsigned(std::bit_width(x)) - 1;
  if (z > 15) return put_exp_golomb_long(w, v);
  // The whole code (2z + 1 <= 31 bits) as one field: z zeros, the 1, then x's low z bits.
  w.put((uint64_t(1) << z) | ((x & ((uint64_t(1) << z) - 1)) << (z + 1)), 2 * z + 1);
}

inline uint64_t get_exp_golomb(BitReader& r) {
  const uint64_t word = r.peek_word();  // >= 57 valid bits (zeros past the end of the stream)
  const unsigned lead = unsigned(std::countr_zero(word));
  if (lead > 28) return get_exp_golomb_long(r);
  // Prefix, 1 and suffix all lie in the peeked word (2 * 28 + 1 = 57 bits).
  r.skip(2 * lead + 1);  // throws "truncated" if the code runs past the end
  return ((uint64_t(1) << lead) | ((word >> (lead + 1)) & ((uint64_t(1) << lead) - 1))) - 1;
}

}  // namespace distro::wire

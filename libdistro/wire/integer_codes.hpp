// The integer codes of wire format v1 (docs/protocol.md, "Integer codes"): exp-Golomb of order 0,
// truncated binary, and binary interpolative coding (Moffat & Stuiver) of sorted index sets.
// Encoders assume valid input (the codec validates it first, with better error messages); decoders
// accept any bit pattern and throw Error(corrupt) only when the stream ends or a code is too long.
#pragma once

#include <cstdint>

#include "wire/bits.hpp"

namespace distro::wire {

// Longest exp-Golomb prefix (number of leading zero bits) a decoder accepts: values up to 2^63 - 2.
// No field of the format needs more; a longer run of zeros is rejected rather than looped over.
constexpr unsigned kMaxExpGolombPrefix = 62;

// Exp-Golomb order 0 of v: with x = v + 1 and z = floor(log2 x), z zero bits, one 1 bit, then the
// low z bits of x as a z-bit field. Equals Elias-gamma of v + 1. v <= 2^63 - 2.
void put_exp_golomb(BitWriter& w, uint64_t v);
uint64_t get_exp_golomb(BitReader& r);
unsigned exp_golomb_bits(uint64_t v);

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

}  // namespace distro::wire

// The per-chunk arithmetic of a DisTrO step, written once for the CPU reference. GPU kernels mirror
// these functions; tests hold them to the same results (bit for bit for the apply).
#pragma once

#include <cstdint>
#include <cstring>

#include "optim/dct.hpp"
#include "optim/manifest.hpp"

namespace distro {

// Selects the min(k, non-zero) largest |y| among e coefficients, ties to the lowest index, and writes
// their indices ascending to idx. Returns how many were selected.
uint32_t select_topk(const float* y, uint32_t e, uint32_t k, uint16_t* idx);

// Quantises the selected full-precision values: sign mode +1/-1, int8 mode round(127 * y / max|y|)
// with halves away from zero.
void quantize_values(const float* y_selected, uint32_t count, ValueMode mode, int8_t* out);

// Flush a float32 subnormal to a zero of the same sign (the same rule on every backend).
inline float flush_subnormal(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  if ((b & 0x7F800000u) == 0) b &= 0x80000000u;
  std::memcpy(&x, &b, 4);
  return x;
}

// The apply of one parameter: two IEEE float32 operations, no fused multiply-add, subnormals
// flushed explicitly before and after each.
inline float apply_element(float theta, float decay_factor, float lr, int sign) {
  float t = flush_subnormal(flush_subnormal(theta) * decay_factor);
  if (sign > 0) t = flush_subnormal(t - lr);
  if (sign < 0) t = flush_subnormal(t + lr);
  return t;
}

// Fixed-point mean of a merged coefficient: round(S * 256 / c), halves away from zero, in int64.
inline int32_t fixed_point_mean(int64_t sum, int64_t count) {
  int64_t n = sum * 256;
  int64_t q = (n >= 0 ? n + count / 2 : n - count / 2) / count;
  // C++ division truncates toward zero, so adding half the divisor before it rounds halves away
  // from zero for even counts; for odd counts no exact half exists.
  return int32_t(q);
}

// Integer inverse DCT of one chunk's merged coefficients, then sign: out[i * n2 + j] in {-1, 0, 1}.
// scratch holds at least n1 * n2 + n2 int64 values.
void merged_signs(const DctBasis& b1, const DctBasis& b2, const uint16_t* idx, const int32_t* val,
                  uint32_t u, int8_t* out, int64_t* scratch);

}  // namespace distro

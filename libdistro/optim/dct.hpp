// Orthonormal DCT-II bases (distro-algorithm.md section 1.3) and the per-chunk block transforms.
// B[i][f] = sqrt(a_f / N) * cos(pi * (2i + 1) * f / (2N)), a_0 = 1, a_f = 2: row i is a sample, column
// f a frequency. Forward Y = B1^T X B2, inverse X = B1 Y B2^T.
//
// The integer basis used by the exact inverse transform is round(B * 2^14). It is generated here
// from float64 rather than committed as constants (tables for every edge up to 256 would be 5.6M
// numbers); tests pin it: every entry is at least 1e-9 away from a rounding tie, so any libm within
// a thousand ulps yields the same integers, and a committed hash of all tables catches any change.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "optim/manifest.hpp"

namespace distro {

constexpr int kIntBasisBits = 14;

struct DctBasis {
  uint32_t n = 0;
  std::vector<double> f64;   // n * n, B[i * n + f]
  std::vector<float> f32;    // the same, rounded to float32
  std::vector<int32_t> i14;  // round(B * 2^14)
};

DctBasis make_dct_basis(uint32_t n);

// The bases for every chunk edge a manifest uses.
class DctTables {
 public:
  DctTables() = default;
  explicit DctTables(const Manifest& m);
  const DctBasis& get(uint32_t n) const;

 private:
  std::map<uint32_t, DctBasis> by_n_;
};

// Per-chunk transforms over an n1 x n2 block with row stride `stride` (elements). Accumulation is
// in double whatever T is, so float32 storage loses only the final rounding.
template <class T>
void dct_chunk_forward(const T* x, uint64_t stride, const DctBasis& b1, const DctBasis& b2, T* y);
template <class T>
void dct_chunk_inverse(const T* y, const DctBasis& b1, const DctBasis& b2, T* x, uint64_t stride);

// Whole-tensor block transforms in the encoded layout [chunk][f1 * n2 + f2] (tests and tools).
template <class T>
void block_dct_forward(const TensorPlan& p, const DctTables& t, const T* x, T* y);
template <class T>
void block_dct_inverse(const TensorPlan& p, const DctTables& t, const T* y, T* x);

// Element offset of (chunk c, row i, column j inside the chunk) in the tensor's row-major storage.
inline uint64_t chunk_origin(const TensorPlan& p, uint64_t c) {
  uint64_t cb = p.cols / p.n2, rb = p.rows / p.n1;
  uint64_t b = c / (rb * cb), rem = c % (rb * cb);
  return b * p.rows * p.cols + (rem / cb) * p.n1 * p.cols + (rem % cb) * p.n2;
}

}  // namespace distro

#include "optim/dct.hpp"

#include <cmath>
#include <numbers>

#include "core/error.hpp"

namespace distro {

DctBasis make_dct_basis(uint32_t n) {
  if (n == 0 || n > kMaxChunk) fail(Code::invalid_argument, "DCT size " + std::to_string(n) + " out of range");
  DctBasis b;
  b.n = n;
  b.f64.resize(size_t(n) * n);
  b.f32.resize(size_t(n) * n);
  b.i14.resize(size_t(n) * n);
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t f = 0; f < n; ++f) {
      // Reduce the angle pi * m / (2n) with integer arithmetic first, so cos sees a small argument.
      uint64_t m = (uint64_t(2 * i + 1) * f) % (4ull * n);
      double scale = std::sqrt((f == 0 ? 1.0 : 2.0) / n);
      double v = scale * std::cos(std::numbers::pi * double(m) / (2.0 * n));
      b.f64[size_t(i) * n + f] = v;
      b.f32[size_t(i) * n + f] = float(v);
      b.i14[size_t(i) * n + f] = int32_t(std::llround(std::ldexp(v, kIntBasisBits)));
    }
  }
  return b;
}

DctTables::DctTables(const Manifest& m) {
  for (const auto& t : m.tensors) {
    for (uint32_t n : {t.n1, t.n2})
      if (!by_n_.count(n)) by_n_.emplace(n, make_dct_basis(n));
  }
}

const DctBasis& DctTables::get(uint32_t n) const {
  auto it = by_n_.find(n);
  if (it == by_n_.end()) fail(Code::internal, "no DCT basis of size " + std::to_string(n));
  return it->second;
}

template <class T>
void dct_chunk_forward(const T* x, uint64_t stride, const DctBasis& b1, const DctBasis& b2, T* y) {
  const uint32_t n1 = b1.n, n2 = b2.n;
  double tmp[kMaxChunk];
  thread_local std::vector<double> rowt;  // scratch reused per thread
  rowt.resize(size_t(n1) * n2);  // rowt[i][f2] = sum_j x[i][j] B2[j][f2]
  for (uint32_t i = 0; i < n1; ++i) {
    for (uint32_t f = 0; f < n2; ++f) tmp[f] = 0.0;
    for (uint32_t j = 0; j < n2; ++j) {
      double xv = double(x[i * stride + j]);
      const double* brow = &b2.f64[size_t(j) * n2];
      for (uint32_t f = 0; f < n2; ++f) tmp[f] += xv * brow[f];
    }
    for (uint32_t f = 0; f < n2; ++f) rowt[size_t(i) * n2 + f] = tmp[f];
  }
  for (uint32_t f1 = 0; f1 < n1; ++f1) {
    for (uint32_t f = 0; f < n2; ++f) tmp[f] = 0.0;
    for (uint32_t i = 0; i < n1; ++i) {
      double b = b1.f64[size_t(i) * n1 + f1];
      const double* r = &rowt[size_t(i) * n2];
      for (uint32_t f = 0; f < n2; ++f) tmp[f] += b * r[f];
    }
    for (uint32_t f = 0; f < n2; ++f) y[size_t(f1) * n2 + f] = T(tmp[f]);
  }
}

template <class T>
void dct_chunk_inverse(const T* y, const DctBasis& b1, const DctBasis& b2, T* x, uint64_t stride) {
  const uint32_t n1 = b1.n, n2 = b2.n;
  double tmp[kMaxChunk];
  thread_local std::vector<double> rowt;
  rowt.resize(size_t(n1) * n2);  // rowt[f1][j] = sum_f2 y[f1][f2] B2[j][f2]
  for (uint32_t f1 = 0; f1 < n1; ++f1) {
    for (uint32_t j = 0; j < n2; ++j) {
      const double* brow = &b2.f64[size_t(j) * n2];
      double acc = 0.0;
      for (uint32_t f = 0; f < n2; ++f) acc += double(y[size_t(f1) * n2 + f]) * brow[f];
      rowt[size_t(f1) * n2 + j] = acc;
    }
  }
  for (uint32_t i = 0; i < n1; ++i) {
    for (uint32_t j = 0; j < n2; ++j) tmp[j] = 0.0;
    for (uint32_t f1 = 0; f1 < n1; ++f1) {
      double b = b1.f64[size_t(i) * n1 + f1];
      const double* r = &rowt[size_t(f1) * n2];
      for (uint32_t j = 0; j < n2; ++j) tmp[j] += b * r[j];
    }
    for (uint32_t j = 0; j < n2; ++j) x[i * stride + j] = T(tmp[j]);
  }
}

template <class T>
void block_dct_forward(const TensorPlan& p, const DctTables& t, const T* x, T* y) {
  const auto& b1 = t.get(p.n1);
  const auto& b2 = t.get(p.n2);
  for (uint64_t c = 0; c < p.chunks; ++c)
    dct_chunk_forward(x + chunk_origin(p, c), p.cols, b1, b2, y + c * p.elems());
}

template <class T>
void block_dct_inverse(const TensorPlan& p, const DctTables& t, const T* y, T* x) {
  const auto& b1 = t.get(p.n1);
  const auto& b2 = t.get(p.n2);
  for (uint64_t c = 0; c < p.chunks; ++c)
    dct_chunk_inverse(y + c * p.elems(), b1, b2, x + chunk_origin(p, c), p.cols);
}

#define DISTRO_INSTANTIATE(T)                                                                  \
  template void dct_chunk_forward<T>(const T*, uint64_t, const DctBasis&, const DctBasis&, T*); \
  template void dct_chunk_inverse<T>(const T*, const DctBasis&, const DctBasis&, T*, uint64_t); \
  template void block_dct_forward<T>(const TensorPlan&, const DctTables&, const T*, T*);        \
  template void block_dct_inverse<T>(const TensorPlan&, const DctTables&, const T*, T*);
DISTRO_INSTANTIATE(float)
DISTRO_INSTANTIATE(double)
#undef DISTRO_INSTANTIATE

}  // namespace distro

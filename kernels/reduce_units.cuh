// The unit layout of the batched reductions (ReduceLaunch in libdistro/cuda/kernels.hpp), shared by
// hash.cu and reduce.cu.
#pragma once

#include <cstdint>

#include "cuda/kernels.hpp"

namespace distro::cuda {

constexpr unsigned kReduceThreads = 256;
constexpr unsigned kQuadsPerThread = kReduceUnitQuads / kReduceThreads;  // 16-byte loads in flight
static_assert(kQuadsPerThread * kReduceThreads == kReduceUnitQuads);

// The run that holds launch-wide unit g, searching forward from run t: a persistent block's units
// ascend, so its run only moves forward.
__device__ __forceinline__ uint32_t run_of_unit(const ReduceLaunch& L, uint64_t g, uint32_t t) {
  while (t + 1 < L.runs && g >= L.run[t + 1].begin) ++t;
  return t;
}

// Elements of a 4-byte aligned run before its first 16-byte boundary, at most n.
__host__ __device__ inline uint64_t run_head(const float* data, uint64_t n) {
  const uint64_t misalign = (reinterpret_cast<uintptr_t>(data) % 16) / 4;
  return misalign == 0 ? 0 : (4 - misalign < n ? 4 - misalign : n);
}

// A run seen as its head, its whole quads from there, and its tail (elements [head + 4 nquads, n)).
struct RunSpan {
  uint64_t head, nquads;
  __device__ explicit RunSpan(const ReduceRun& R) : head(run_head(R.data, R.n)), nquads((R.n - head) / 4) {}
  // Quad k of this thread in unit `unit` (>= nquads: past the end).
  __device__ uint64_t quad(uint64_t unit, unsigned k) const {
    return unit * kReduceUnitQuads + threadIdx.x + uint64_t(k) * kReduceThreads;
  }
  // Loads all of this thread's quads of the unit before any is used (zeros past the end).
  template <class Q>
  __device__ void load(const ReduceRun& R, uint64_t unit, Q (&v)[kQuadsPerThread]) const {
    const Q* quads = reinterpret_cast<const Q*>(R.data + head);
#pragma unroll
    for (unsigned k = 0; k < kQuadsPerThread; ++k) {
      const uint64_t q = quad(unit, k);
      v[k] = q < nquads ? __ldg(quads + q) : Q{};
    }
  }
  // Calls f(i) for this thread's elements of the head and the tail (unit 0 only).
  template <class F>
  __device__ void ends(uint64_t n, F&& f) const {
    const uint64_t done = head + 4 * nquads;
    if (threadIdx.x < head) f(uint64_t(threadIdx.x));
    if (threadIdx.x < n - done) f(done + threadIdx.x);
  }
};

}  // namespace distro::cuda

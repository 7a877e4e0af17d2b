// Reductions of the model's tensors: the sum of squares for the gradient norm. Deterministic: a fixed
// grid for a given device, each block sums a fixed set of elements in a fixed tree, and one block
// adds the blocks' partials in order.
#include <cstdint>

#include "cuda/kernels.hpp"

namespace distro::cuda {
namespace {

constexpr unsigned kThreads = 256;

__device__ double block_sum(double v) {
  __shared__ double part[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? part[threadIdx.x] : 0.0;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// The element-to-thread assignment depends only on n, the grid and x's alignment, so the sum's
// rounding is fixed for a given buffer and device. Four elements per 16-byte load (after a head up
// to the first 16-byte boundary): scalar loads left the memory system idle (1 TB/s at 1.2B floats).
__global__ void sum_squares_partial(const float* __restrict__ x, uint64_t n, uint64_t head,
                                    double* __restrict__ partial) {
  const uint64_t tid = uint64_t(blockIdx.x) * kThreads + threadIdx.x, stride = uint64_t(gridDim.x) * kThreads;
  double s = 0.0;
  if (tid < head) s += double(x[tid]) * double(x[tid]);
  const float4* quads = reinterpret_cast<const float4*>(x + head);
  const uint64_t nquads = (n - head) / 4;
  // Two loads in flight per thread and iteration.
  uint64_t q = tid;
  for (; q + stride < nquads; q += 2 * stride) {
    const float4 v = __ldg(quads + q), w = __ldg(quads + q + stride);
    s += double(v.x) * double(v.x) + double(v.y) * double(v.y) + double(v.z) * double(v.z) + double(v.w) * double(v.w);
    s += double(w.x) * double(w.x) + double(w.y) * double(w.y) + double(w.z) * double(w.z) + double(w.w) * double(w.w);
  }
  if (q < nquads) {
    const float4 v = __ldg(quads + q);
    s += double(v.x) * double(v.x) + double(v.y) * double(v.y) + double(v.z) * double(v.z) + double(v.w) * double(v.w);
  }
  const uint64_t done = head + 4 * nquads;
  if (tid < n - done) s += double(x[done + tid]) * double(x[done + tid]);
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sum_partials(const double* __restrict__ partial, unsigned count, double* __restrict__ out) {
  double s = 0.0;
  for (unsigned i = threadIdx.x; i < count; i += kThreads) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *out = s;
}

}  // namespace

cudaError_t launch_sum_squares(const float* x, uint64_t n, double* partial, unsigned blocks, double* out,
                               cudaStream_t stream) {
  // Elements before the first 16-byte boundary (x is at least 4-byte aligned).
  const uint64_t misalign = (reinterpret_cast<uintptr_t>(x) % 16) / 4;
  const uint64_t head = misalign == 0 ? 0 : (4 - misalign < n ? 4 - misalign : n);
  sum_squares_partial<<<blocks, kThreads, 0, stream>>>(x, n, head, partial);
  sum_partials<<<1, kThreads, 0, stream>>>(partial, blocks, out);
  return cudaGetLastError();
}

}  // namespace distro::cuda

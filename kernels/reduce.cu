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

__global__ void sum_squares_partial(const float* __restrict__ x, uint64_t n, double* __restrict__ partial) {
  double s = 0.0;
  for (uint64_t i = uint64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += uint64_t(gridDim.x) * kThreads) {
    const double v = x[i];
    s += v * v;
  }
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
  sum_squares_partial<<<blocks, kThreads, 0, stream>>>(x, n, partial);
  sum_partials<<<1, kThreads, 0, stream>>>(partial, blocks, out);
  return cudaGetLastError();
}

}  // namespace distro::cuda

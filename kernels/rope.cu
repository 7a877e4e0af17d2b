// Rotary position embedding in place on x [batch, seq, heads, head_dim]: one thread per pair
// (2i, 2i + 1) of a head vector, rotated by the angle of (position t, frequency i) from the
// cos/sin tables [>= seq, head_dim / 2]; the backward rotates by the negative angle.
#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

constexpr unsigned kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    rope_kernel(float* __restrict__ x, const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                uint64_t pairs, uint64_t seq, uint64_t heads, uint64_t half, bool inverse) {
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t p = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs; p += stride) {
    // p = ((row * heads) + h) * half + i with row = b * seq + t; the pair sits at x[2p].
    const uint64_t i = p % half, row = p / half / heads, t = row % seq;
    const float c = cos_t[t * half + i], s = inverse ? -sin_t[t * half + i] : sin_t[t * half + i];
    const float x0 = x[2 * p], x1 = x[2 * p + 1];
    x[2 * p] = x0 * c - x1 * s;
    x[2 * p + 1] = x0 * s + x1 * c;
  }
}

}  // namespace

cudaError_t launch_rope(float* x, const float* cos, const float* sin, uint64_t batch, uint64_t seq, uint64_t heads,
                        uint64_t head_dim, bool inverse, unsigned max_blocks, cudaStream_t stream) {
  const uint64_t half = head_dim / 2, pairs = batch * seq * heads * half;
  if (pairs == 0) return cudaSuccess;
  rope_kernel<<<model::grid_for(pairs, kThreads, max_blocks), kThreads, 0, stream>>>(x, cos, sin, pairs, seq, heads,
                                                                                       half, inverse);
  return cudaGetLastError();
}

}  // namespace distro::cuda

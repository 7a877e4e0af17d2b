// SwiGLU, elementwise: h = silu(g) * u with silu(g) = g * sigmoid(g), and its gradient
// dg = dh * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))), du = dh * silu(g) (the CPU's expressions;
// expf is the accurate one, not __expf).
#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

constexpr unsigned kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    swiglu_forward_kernel(float* h, const float* g, const float* u, uint64_t n) {
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gi = g[i];
    const float sg = 1.0f / (1.0f + expf(-gi));
    h[i] = (gi * sg) * u[i];
  }
}

__global__ void __launch_bounds__(kThreads)
    swiglu_backward_kernel(float* dg, float* du, const float* dh, const float* g, const float* u, uint64_t n) {
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float gi = g[i], ui = u[i], d = dh[i];
    const float sg = 1.0f / (1.0f + expf(-gi));
    const float silu = gi * sg;
    // Both outputs are written after all three inputs are read: dg or du may alias dh.
    dg[i] = (d * ui) * (sg * (1.0f + gi * (1.0f - sg)));
    du[i] = d * silu;
  }
}

}  // namespace

cudaError_t launch_swiglu_forward(float* h, const float* g, const float* u, uint64_t n, unsigned max_blocks,
                                  cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  swiglu_forward_kernel<<<model::grid_for(n, kThreads, max_blocks), kThreads, 0, stream>>>(h, g, u, n);
  return cudaGetLastError();
}

cudaError_t launch_swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u,
                                   uint64_t n, unsigned max_blocks, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  swiglu_backward_kernel<<<model::grid_for(n, kThreads, max_blocks), kThreads, 0, stream>>>(dg, du, dh, g, u, n);
  return cudaGetLastError();
}

}  // namespace distro::cuda

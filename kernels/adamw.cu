// AdamW (decoupled weight decay, bias-corrected), elementwise over one float32 tensor. This file
// keeps the library's --fmad=false (kernels/README.md) and writes the CPU's expressions in the
// CPU's order with IEEE division and square root, and the bias corrections come from the host
// computed as the CPU computes them; so each element is the same sequence of correctly rounded
// float32 operations as CpuDevice::adamw, and the tests find the same bits (they check within
// float tolerance, which is what the op promises).
#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

constexpr unsigned kThreads = 256;

__global__ void __launch_bounds__(kThreads) adamw_kernel(AdamWLaunch L) {
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  const float one_b1 = 1.0f - L.beta1, one_b2 = 1.0f - L.beta2;
  for (uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < L.n; i += stride) {
    const float g = L.grad[i];
    const float m = L.beta1 * L.m[i] + one_b1 * g;
    const float v = L.beta2 * L.v[i] + one_b2 * g * g;
    L.m[i] = m;
    L.v[i] = v;
    const float mhat = m / L.bc1, vhat = v / L.bc2;
    const float p = L.params[i];
    L.params[i] = p - L.lr * (mhat / (sqrtf(vhat) + L.eps) + L.weight_decay * p);
  }
}

}  // namespace

cudaError_t launch_adamw(const AdamWLaunch& L, unsigned max_blocks, cudaStream_t stream) {
  if (L.n == 0) return cudaSuccess;
  adamw_kernel<<<model::grid_for(L.n, kThreads, max_blocks), kThreads, 0, stream>>>(L);
  return cudaGetLastError();
}

}  // namespace distro::cuda

// Elementwise model ops: add, axpy, scale, and the float32 -> bf16 conversion that feeds the
// tensor-core matmuls. Grid-stride loops; when every pointer is 16-byte aligned the body moves four
// elements per load, the rest (or everything, for unaligned sub-ranges) one at a time. Each element
// is computed on its own, so the path taken does not change the result.
#include <cuda_bf16.h>

#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

using model::aligned;
using model::grid_for;

constexpr unsigned kThreads = 256;

__device__ __forceinline__ uint64_t first_index() { return uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ uint64_t grid_stride() { return uint64_t(gridDim.x) * blockDim.x; }

// Vector body over quads [0, n / 4) when vec, then the scalar remainder (all of [0, n) otherwise).
__global__ void __launch_bounds__(kThreads)
    to_bf16_kernel(__nv_bfloat16* __restrict__ dst, const float* __restrict__ src, uint64_t n, bool vec) {
  uint64_t done = 0;
  if (vec) {
    const uint64_t quads = n / 4;
    for (uint64_t q = first_index(); q < quads; q += grid_stride()) {
      const float4 v = reinterpret_cast<const float4*>(src)[q];
      __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
      uint2 packed;
      packed.x = *reinterpret_cast<const unsigned*>(&lo);
      packed.y = *reinterpret_cast<const unsigned*>(&hi);
      reinterpret_cast<uint2*>(dst)[q] = packed;
    }
    done = quads * 4;
  }
  for (uint64_t i = done + first_index(); i < n; i += grid_stride()) dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void __launch_bounds__(kThreads)
    add_kernel(float* out, const float* a, const float* b, uint64_t n, bool vec) {
  uint64_t done = 0;
  if (vec) {
    const uint64_t quads = n / 4;
    for (uint64_t q = first_index(); q < quads; q += grid_stride()) {
      const float4 x = reinterpret_cast<const float4*>(a)[q], y = reinterpret_cast<const float4*>(b)[q];
      reinterpret_cast<float4*>(out)[q] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
    }
    done = quads * 4;
  }
  for (uint64_t i = done + first_index(); i < n; i += grid_stride()) out[i] = a[i] + b[i];
}

__global__ void __launch_bounds__(kThreads)
    axpy_kernel(float* y, const float* x, float alpha, uint64_t n, bool vec) {
  uint64_t done = 0;
  if (vec) {
    const uint64_t quads = n / 4;
    for (uint64_t q = first_index(); q < quads; q += grid_stride()) {
      const float4 xv = reinterpret_cast<const float4*>(x)[q];
      float4 yv = reinterpret_cast<float4*>(y)[q];
      yv.x += alpha * xv.x, yv.y += alpha * xv.y, yv.z += alpha * xv.z, yv.w += alpha * xv.w;
      reinterpret_cast<float4*>(y)[q] = yv;
    }
    done = quads * 4;
  }
  for (uint64_t i = done + first_index(); i < n; i += grid_stride()) y[i] += alpha * x[i];
}

__global__ void __launch_bounds__(kThreads) scale_kernel(float* __restrict__ x, float alpha, uint64_t n, bool vec) {
  uint64_t done = 0;
  if (vec) {
    const uint64_t quads = n / 4;
    for (uint64_t q = first_index(); q < quads; q += grid_stride()) {
      float4 v = reinterpret_cast<float4*>(x)[q];
      v.x *= alpha, v.y *= alpha, v.z *= alpha, v.w *= alpha;
      reinterpret_cast<float4*>(x)[q] = v;
    }
    done = quads * 4;
  }
  for (uint64_t i = done + first_index(); i < n; i += grid_stride()) x[i] *= alpha;
}

// Quads for the vector path, or single elements.
uint64_t work_items(uint64_t n, bool vec) { return vec ? (n / 4 > 0 ? n / 4 : 1) : n; }

}  // namespace

cudaError_t launch_to_bf16(uint16_t* dst, const float* src, uint64_t n, unsigned max_blocks, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = aligned(src, 16) && aligned(dst, 8);
  to_bf16_kernel<<<grid_for(work_items(n, vec), kThreads, max_blocks), kThreads, 0, stream>>>(
      reinterpret_cast<__nv_bfloat16*>(dst), src, n, vec);
  return cudaGetLastError();
}

cudaError_t launch_add(float* out, const float* a, const float* b, uint64_t n, unsigned max_blocks,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = aligned(out, 16) && aligned(a, 16) && aligned(b, 16);
  add_kernel<<<grid_for(work_items(n, vec), kThreads, max_blocks), kThreads, 0, stream>>>(out, a, b, n, vec);
  return cudaGetLastError();
}

cudaError_t launch_axpy(float* y, const float* x, float alpha, uint64_t n, unsigned max_blocks, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = aligned(y, 16) && aligned(x, 16);
  axpy_kernel<<<grid_for(work_items(n, vec), kThreads, max_blocks), kThreads, 0, stream>>>(y, x, alpha, n, vec);
  return cudaGetLastError();
}

cudaError_t launch_scale(float* x, float alpha, uint64_t n, unsigned max_blocks, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = aligned(x, 16);
  scale_kernel<<<grid_for(work_items(n, vec), kThreads, max_blocks), kThreads, 0, stream>>>(x, alpha, n, vec);
  return cudaGetLastError();
}

}  // namespace distro::cuda

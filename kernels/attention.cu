// The row-wise parts of causal attention (the products around them are cuBLASLt GEMMs, see
// libdistro/cuda/cuda_model_ops.cpp and docs/cuda.md). One warp per score row: lanes take columns
// j = lane, lane + 32, ... in order and the warp reduces by an xor butterfly, so a row's result does
// not depend on anything but its inputs. Columns past the diagonal are written as zeros: the GEMMs
// that follow run over full rows and the zeros are the causal mask.
#include <cuda_bf16.h>

#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

using model::warp_max;
using model::warp_sum;

constexpr unsigned kThreads = 256;  // 8 rows per block

__device__ __forceinline__ uint64_t warp_index() { return (uint64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; }
__device__ __forceinline__ uint64_t warp_count() { return uint64_t(gridDim.x) * blockDim.x / 32; }

__global__ void __launch_bounds__(kThreads)
    softmax_kernel(__nv_bfloat16* __restrict__ P, float* __restrict__ lse, const float* __restrict__ S, uint64_t rows,
                   uint64_t seq) {
  const unsigned lane = threadIdx.x % 32;
  const __nv_bfloat16 zero = __float2bfloat16_rn(0.0f);
  for (uint64_t r = warp_index(); r < rows; r += warp_count()) {
    const uint64_t t = r % seq;
    const float* s = S + r * seq;
    float m = -INFINITY;
    for (uint64_t j = lane; j <= t; j += 32) m = fmaxf(m, s[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (uint64_t j = lane; j <= t; j += 32) sum += expf(s[j] - m);
    sum = warp_sum(sum);
    const float l = m + logf(sum);
    if (lane == 0) lse[r] = l;
    __nv_bfloat16* p = P + r * seq;
    for (uint64_t j = lane; j < seq; j += 32) p[j] = j <= t ? __float2bfloat16_rn(expf(s[j] - l)) : zero;
  }
}

// Two passes over a row: Dt = sum_j P_j dP_j, then P and dS = P (dP - Dt).
__global__ void __launch_bounds__(kThreads)
    softmax_backward_kernel(__nv_bfloat16* __restrict__ P, __nv_bfloat16* __restrict__ dS, const float* __restrict__ S,
                            const float* __restrict__ dP, const float* __restrict__ lse, uint64_t rows, uint64_t seq) {
  const unsigned lane = threadIdx.x % 32;
  const __nv_bfloat16 zero = __float2bfloat16_rn(0.0f);
  for (uint64_t r = warp_index(); r < rows; r += warp_count()) {
    const uint64_t t = r % seq;
    const float l = lse[r];
    const float *s = S + r * seq, *dp = dP + r * seq;
    float dt = 0.0f;
    for (uint64_t j = lane; j <= t; j += 32) dt += expf(s[j] - l) * dp[j];
    dt = warp_sum(dt);
    __nv_bfloat16 *p = P + r * seq, *ds = dS + r * seq;
    for (uint64_t j = lane; j < seq; j += 32) {
      if (j <= t) {
        const float pj = expf(s[j] - l);
        p[j] = __float2bfloat16_rn(pj);
        ds[j] = __float2bfloat16_rn(pj * (dp[j] - dt));
      } else {
        p[j] = zero;
        ds[j] = zero;
      }
    }
  }
}

unsigned grid_for_rows(uint64_t rows, unsigned max_blocks) {
  return model::grid_for(rows, kThreads / 32, max_blocks * 4u);
}

}  // namespace

cudaError_t launch_attention_softmax(uint16_t* P, float* lse, const float* S, uint64_t bh, uint64_t seq,
                                     unsigned max_blocks, cudaStream_t stream) {
  const uint64_t rows = bh * seq;
  if (rows == 0) return cudaSuccess;
  softmax_kernel<<<grid_for_rows(rows, max_blocks), kThreads, 0, stream>>>(reinterpret_cast<__nv_bfloat16*>(P), lse,
                                                                            S, rows, seq);
  return cudaGetLastError();
}

cudaError_t launch_attention_softmax_backward(uint16_t* P, uint16_t* dS, const float* S, const float* dP,
                                              const float* lse, uint64_t bh, uint64_t seq, unsigned max_blocks,
                                              cudaStream_t stream) {
  const uint64_t rows = bh * seq;
  if (rows == 0) return cudaSuccess;
  softmax_backward_kernel<<<grid_for_rows(rows, max_blocks), kThreads, 0, stream>>>(
      reinterpret_cast<__nv_bfloat16*>(P), reinterpret_cast<__nv_bfloat16*>(dS), S, dP, lse, rows, seq);
  return cudaGetLastError();
}

}  // namespace distro::cuda

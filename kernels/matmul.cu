// The plain GEMM that backs up cuBLASLt (libdistro/cuda/cublaslt_gemm.cpp) when it offers no
// algorithm for a shape or alignment, and under DISTRO_CUDA_GEMM=fallback: 16x16 tiles through
// shared memory, one thread per output element, bf16 inputs widened to float32 and accumulated in
// k order. Slow but exact about the contract (strides, transposes, beta == 0 never reads C).
#include <cuda_bf16.h>

#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

constexpr int kTile = 16;
constexpr unsigned kMaxGrid = 65535;  // per grid dimension here; larger sizes loop

__global__ void __launch_bounds__(kTile* kTile)
    gemm_fallback_kernel(GemmArgs g, const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B,
                         float* C, float alpha, float beta) {
  __shared__ float As[kTile][kTile + 1], Bs[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles_m = (g.M + kTile - 1) / kTile, tiles_n = (g.N + kTile - 1) / kTile;
  for (int64_t e = blockIdx.z; e < g.batch; e += gridDim.z) {
    const __nv_bfloat16 *a = A + e * g.strideA, *b = B + e * g.strideB;
    float* c = C + e * g.strideC;
    for (int64_t tm = blockIdx.y; tm < tiles_m; tm += gridDim.y) {
      for (int64_t tn = blockIdx.x; tn < tiles_n; tn += gridDim.x) {
        const int64_t i = tm * kTile + ty, j = tn * kTile + tx;
        float acc = 0.0f;
        for (int64_t k0 = 0; k0 < g.K; k0 += kTile) {
          const int64_t ka = k0 + tx, kb = k0 + ty;
          As[ty][tx] = i < g.M && ka < g.K ? __bfloat162float(g.transA ? a[ka * g.lda + i] : a[i * g.lda + ka]) : 0.0f;
          Bs[ty][tx] = kb < g.K && j < g.N ? __bfloat162float(g.transB ? b[j * g.ldb + kb] : b[kb * g.ldb + j]) : 0.0f;
          __syncthreads();
          for (int kk = 0; kk < kTile; ++kk) acc += As[ty][kk] * Bs[kk][tx];
          __syncthreads();
        }
        if (i < g.M && j < g.N) {
          float* out = c + i * g.ldc + j;
          *out = beta == 0.0f ? alpha * acc : alpha * acc + beta * *out;
        }
      }
    }
  }
}

unsigned clamp_grid(int64_t n) { return unsigned(n < 1 ? 1 : (n < int64_t(kMaxGrid) ? n : int64_t(kMaxGrid))); }

}  // namespace

cudaError_t launch_gemm_bf16_fallback(const GemmArgs& g, const uint16_t* A, const uint16_t* B, float* C,
                                      float alpha, float beta, cudaStream_t stream) {
  if (g.M <= 0 || g.N <= 0 || g.batch <= 0) return cudaSuccess;
  const dim3 grid(clamp_grid((g.N + kTile - 1) / kTile), clamp_grid((g.M + kTile - 1) / kTile), clamp_grid(g.batch));
  gemm_fallback_kernel<<<grid, dim3(kTile, kTile), 0, stream>>>(g, reinterpret_cast<const __nv_bfloat16*>(A),
                                                                reinterpret_cast<const __nv_bfloat16*>(B), C, alpha,
                                                                beta);
  return cudaGetLastError();
}

}  // namespace distro::cuda

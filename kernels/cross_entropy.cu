// Cross-entropy per row of logits [rows, vocab] with its gradient, one block per row: a single
// pass finds the row's max and sum of exp(l - max) together (each thread keeps a running pair over
// its strided columns, rescaling its sum when the max grows; pairs are merged in a fixed
// warp/block tree), a second pass writes dlogits = softmax * scale - onehot * scale, in place when
// dlogits is the logits buffer (each element is read and written by the same thread).
#include <cmath>

#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

// Merges the pair (m2, s2) into (m, s): the sums of exp(l - m) of two sets of columns. A set
// without columns (or only -inf ones) is (-inf, 0). Symmetric in its two pairs, so the butterfly
// leaves every lane with the same bits.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  const float a = m == -INFINITY ? 0.0f : s * expf(m - M);
  const float b = m2 == -INFINITY ? 0.0f : s2 * expf(m2 - M);
  m = M, s = a + b;
}

unsigned row_threads(uint64_t vocab) {
  unsigned t = 32;
  while (t < 256 && uint64_t(t) * 8 < vocab) t *= 2;
  return t;
}

__global__ void __launch_bounds__(256)
    cross_entropy_kernel(float* __restrict__ loss, float* dlogits, const float* logits,
                         const int32_t* __restrict__ targets, uint64_t rows, uint64_t vocab, float scale) {
  __shared__ float wm[32], ws[32];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (uint64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* l = logits + r * vocab;
    const int32_t tgt = targets[r];
    const bool valid = tgt >= 0 && uint64_t(tgt) < vocab;
    // Read before any thread may overwrite it (dlogits == logits); the barriers below order it.
    const float l_tgt = valid ? l[tgt] : NAN;

    float m = -INFINITY, s = 0.0f;
    for (uint64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float x = l[j];
      if (x > m) {
        s = (m == -INFINITY ? 0.0f : s * expf(m - x)) + 1.0f;
        m = x;
      } else if (x != -INFINITY) {
        s += expf(x - m);  // a NaN logit makes the sum NaN, as on the CPU
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
      merge(m, s, m2, s2);
    }
    if (lane == 0) wm[warp] = m, ws[warp] = s;
    __syncthreads();
    m = wm[0], s = ws[0];
    for (unsigned w = 1; w < warps; ++w) merge(m, s, wm[w], ws[w]);
    __syncthreads();  // wm/ws are rewritten by the next row

    if (threadIdx.x == 0) loss[r] = logf(s) + (m - l_tgt);
    if (dlogits) {
      float* dl = dlogits + r * vocab;
      const float k = scale / s;
      for (uint64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
        float d = expf(l[j] - m) * k;
        if (valid && j == uint64_t(tgt)) d -= scale;
        dl[j] = d;
      }
    }
  }
}

}  // namespace

cudaError_t launch_cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets,
                                 uint64_t rows, uint64_t vocab, float scale, unsigned max_blocks, cudaStream_t stream) {
  if (rows == 0 || vocab == 0) return cudaSuccess;
  cross_entropy_kernel<<<model::grid_for(rows, 1, max_blocks * 4u), row_threads(vocab), 0, stream>>>(
      loss, dlogits, logits, targets, rows, vocab, scale);
  return cudaGetLastError();
}

}  // namespace distro::cuda

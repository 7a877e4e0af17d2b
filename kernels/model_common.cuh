// Small device helpers shared by the model-op kernels (kernels/*.cu). Every reduction here has a
// fixed shape: the result depends only on the launch configuration, which the launchers derive from
// the op's sizes alone, so an op gives the same bits on every run.
#pragma once

#include <cstdint>

namespace distro::cuda::model {

// Sum over the 32 lanes of a warp by an xor butterfly. Each step adds a lane's value and its
// partner's, which commute, so every lane ends with the same bits.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024): warp sums, then the
// warp partials added in warp order by every thread. `shared` holds 32 floats; the function
// synchronises before returning and may be called again with the same buffer.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float s = 0.0f;
  for (unsigned w = 0; w < warps; ++w) s += shared[w];
  __syncthreads();  // the buffer may be reused right after
  return s;
}

// Grid size for a grid-stride loop over `work` items with `threads` per block, at most max_blocks
// (and at least one block).
inline unsigned grid_for(uint64_t work, unsigned threads, unsigned max_blocks) {
  const uint64_t want = (work + threads - 1) / threads;
  if (want < 1) return 1;
  return unsigned(want < max_blocks ? want : max_blocks);
}

inline bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace distro::cuda::model

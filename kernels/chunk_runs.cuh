// The chunk sequence of a batched optimizer launch (ChunkRun in libdistro/cuda/kernels.hpp), shared
// by distro_compress.cu and distro_apply.cu.
#pragma once

#include <cstdint>

#include "cuda/kernels.hpp"

namespace distro::cuda {

// The run that holds launch-wide chunk g, searching forward from run t: a persistent block's chunks
// ascend, so its run only moves forward (a few uniform constant-bank reads per chunk).
template <class Run>
__device__ __forceinline__ uint32_t run_of(const Run* run, uint32_t runs, uint64_t g, uint32_t t) {
  while (t + 1 < runs && g >= run[t + 1].at.begin) ++t;
  return t;
}

// The first element of chunk c of a run (as chunk_origin in optim/dct.hpp). With R = c / col_blocks
// the chunk's row of blocks counted over all batch entries (consecutive entries are contiguous),
// origin = c n2 + R (n1 - 1) cols: one division, by multiplication (ChunkRun::block_row; c < 2^31).
__device__ __forceinline__ uint64_t chunk_origin(const ChunkRun& r, uint32_t n1, uint32_t n2, uint32_t c) {
  return uint64_t(c) * n2 + uint64_t(r.block_row(c)) * ((n1 - 1) * r.cols);
}

// A hint: bring the line holding p into L2 (no register, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
  (void)p;
#endif
}

// Hints the lines of a 64x64 chunk at origin (row stride cols) of a and, unless null, b into L2:
// threads 0..127 of the block issue one hint per 128-byte line of each (row tid / 2, half tid % 2),
// not one per thread and 16-byte piece.
__device__ __forceinline__ void prefetch_chunk64_l2(const float* a, const float* b, uint64_t origin, uint64_t cols) {
  const unsigned tid = threadIdx.x;
  if (tid >= 128) return;
  const uint64_t at = origin + uint64_t(tid >> 1) * cols + 32 * (tid & 1);
  prefetch_l2(a + at);
  if (b) prefetch_l2(b + at);
}

}  // namespace distro::cuda

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

// The first element of chunk c of a run (as chunk_origin in optim/dct.hpp). 32-bit divisions: a
// run has fewer than 2^32 chunks, and 64-bit ones cost about a hundred instructions each.
__device__ __forceinline__ uint64_t chunk_origin(const ChunkRun& r, uint32_t n1, uint32_t n2, uint32_t c) {
  const uint32_t b = c / r.batch_chunks, rem = c - b * r.batch_chunks;
  const uint32_t rb = rem / r.col_blocks, cb = rem - rb * r.col_blocks;
  return uint64_t(b) * r.batch_chunks * (n1 * n2) + uint64_t(rb) * n1 * r.cols + uint64_t(cb) * n2;
}

}  // namespace distro::cuda

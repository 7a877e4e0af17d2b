// The parameter hash on CUDA: sum over i of hash_term(bits(data[i]), i, salt) modulo 2^64
// (optim/hash_mix.hpp). Unsigned addition modulo 2^64 is associative and commutative, so the grid
// may reduce in any order and the result is bit-identical to the CPU's sequential sum.
//
// One launch hashes up to kMaxReduceRuns tensors cut into units (kernels/reduce_units.cuh), so a
// model of 147 tensors pays a few launch tails instead of 147. Each thread loads its eight quads of
// a unit before it mixes them, the index term (i + 1) * kGolden + salt is computed once per quad and
// stepped by kGolden, and a block adds its sum into the run's word (one 64-bit atomicAdd) when it
// moves to another run and at the end.
#include <cstdint>

#include "optim/hash_mix.hpp"
#include "reduce_units.cuh"

namespace distro::cuda {
namespace {

constexpr unsigned kWarps = kReduceThreads / 32;

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// hash_term of the four elements of quad v, the first at index i: bits + (i + 1) kGolden + salt,
// with the index term stepped by kGolden instead of multiplied again.
__device__ __forceinline__ uint64_t quad_terms(uint4 v, uint64_t i, uint64_t salt) {
  const uint64_t base = (i + 1) * kGolden + salt;
  return mix64(v.x + base) + mix64(v.y + base + kGolden) + mix64(v.z + base + 2 * kGolden) +
         mix64(v.w + base + 3 * kGolden);
}

// Adds the block's sum of acc to *out (one atomic). Called by every thread of the block.
__device__ __forceinline__ void flush(unsigned long long acc, void* out) {
  __shared__ unsigned long long partial[kWarps];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned long long s = warp_sum(acc);
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    const unsigned long long t = warp_sum(lane < kWarps ? partial[lane] : 0ull);
    if (lane == 0) atomicAdd(static_cast<unsigned long long*>(out), t);
  }
  __syncthreads();  // partial is free for the next flush
}

__global__ void __launch_bounds__(kReduceThreads) hash_many_kernel(const __grid_constant__ ReduceLaunch L) {
  uint32_t t = 0;  // this block's run
  bool started = false;
  unsigned long long acc = 0;
  for (uint64_t g = blockIdx.x; g < L.units; g += gridDim.x) {
    const uint32_t nt = run_of_unit(L, g, t);
    if (started && nt != t) {
      flush(acc, L.run[t].out);
      acc = 0;
    }
    t = nt, started = true;
    const ReduceRun& R = L.run[t];
    const RunSpan span(R);
    const uint64_t unit = g - R.begin;
    uint4 v[kQuadsPerThread];
    span.load(R, unit, v);
#pragma unroll
    for (unsigned k = 0; k < kQuadsPerThread; ++k) {
      const uint64_t q = span.quad(unit, k);
      if (q < span.nquads) acc += quad_terms(v[k], span.head + 4 * q, R.salt);
    }
    if (unit == 0) {
      const uint32_t* bits = reinterpret_cast<const uint32_t*>(R.data);
      span.ends(R.n, [&](uint64_t i) { acc += hash_term(bits[i], i, R.salt); });
    }
  }
  if (started) flush(acc, L.run[t].out);
}

}  // namespace

cudaError_t launch_hash_many(const ReduceLaunch& L, unsigned max_blocks, cudaStream_t stream) {
  if (L.units == 0 || L.runs == 0) return cudaSuccess;
  if (max_blocks == 0) max_blocks = 1;
  const unsigned blocks = unsigned(L.units < max_blocks ? L.units : max_blocks);
  hash_many_kernel<<<blocks, kReduceThreads, 0, stream>>>(L);
  return cudaGetLastError();
}

cudaError_t kernels_loadable() {
  cudaFuncAttributes attr{};
  return cudaFuncGetAttributes(&attr, hash_many_kernel);
}

}  // namespace distro::cuda

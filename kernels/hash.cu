// The parameter hash on CUDA: sum over i of hash_term(bits(data[i]), i, salt) modulo 2^64
// (optim/hash_mix.hpp). Unsigned addition modulo 2^64 is associative and commutative, so the grid
// may reduce in any order and the result is bit-identical to the CPU's sequential sum.
//
// One launch hashes up to kMaxHashRuns tensors ("runs"), cut into units of kHashUnitQuads 16-byte
// quads: a persistent grid loops over the launch's units, so a model of 147 tensors pays a few
// launch tails instead of 147. Each thread loads its eight quads of a unit before it mixes them
// (eight 16-byte loads in flight), the index term (i + 1) * kGolden + salt is computed once per quad
// and stepped by kGolden, and a block adds its sum into the run's word (one 64-bit atomicAdd) when it
// moves to another run and at the end. A run's unit 0 also takes the 0..3 elements before its first
// 16-byte boundary and the 0..3 after its last whole quad.
#include <cstdint>

#include "cuda/kernels.hpp"
#include "optim/hash_mix.hpp"

namespace distro::cuda {
namespace {

constexpr unsigned kHashThreads = 256;
constexpr unsigned kWarps = kHashThreads / 32;
constexpr unsigned kQuadsPerThread = kHashUnitQuads / kHashThreads;
static_assert(kQuadsPerThread * kHashThreads == kHashUnitQuads);

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Elements of run R before its first 16-byte boundary (its data is 4-byte aligned), at most n.
__device__ __forceinline__ uint64_t head_of(const HashRun& R) {
  const uint64_t misalign = (reinterpret_cast<uintptr_t>(R.bits) % 16) / 4;
  const uint64_t head = misalign == 0 ? 0 : 4 - misalign;
  return head < R.n ? head : R.n;
}

// hash_term of the four elements of quad v, the first at index i: bits + (i + 1) kGolden + salt,
// with the index term stepped by kGolden instead of multiplied again.
__device__ __forceinline__ uint64_t quad_terms(uint4 v, uint64_t i, uint64_t salt) {
  const uint64_t base = (i + 1) * kGolden + salt;
  return mix64(v.x + base) + mix64(v.y + base + kGolden) + mix64(v.z + base + 2 * kGolden) +
         mix64(v.w + base + 3 * kGolden);
}

// Adds the block's sum of acc to *out (one atomic). Called by every thread of the block.
__device__ __forceinline__ void flush(unsigned long long acc, unsigned long long* out) {
  __shared__ unsigned long long partial[kWarps];
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const unsigned long long s = warp_sum(acc);
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    const unsigned long long t = warp_sum(lane < kWarps ? partial[lane] : 0ull);
    if (lane == 0) atomicAdd(out, t);
  }
  __syncthreads();  // partial is free for the next flush
}

__global__ void __launch_bounds__(kHashThreads) hash_many_kernel(const __grid_constant__ HashLaunch L) {
  const unsigned tid = threadIdx.x;
  uint32_t t = 0;  // this block's run: its units ascend, so the run only moves forward
  bool started = false;
  unsigned long long acc = 0;
  for (uint64_t g = blockIdx.x; g < L.units; g += gridDim.x) {
    uint32_t nt = t;
    while (nt + 1 < L.runs && g >= L.run[nt + 1].begin) ++nt;
    if (started && nt != t) {
      flush(acc, L.run[t].out);
      acc = 0;
    }
    t = nt, started = true;
    const HashRun& R = L.run[t];
    const uint64_t unit = g - R.begin, head = head_of(R), nquads = (R.n - head) / 4;
    const uint4* quads = reinterpret_cast<const uint4*>(R.bits + head);
    const uint64_t q0 = unit * kHashUnitQuads + tid;
    uint4 v[kQuadsPerThread];
#pragma unroll
    for (unsigned k = 0; k < kQuadsPerThread; ++k) {
      const uint64_t q = q0 + uint64_t(k) * kHashThreads;
      v[k] = q < nquads ? __ldg(quads + q) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (unsigned k = 0; k < kQuadsPerThread; ++k) {
      const uint64_t q = q0 + uint64_t(k) * kHashThreads;
      if (q < nquads) acc += quad_terms(v[k], head + 4 * q, R.salt);
    }
    if (unit == 0) {
      const uint64_t done = head + 4 * nquads;  // elements [done, n) are the tail
      if (tid < head) acc += hash_term(R.bits[tid], tid, R.salt);
      if (tid < R.n - done) acc += hash_term(R.bits[done + tid], done + tid, R.salt);
    }
  }
  if (started) flush(acc, L.run[t].out);
}

}  // namespace

uint64_t hash_units(const float* data, uint64_t n) {
  const uint64_t misalign = (reinterpret_cast<uintptr_t>(data) % 16) / 4;
  const uint64_t head = misalign == 0 ? 0 : (4 - misalign < n ? 4 - misalign : n);
  const uint64_t nquads = (n - head) / 4;
  const uint64_t units = (nquads + kHashUnitQuads - 1) / kHashUnitQuads;
  return units < 1 ? 1 : units;
}

cudaError_t launch_hash_many(const HashLaunch& L, unsigned max_blocks, cudaStream_t stream) {
  if (L.units == 0 || L.runs == 0) return cudaSuccess;
  if (max_blocks == 0) max_blocks = 1;
  const unsigned blocks = unsigned(L.units < max_blocks ? L.units : max_blocks);
  hash_many_kernel<<<blocks, kHashThreads, 0, stream>>>(L);
  return cudaGetLastError();
}

cudaError_t kernels_loadable() {
  cudaFuncAttributes attr{};
  return cudaFuncGetAttributes(&attr, hash_many_kernel);
}

}  // namespace distro::cuda

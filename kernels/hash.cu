// The parameter hash on CUDA: sum over i of hash_term(bits(data[i]), i, salt) modulo 2^64
// (optim/hash_mix.hpp). Unsigned addition modulo 2^64 is associative and commutative, so the grid
// may reduce in any order and the result is bit-identical to the CPU's sequential sum.
//
// One pass over memory: a grid-stride loop with 16-byte loads (after a scalar head up to the first
// 16-byte boundary), a warp-shuffle and shared-memory reduction per block, and one 64-bit atomicAdd
// per block into *out.
#include <cstdint>

#include "cuda/kernels.hpp"
#include "optim/hash_mix.hpp"

namespace distro::cuda {
namespace {

constexpr unsigned kHashThreads = 256;
constexpr unsigned kWarps = kHashThreads / 32;

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void __launch_bounds__(kHashThreads)
    hash_kernel(const uint32_t* __restrict__ bits, uint64_t n, uint64_t head, uint64_t salt,
                unsigned long long* __restrict__ out) {
  const uint64_t tid = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
  uint64_t acc = 0;

  // Head: the 0..3 elements before the first 16-byte boundary (head <= n).
  if (tid < head) acc += hash_term(bits[tid], tid, salt);

  // Body: whole groups of four elements, one 16-byte load each.
  const uint4* quads = reinterpret_cast<const uint4*>(bits + head);
  const uint64_t nquads = (n - head) / 4;
  for (uint64_t q = tid; q < nquads; q += stride) {
    const uint4 v = __ldg(quads + q);
    const uint64_t i = head + 4 * q;
    acc += hash_term(v.x, i, salt) + hash_term(v.y, i + 1, salt) + hash_term(v.z, i + 2, salt) +
           hash_term(v.w, i + 3, salt);
  }

  // Tail: the 0..3 elements after the last whole group.
  const uint64_t done = head + 4 * nquads;
  if (tid < n - done) acc += hash_term(bits[done + tid], done + tid, salt);

  // Block reduction, then one atomic per block.
  __shared__ unsigned long long partial[kWarps];
  unsigned long long s = warp_sum(acc);
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < kWarps ? partial[lane] : 0ull;
    s = warp_sum(s);
    if (lane == 0) atomicAdd(out, s);
  }
}

}  // namespace

cudaError_t launch_hash(const float* data, uint64_t n, uint64_t salt, unsigned long long* out,
                        unsigned max_blocks, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (max_blocks == 0) max_blocks = 1;
  const auto* bits = reinterpret_cast<const uint32_t*>(data);
  // Elements before the first 16-byte boundary (data is at least 4-byte aligned).
  const uint64_t misalign = (reinterpret_cast<uintptr_t>(data) % 16) / 4;
  const uint64_t head = misalign == 0 ? 0 : (4 - misalign < n ? 4 - misalign : n);
  const uint64_t nquads = (n - head) / 4;
  // Enough threads for the quads, and at least one block for head and tail.
  const uint64_t want = (nquads + kHashThreads - 1) / kHashThreads;
  const unsigned blocks = unsigned(want < 1 ? 1 : (want < max_blocks ? want : max_blocks));
  hash_kernel<<<blocks, kHashThreads, 0, stream>>>(bits, n, head, salt, out);
  return cudaGetLastError();
}

cudaError_t kernels_loadable() {
  cudaFuncAttributes attr{};
  return cudaFuncGetAttributes(&attr, hash_kernel);
}

}  // namespace distro::cuda

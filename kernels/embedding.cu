// Embedding lookup and its gradient. The backward must be deterministic without float atomics:
// the host groups the positions by id (a stable counting sort, as the CPU does), so each touched
// table row is summed by one thread per column over its positions in increasing order, started
// from the first term and added to the row once: the CPU's operations in the CPU's order, hence
// the CPU's bits.
#include "cuda/kernels.hpp"
#include "model_common.cuh"

namespace distro::cuda {
namespace {

constexpr unsigned kThreads = 256;

// One thread per output element (i, c), grid-stride; consecutive threads take consecutive columns.
__global__ void __launch_bounds__(kThreads)
    embedding_forward_kernel(float* __restrict__ out, const float* __restrict__ table, const int32_t* __restrict__ ids,
                             uint64_t n, uint64_t vocab, uint64_t dim) {
  const uint64_t total = n * dim, stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t e = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const uint64_t i = e / dim, c = e - i * dim;
    const int32_t id = ids[i];
    if (id < 0 || uint64_t(id) >= vocab) continue;
    out[e] = table[uint64_t(id) * dim + c];
  }
}

// One thread per (group, column).
__global__ void __launch_bounds__(kThreads)
    embedding_backward_kernel(float* __restrict__ dtable, const float* __restrict__ dout,
                              const int32_t* __restrict__ uniq, const int32_t* __restrict__ seg,
                              const int32_t* __restrict__ order, uint64_t groups, uint64_t vocab, uint64_t dim) {
  const uint64_t total = groups * dim, stride = uint64_t(gridDim.x) * blockDim.x;
  for (uint64_t e = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const uint64_t g = e / dim, c = e - g * dim;
    const int32_t id = uniq[g], s0 = seg[g], s1 = seg[g + 1];
    if (id < 0 || uint64_t(id) >= vocab || s1 <= s0) continue;
    float acc = dout[uint64_t(order[s0]) * dim + c];
    for (int32_t s = s0 + 1; s < s1; ++s) acc += dout[uint64_t(order[s]) * dim + c];
    dtable[uint64_t(id) * dim + c] += acc;
  }
}

}  // namespace

cudaError_t launch_embedding_forward(float* out, const float* table, const int32_t* ids, uint64_t n,
                                     uint64_t vocab, uint64_t dim, unsigned max_blocks, cudaStream_t stream) {
  if (n == 0 || dim == 0) return cudaSuccess;
  embedding_forward_kernel<<<model::grid_for(n * dim, kThreads, max_blocks), kThreads, 0, stream>>>(
      out, table, ids, n, vocab, dim);
  return cudaGetLastError();
}

cudaError_t launch_embedding_backward(float* dtable, const float* dout, const int32_t* uniq, const int32_t* seg,
                                      const int32_t* order, uint64_t groups, uint64_t vocab, uint64_t dim,
                                      unsigned max_blocks, cudaStream_t stream) {
  if (groups == 0 || dim == 0) return cudaSuccess;
  embedding_backward_kernel<<<model::grid_for(groups * dim, kThreads, max_blocks), kThreads, 0, stream>>>(
      dtable, dout, uniq, seg, order, groups, vocab, dim);
  return cudaGetLastError();
}

}  // namespace distro::cuda

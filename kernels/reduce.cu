// Reductions of the model's tensors: the sum of squares for the gradient norm. Deterministic whatever
// the grid: every tensor is cut into units of kSumSquaresUnitQuads 16-byte quads, each unit summed
// by one block in a fixed order and tree into its own partial, then one block per tensor adds its
// units' partials in a fixed order and tree. One launch pair covers up to kMaxReduceRuns tensors, so
// a model of 147 tensors pays a few launch tails instead of 294.
#include <cstdint>

#include "cuda/kernels.hpp"

namespace distro::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kQuadsPerThread = kSumSquaresUnitQuads / kThreads;
static_assert(kQuadsPerThread * kThreads == kSumSquaresUnitQuads);

// The block's sum in a fixed tree; every thread must call it, thread 0 gets the sum. Ends with a
// barrier, so it may be called again at once.
__device__ double block_sum(double v) {
  __shared__ double part[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? part[threadIdx.x] : 0.0;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

__device__ __forceinline__ double squares(float4 v) {
  return double(v.x) * double(v.x) + double(v.y) * double(v.y) + double(v.z) * double(v.z) + double(v.w) * double(v.w);
}

// Elements of run R before its first 16-byte boundary (x is 4-byte aligned), at most n.
__device__ __forceinline__ uint64_t head_of(const SumSquaresRun& R) {
  const uint64_t misalign = (reinterpret_cast<uintptr_t>(R.x) % 16) / 4;
  const uint64_t head = misalign == 0 ? 0 : 4 - misalign;
  return head < R.n ? head : R.n;
}

// Unit g of the launch into partial[g]: its quads, eight 16-byte loads in flight per thread, and in
// a run's unit 0 also the 0..3 elements before its first whole quad and the 0..3 after its last.
__global__ void __launch_bounds__(kThreads) sum_squares_units(const __grid_constant__ SumSquaresLaunch L) {
  const unsigned tid = threadIdx.x;
  uint32_t t = 0;  // this block's run: its units ascend, so the run only moves forward
  for (uint64_t g = blockIdx.x; g < L.units; g += gridDim.x) {
    while (t + 1 < L.runs && g >= L.run[t + 1].begin) ++t;
    const SumSquaresRun& R = L.run[t];
    const uint64_t unit = g - R.begin, head = head_of(R), nquads = (R.n - head) / 4;
    const float4* quads = reinterpret_cast<const float4*>(R.x + head);
    const uint64_t q0 = unit * kSumSquaresUnitQuads + tid;
    float4 v[kQuadsPerThread];
#pragma unroll
    for (unsigned k = 0; k < kQuadsPerThread; ++k) {
      const uint64_t q = q0 + uint64_t(k) * kThreads;
      v[k] = q < nquads ? __ldg(quads + q) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    double s = 0.0;
#pragma unroll
    for (unsigned k = 0; k < kQuadsPerThread; ++k) s += squares(v[k]);
    if (unit == 0) {
      const uint64_t done = head + 4 * nquads;
      if (tid < head) s += double(R.x[tid]) * double(R.x[tid]);
      if (tid < R.n - done) s += double(R.x[done + tid]) * double(R.x[done + tid]);
    }
    s = block_sum(s);
    if (tid == 0) L.partial[g] = s;
  }
}

// Block b adds run b's partials, in order per thread and then in a fixed tree.
__global__ void __launch_bounds__(kThreads) sum_squares_runs(const __grid_constant__ SumSquaresLaunch L) {
  const SumSquaresRun& R = L.run[blockIdx.x];
  const uint64_t end = blockIdx.x + 1 < L.runs ? L.run[blockIdx.x + 1].begin : L.units;
  double s = 0.0;
  for (uint64_t g = R.begin + threadIdx.x; g < end; g += kThreads) s += L.partial[g];
  s = block_sum(s);
  if (threadIdx.x == 0) *R.out = s;
}

}  // namespace

uint64_t sum_squares_units(const float* x, uint64_t n) {
  const uint64_t misalign = (reinterpret_cast<uintptr_t>(x) % 16) / 4;
  const uint64_t head = misalign == 0 ? 0 : (4 - misalign < n ? 4 - misalign : n);
  const uint64_t units = ((n - head) / 4 + kSumSquaresUnitQuads - 1) / kSumSquaresUnitQuads;
  return units < 1 ? 1 : units;
}

cudaError_t launch_sum_squares_many(const SumSquaresLaunch& L, unsigned max_blocks, cudaStream_t stream) {
  if (L.units == 0 || L.runs == 0) return cudaSuccess;
  if (max_blocks == 0) max_blocks = 1;
  const unsigned blocks = unsigned(L.units < max_blocks ? L.units : max_blocks);
  sum_squares_units<<<blocks, kThreads, 0, stream>>>(L);
  sum_squares_runs<<<L.runs, kThreads, 0, stream>>>(L);
  return cudaGetLastError();
}

}  // namespace distro::cuda

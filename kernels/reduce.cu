// Reductions of the model's tensors: the sum of squares for the gradient norm. Deterministic whatever
// the grid: every tensor is cut into units (kernels/reduce_units.cuh), each unit summed by one block
// in a fixed order and tree into its own partial, then one block per tensor adds its units' partials
// in a fixed order and tree. One launch pair covers up to kMaxReduceRuns tensors, so a model of 147
// tensors pays a few launch tails instead of 294.
#include <cstdint>

#include "reduce_units.cuh"

namespace distro::cuda {
namespace {

// The block's sum in a fixed tree; every thread must call it, thread 0 gets the sum. Ends with a
// barrier, so it may be called again at once.
__device__ double block_sum(double v) {
  __shared__ double part[kReduceThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  v = threadIdx.x < kReduceThreads / 32 ? part[threadIdx.x] : 0.0;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

__device__ __forceinline__ double squares(float4 v) {
  return double(v.x) * double(v.x) + double(v.y) * double(v.y) + double(v.z) * double(v.z) + double(v.w) * double(v.w);
}

// Unit g of the launch into partial[g] (zeros past a run's end add nothing).
__global__ void __launch_bounds__(kReduceThreads) sum_squares_units(const __grid_constant__ ReduceLaunch L) {
  uint32_t t = 0;  // this block's run
  for (uint64_t g = blockIdx.x; g < L.units; g += gridDim.x) {
    t = run_of_unit(L, g, t);
    const ReduceRun& R = L.run[t];
    const RunSpan span(R);
    const uint64_t unit = g - R.begin;
    float4 v[kQuadsPerThread];
    span.load(R, unit, v);
    double s = 0.0;
#pragma unroll
    for (unsigned k = 0; k < kQuadsPerThread; ++k) s += squares(v[k]);
    if (unit == 0) span.ends(R.n, [&](uint64_t i) { s += double(R.data[i]) * double(R.data[i]); });
    s = block_sum(s);
    if (threadIdx.x == 0) L.partial[g] = s;
  }
}

// Block b adds run b's partials, in order per thread and then in a fixed tree.
__global__ void __launch_bounds__(kReduceThreads) sum_squares_runs(const __grid_constant__ ReduceLaunch L) {
  const ReduceRun& R = L.run[blockIdx.x];
  const uint64_t end = blockIdx.x + 1 < L.runs ? L.run[blockIdx.x + 1].begin : L.units;
  double s = 0.0;
  for (uint64_t g = R.begin + threadIdx.x; g < end; g += kReduceThreads) s += L.partial[g];
  s = block_sum(s);
  if (threadIdx.x == 0) *static_cast<double*>(R.out) = s;
}

}  // namespace

uint64_t reduce_units(const float* data, uint64_t n) {
  const uint64_t units = ((n - run_head(data, n)) / 4 + kReduceUnitQuads - 1) / kReduceUnitQuads;
  return units < 1 ? 1 : units;
}

cudaError_t launch_sum_squares_many(const ReduceLaunch& L, unsigned max_blocks, cudaStream_t stream) {
  if (L.units == 0 || L.runs == 0) return cudaSuccess;
  if (max_blocks == 0) max_blocks = 1;
  const unsigned blocks = unsigned(L.units < max_blocks ? L.units : max_blocks);
  sum_squares_units<<<blocks, kReduceThreads, 0, stream>>>(L);
  sum_squares_runs<<<L.runs, kReduceThreads, 0, stream>>>(L);
  return cudaGetLastError();
}

}  // namespace distro::cuda

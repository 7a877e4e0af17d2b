// CudaDevice's reductions (kernels/reduce.cu).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "cuda/cuda_device.hpp"
#include "cuda/op_timer.hpp"
#include "cuda/kernels.hpp"

namespace distro {

double CudaDevice::sum_squares(const float* x, uint64_t n) {
  double sum = 0.0;
  sum_squares_many(&x, &n, 1, &sum);
  return sum;
}

void CudaDevice::sum_squares_many(const float* const* x, const uint64_t* n, size_t count, double* out) {
  cuda::OpTimer::Scope timed(*timer_, "sum_squares_many");
  if (count == 0) return;
  for (size_t i = 0; i < count; ++i)
    if (n[i]) check_range(x[i], n[i] * 4, "x", "sum_squares");
  activate();
  std::lock_guard<std::mutex> lock(mutex_);
  static_assert(sizeof(double) == sizeof(unsigned long long));
  auto* sums = reinterpret_cast<double*>(results(count));
  cudaError_t err = cudaMemsetAsync(sums, 0, count * sizeof(double), stream_);
  // Up to kMaxReduceRuns buffers per launch pair, one partial per unit; the launches run in stream
  // order, so one scratch serves them all.
  std::vector<uint64_t> units(count, 0);
  uint64_t most = 0, in_launch = 0;
  for (size_t i = 0, runs = 0; i < count; ++i) {
    if (n[i] == 0) continue;
    units[i] = cuda::sum_squares_units(x[i], n[i]);
    in_launch += units[i];
    most = std::max(most, in_launch);
    if (++runs == cuda::kMaxReduceRuns) runs = 0, in_launch = 0;
  }
  if (reduce_scratch_.bytes() < most * sizeof(double)) {
    reduce_scratch_ = DeviceMemory();
    reduce_scratch_ = alloc(most * sizeof(double));
  }
  cuda::SumSquaresLaunch L;
  L.partial = reduce_scratch_.as<double>();
  auto launch = [&] {
    if (err == cudaSuccess) err = cuda::launch_sum_squares_many(L, max_blocks_, stream_);
    L.units = 0, L.runs = 0;
  };
  for (size_t i = 0; i < count; ++i) {
    if (n[i] == 0) continue;
    cuda::SumSquaresRun& r = L.run[L.runs++];
    r.x = x[i], r.n = n[i], r.begin = L.units, r.out = sums + i;
    L.units += units[i];
    if (L.runs == cuda::kMaxReduceRuns) launch();
  }
  if (L.runs > 0) launch();
  if (err == cudaSuccess) err = cudaMemcpyAsync(out, sums, count * sizeof(double), cudaMemcpyDeviceToHost, stream_);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream_);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    fail(Code::device, info_.name + ": sum_squares failed: " + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ")");
  }
}

}  // namespace distro

// CudaDevice's reductions (kernels/reduce.cu).
#include <cuda_runtime_api.h>

#include <algorithm>

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
  const unsigned blocks = std::min<unsigned>(cuda::kSumSquaresMaxBlocks, sm_count_ * 8);
  std::lock_guard<std::mutex> lock(mutex_);
  if (!reduce_scratch_.data()) reduce_scratch_ = alloc(cuda::kSumSquaresMaxBlocks * sizeof(double));
  double* partial = reduce_scratch_.as<double>();
  // Each buffer's two kernels run after the previous buffer's on the stream, so one partial buffer
  // serves them all; the sums land in results_, read back once.
  static_assert(sizeof(double) == sizeof(unsigned long long));
  auto* sums = reinterpret_cast<double*>(results(count));
  cudaError_t err = cudaMemsetAsync(sums, 0, count * sizeof(double), stream_);
  for (size_t i = 0; i < count && err == cudaSuccess; ++i)
    if (n[i]) err = cuda::launch_sum_squares(x[i], n[i], partial, blocks, sums + i, stream_);
  if (err == cudaSuccess) err = cudaMemcpyAsync(out, sums, count * sizeof(double), cudaMemcpyDeviceToHost, stream_);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream_);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    fail(Code::device, info_.name + ": sum_squares failed: " + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ")");
  }
}

}  // namespace distro

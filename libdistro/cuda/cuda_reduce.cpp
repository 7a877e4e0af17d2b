// CudaDevice's reductions over many tensors (kernels/hash.cu, kernels/reduce.cu).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "cuda/cuda_device.hpp"
#include "cuda/cuda_error.hpp"
#include "cuda/op_timer.hpp"
#include "cuda/kernels.hpp"

namespace distro {

#define DISTRO_CUDA_CHECK(expr) cuda::check_error(ordinal_, #expr, (expr))

double CudaDevice::sum_squares(const float* x, uint64_t n) {
  double sum = 0.0;
  sum_squares_many(&x, &n, 1, &sum);
  return sum;
}

namespace {

// The non-empty buffers packed into launches of at most kMaxReduceRuns runs, buffer i's result in
// words + i * word_bytes (salt may be null).
std::vector<cuda::ReduceLaunch> pack_runs(const float* const* data, const uint64_t* n, const uint64_t* salt,
                                          size_t count, unsigned char* words, size_t word_bytes) {
  std::vector<cuda::ReduceLaunch> launches;
  for (size_t i = 0; i < count; ++i) {
    if (n[i] == 0) continue;
    if (launches.empty() || launches.back().runs == cuda::kMaxReduceRuns) launches.emplace_back();
    cuda::ReduceLaunch& L = launches.back();
    cuda::ReduceRun& r = L.run[L.runs++];
    r.data = data[i];
    r.n = n[i];
    r.begin = L.units;
    r.salt = salt ? salt[i] : 0;
    r.out = words + i * word_bytes;
    L.units += cuda::reduce_units(data[i], n[i]);
  }
  return launches;
}

}  // namespace

void CudaDevice::hash_many(const float* const* data, const uint64_t* n, const uint64_t* salt, size_t count,
                           uint64_t* out) {
  cuda::OpTimer::Scope timed(*timer_, "hash_many");
  if (count == 0) return;
  activate();
  for (size_t i = 0; i < count; ++i) {
    if (n[i] == 0) continue;
    if (!data[i]) fail(Code::invalid_argument, info_.name + ": hash of a null pointer");
    if (reinterpret_cast<uintptr_t>(data[i]) % alignof(float) != 0)
      fail(Code::invalid_argument, info_.name + ": hash: data is not aligned to 4 bytes");
    check_device_pointer(data[i], "hash");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  unsigned long long* sums = results(count);
  DISTRO_CUDA_CHECK(cudaMemsetAsync(sums, 0, count * sizeof(unsigned long long), stream_));
  for (const cuda::ReduceLaunch& L : pack_runs(data, n, salt, count, reinterpret_cast<unsigned char*>(sums), 8))
    DISTRO_CUDA_CHECK(cuda::launch_hash_many(L, max_blocks_, stream_));
  static_assert(sizeof(unsigned long long) == sizeof(uint64_t));
  DISTRO_CUDA_CHECK(cudaMemcpyAsync(out, sums, count * sizeof(uint64_t), cudaMemcpyDeviceToHost, stream_));
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
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
  std::vector<cuda::ReduceLaunch> launches =
      pack_runs(x, n, nullptr, count, reinterpret_cast<unsigned char*>(sums), sizeof(double));
  // One partial per unit of a launch; the launches run in stream order, so one scratch serves all.
  uint64_t most = 0;
  for (const cuda::ReduceLaunch& L : launches) most = std::max(most, L.units);
  if (reduce_scratch_.bytes() < most * sizeof(double)) {
    reduce_scratch_ = DeviceMemory();
    reduce_scratch_ = alloc(most * sizeof(double));
  }
  for (cuda::ReduceLaunch& L : launches) {
    L.partial = reduce_scratch_.as<double>();
    if (err == cudaSuccess) err = cuda::launch_sum_squares_many(L, max_blocks_, stream_);
  }
  if (err == cudaSuccess) err = cudaMemcpyAsync(out, sums, count * sizeof(double), cudaMemcpyDeviceToHost, stream_);
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream_);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    fail(Code::device, info_.name + ": sum_squares failed: " + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ")");
  }
}

}  // namespace distro

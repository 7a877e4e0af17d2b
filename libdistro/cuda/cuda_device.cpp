#include "cuda/cuda_device.hpp"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "backend/registry.hpp"
#include "cuda/kernels.hpp"

namespace distro {
namespace {

// "cuda:0: cudaMalloc(1073741824 bytes) failed: cudaErrorMemoryAllocation (out of memory)".
// Clears the runtime's last-error slot so a recoverable error does not resurface in a later call.
[[noreturn]] void raise(int ordinal, const std::string& call, cudaError_t err) {
  (void)cudaGetLastError();
  const Code code = err == cudaErrorMemoryAllocation ? Code::out_of_memory : Code::device;
  fail(code, "cuda:" + std::to_string(ordinal) + ": " + call + " failed: " + cudaGetErrorName(err) +
                 " (" + cudaGetErrorString(err) + ")");
}

inline void check(int ordinal, const char* call, cudaError_t err) {
  if (err != cudaSuccess) raise(ordinal, call, err);
}

#define DISTRO_CUDA_CHECK(expr) check(ordinal_, #expr, (expr))

// Resident 256-thread blocks per SM worth launching for a memory-bound grid-stride kernel.
constexpr unsigned kBlocksPerSm = 8;

}  // namespace

CudaDevice::CudaDevice(int ordinal) : ordinal_(ordinal) {
  cudaDeviceProp prop{};
  DISTRO_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal_));
  activate();
  // Our kernels are built for sm_75 and newer; an older GPU (or a build without its architecture)
  // cannot run them, so it is not a usable device.
  DISTRO_CUDA_CHECK(cuda::kernels_loadable());

  cudaStream_t stream = nullptr;
  DISTRO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_ = stream;
  void* scratch = nullptr;
  if (cudaError_t err = cudaMalloc(&scratch, sizeof(unsigned long long)); err != cudaSuccess) {
    cudaStreamDestroy(stream);
    stream_ = nullptr;
    raise(ordinal_, "cudaMalloc(scratch)", err);
  }
  scratch_ = static_cast<unsigned long long*>(scratch);

  size_t free_bytes = 0, total_bytes = 0;
  if (cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes); err != cudaSuccess) {
    cudaFree(scratch_);
    cudaStreamDestroy(stream);
    scratch_ = nullptr, stream_ = nullptr;
    raise(ordinal_, "cudaMemGetInfo", err);
  }

  info_.name = "cuda:" + std::to_string(ordinal_);
  info_.description = std::string(prop.name) + " (compute " + std::to_string(prop.major) + "." +
                      std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) +
                      " SMs)";
  info_.kind = DeviceKind::cuda;
  const int cc = prop.major * 10 + prop.minor;
  // fp16 arithmetic from compute 5.3, bf16 from 8.0; 64-bit integers everywhere. Not
  // kDeviceOptimizer: compress and apply have no CUDA kernels yet.
  info_.flags = kDeviceInt64 | (cc >= 53 ? kDeviceFp16 : 0u) | (cc >= 80 ? kDeviceBf16 : 0u);
  info_.memory_total = total_bytes;
  info_.memory_free = free_bytes;
  info_.compute_units = uint32_t(prop.multiProcessorCount);
  info_.subgroup_size = uint32_t(prop.warpSize);
  max_blocks_ =
      unsigned(prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1) * kBlocksPerSm;
}

CudaDevice::~CudaDevice() {
  // Errors are ignored here: at process exit the runtime may already be unloading
  // (cudaErrorCudartUnloading), and a destructor must not throw.
  if (cudaSetDevice(ordinal_) == cudaSuccess) {
    if (scratch_) cudaFree(scratch_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  (void)cudaGetLastError();
}

void CudaDevice::activate() const { DISTRO_CUDA_CHECK(cudaSetDevice(ordinal_)); }

const DeviceInfo& CudaDevice::info() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t free_bytes = 0, total_bytes = 0;
  // info() must not throw (error messages call it); a failed query keeps the last value.
  if (cudaSetDevice(ordinal_) == cudaSuccess &&
      cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess)
    info_.memory_free = free_bytes;
  else
    (void)cudaGetLastError();
  return info_;
}

DeviceMemory CudaDevice::alloc(size_t bytes) {
  activate();
  void* ptr = nullptr;
  if (cudaError_t err = cudaMalloc(&ptr, bytes); err != cudaSuccess)
    raise(ordinal_, "cudaMalloc(" + std::to_string(bytes) + " bytes)", err);
  return DeviceMemory(this, ptr, bytes);
}

void CudaDevice::release(void* ptr) noexcept {
  if (!ptr) return;
  // cudaFree waits for work still using the memory. A failure here (runtime unloading, a context
  // already broken by an earlier fault) leaves nothing to do but clear the error.
  if (cudaSetDevice(ordinal_) != cudaSuccess || cudaFree(ptr) != cudaSuccess)
    (void)cudaGetLastError();
}

void CudaDevice::upload(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (!dst || !src) fail(Code::invalid_argument, info_.name + ": upload with a null pointer");
  activate();
  DISTRO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaDevice::download(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  if (!dst || !src) fail(Code::invalid_argument, info_.name + ": download with a null pointer");
  activate();
  DISTRO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaDevice::zero(void* dst, size_t bytes) {
  if (bytes == 0) return;
  if (!dst) fail(Code::invalid_argument, info_.name + ": zero with a null pointer");
  activate();
  DISTRO_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
}

void CudaDevice::synchronize() {
  activate();
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// A host pointer or another GPU's memory handed to a kernel would fault and break this device's
// context for the rest of the process, so kernel inputs are checked first (one driver query).
void CudaDevice::check_device_pointer(const void* p, const char* op) const {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess)
    raise(ordinal_, std::string("cudaPointerGetAttributes (") + op + ")", err);
  const bool on_device = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  if (!on_device || attr.device != ordinal_)
    fail(Code::invalid_argument,
         info_.name + ": " + op +
             ": the pointer is not memory of this device (allocate it with alloc)");
}

uint64_t CudaDevice::hash(const float* data, uint64_t n, uint64_t salt) {
  if (n == 0) return 0;
  if (!data) fail(Code::invalid_argument, info_.name + ": hash of a null pointer");
  if (reinterpret_cast<uintptr_t>(data) % alignof(float) != 0)
    fail(Code::invalid_argument, info_.name + ": hash: data is not aligned to 4 bytes");
  activate();
  check_device_pointer(data, "hash");

  std::lock_guard<std::mutex> lock(mutex_);
  DISTRO_CUDA_CHECK(cudaMemsetAsync(scratch_, 0, sizeof(unsigned long long), stream_));
  DISTRO_CUDA_CHECK(cuda::launch_hash(data, n, salt, scratch_, max_blocks_, stream_));
  unsigned long long sum = 0;
  DISTRO_CUDA_CHECK(cudaMemcpyAsync(&sum, scratch_, sizeof(sum), cudaMemcpyDeviceToHost, stream_));
  DISTRO_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return uint64_t(sum);
}

std::vector<std::unique_ptr<Device>> scan_cuda_devices() {
  std::vector<std::unique_ptr<Device>> out;
  int count = 0;
  // No driver (cudaErrorInsufficientDriver, 35), no device (cudaErrorNoDevice, 100) or any other
  // failure: no CUDA devices, never an error.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return out;
  }
  for (int i = 0; i < count; ++i) {
    try {
      out.push_back(std::make_unique<CudaDevice>(i));
    } catch (const Error&) {
      // A device that cannot be opened (too old for our kernels, prohibited compute mode, out of
      // memory) is left out; the others are still usable.
    }
  }
  return out;
}

}  // namespace distro

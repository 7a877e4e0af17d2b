// The CUDA device (DESIGN.md section 3): memory and ops on one NVIDIA GPU through the CUDA runtime
// (static cudart, so the library loads on machines without the runtime or a driver).
//
// Ordering: every operation runs on the device's own non-blocking stream. upload, download and hash
// return when their work is complete; zero and (later) compute ops are queued and ordered on the
// stream; synchronize() waits for everything queued. Every CUDA failure becomes distro::Error
// naming the call and cudaGetErrorString (Code::out_of_memory for allocation failures, Code::device
// otherwise); nothing aborts.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "backend/device.hpp"

// The CUDA runtime's types stay out of this header, so that code including it needs no CUDA
// headers.
struct CUstream_st;

namespace distro {

class CudaDevice final : public Device {
 public:
  // Opens CUDA device `ordinal` (its runtime index): reads its properties and creates its stream.
  // Throws Error(device) when the device cannot be used.
  explicit CudaDevice(int ordinal);
  ~CudaDevice() override;
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  // memory_free is read again on each call (cudaMemGetInfo); the rest is fixed.
  const DeviceInfo& info() const override;
  int ordinal() const { return ordinal_; }

  DeviceMemory alloc(size_t bytes) override;
  void release(void* ptr) noexcept override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void zero(void* dst, size_t bytes) override;
  void synchronize() override;

  // data must be device memory of this device, 4-byte aligned, holding n floats.
  uint64_t hash(const float* data, uint64_t n, uint64_t salt) override;

 private:
  void activate() const;  // cudaSetDevice(ordinal_)
  void check_device_pointer(const void* p, const char* op) const;

  int ordinal_ = -1;
  unsigned max_blocks_ = 1;  // grid bound for grid-stride kernels: SMs * blocks per SM
  CUstream_st* stream_ = nullptr;
  mutable DeviceInfo info_;
  mutable std::mutex mutex_;               // guards info_.memory_free and the scratch word
  unsigned long long* scratch_ = nullptr;  // one device word for reductions (hash)
};

}  // namespace distro

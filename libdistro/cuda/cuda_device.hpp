// The CUDA device (DESIGN.md section 3): memory and ops on one NVIDIA GPU through the CUDA runtime
// (static cudart, so the library loads on machines without the runtime or a driver).
//
// Ordering: every operation runs on the device's own non-blocking stream. upload, download, hash
// and first_nonfinite_momentum return when their work is complete; zero, compress and apply are
// queued and ordered on the stream; synchronize() waits for everything queued. Every CUDA failure becomes distro::Error
// naming the call and cudaGetErrorString (Code::out_of_memory for allocation failures, Code::device
// otherwise); nothing aborts.
#pragma once

#include <map>
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

  // The DisTrO optimizer ops (kernels/distro_compress.cu, kernels/distro_apply.cu). Every pointer
  // is device memory of this device; a buffer allocated through this object is also checked for
  // its size. compress and apply are queued; first_nonfinite_momentum waits for its answer.
  void compress(const CompressArgs& a) override;
  void apply(const ApplyArgs& a) override;
  uint64_t first_nonfinite_momentum(const float* delta, const float* grad, float beta, float lr,
                                    uint64_t n) override;

 private:
  // Device copies of one edge's DCT tables (optim/dct.hpp), row-major and transposed.
  struct Basis {
    DeviceMemory f32, f32t, i14, i14t;
  };

  void activate() const;  // cudaSetDevice(ordinal_)
  void check_device_pointer(const void* p, const char* op) const;
  // Checks that [p, p + bytes) is memory of this device: within one allocation of this object when
  // it made it (size checked), else by a driver query (any device allocation, size unchecked).
  void check_range(const void* p, uint64_t bytes, const char* what, const char* op) const;
  const Basis& basis(uint32_t n);
  float* workspace(uint64_t floats);

  int ordinal_ = -1;
  unsigned max_blocks_ = 1;  // grid bound for grid-stride kernels: SMs * blocks per SM
  CUstream_st* stream_ = nullptr;
  mutable DeviceInfo info_;
  mutable std::mutex mutex_;               // guards info_.memory_free and the scratch word
  unsigned long long* scratch_ = nullptr;  // one device word for reductions (hash)
  unsigned sm_count_ = 1;

  mutable std::mutex alloc_mu_;
  std::map<uintptr_t, size_t> allocs_;  // live allocations made by alloc(): base -> bytes

  std::mutex basis_mu_;
  std::map<uint32_t, std::unique_ptr<Basis>> bases_;  // by chunk edge, built on first use

  std::mutex workspace_mu_;
  DeviceMemory workspace_;  // global scratch of the generic compress kernel, grown on demand
};

}  // namespace distro

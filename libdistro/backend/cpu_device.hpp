// The CPU backend: the reference every other backend is tested against. Plain C++ over host memory,
// split across a thread pool by chunk, so results do not depend on the number of threads.
#pragma once

#include <memory>

#include "backend/device.hpp"
#include "backend/thread_pool.hpp"
#include "optim/dct.hpp"

namespace distro {

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(unsigned threads = 0);
  const DeviceInfo& info() const override { return info_; }

  DeviceMemory alloc(size_t bytes) override;
  void release(void* ptr) noexcept override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void zero(void* dst, size_t bytes) override;

  void compress(const CompressArgs& a) override;
  void apply(const ApplyArgs& a) override;
  void adamw(const AdamWArgs& a) override;
  uint64_t hash(const float* data, uint64_t n, uint64_t salt) override;
  uint64_t first_nonfinite_momentum(const float* delta, const float* grad, float beta, float lr,
                                    uint64_t n) override;

  unsigned threads() const { return pool_.size(); }

 private:
  const DctBasis& basis(uint32_t n);

  DeviceInfo info_;
  ThreadPool pool_;
  std::mutex bases_mu_;
  std::map<uint32_t, std::unique_ptr<DctBasis>> bases_;
};

}  // namespace distro

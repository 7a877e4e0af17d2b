// The device interface (DESIGN.md section 3). A Device owns memory on its hardware and runs the op set
// on it. The CPU device is the reference; other backends are checked op by op against it. An op a
// backend lacks throws Error(unsupported) rather than being faked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.hpp"
#include "optim/manifest.hpp"

namespace distro {

enum class DeviceKind : int { cpu = 0, cuda = 1, vulkan = 2 };

// Capability bits; the same values as DISTRO_DEVICE_* in distro.h.
enum DeviceFlag : uint32_t {
  kDeviceFp16 = 1u << 0,
  kDeviceBf16 = 1u << 1,
  kDeviceInt64 = 1u << 2,
  kDeviceOptimizer = 1u << 3,
};

struct DeviceInfo {
  std::string name;         // "cpu", "cuda:0", "vulkan:0"
  std::string description;  // human-readable model name and properties
  DeviceKind kind = DeviceKind::cpu;
  uint32_t flags = 0;
  uint64_t memory_total = 0;
  uint64_t memory_free = 0;
  uint32_t compute_units = 0;
  uint32_t subgroup_size = 1;
};

class Device;

// Memory on a device, freed when the object dies. data() is a device pointer for the device that
// made it (a host pointer for the CPU).
class DeviceMemory {
 public:
  DeviceMemory() = default;
  DeviceMemory(Device* dev, void* ptr, size_t bytes) : dev_(dev), ptr_(ptr), bytes_(bytes) {}
  DeviceMemory(DeviceMemory&& o) noexcept { *this = std::move(o); }
  DeviceMemory& operator=(DeviceMemory&& o) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  ~DeviceMemory();
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <class T> T* as() const { return static_cast<T*>(ptr_); }

 private:
  Device* dev_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// One tensor's compress step, all pointers on the device (the gradient is already known finite):
//   delta = beta * delta + lr * grad; C = blockDCT(delta); per chunk select the min(k, nonzero) largest
//   |C| (ties to the lowest index), sorted by index; quantise the selected values; remove the selected
//   full-precision coefficients from delta.
struct CompressArgs {
  const TensorPlan* plan = nullptr;
  const float* grad = nullptr;  // numel
  float* delta = nullptr;       // numel, updated in place
  float beta = 0.0f;
  float lr = 0.0f;
  ValueMode values = ValueMode::sign;
  uint16_t* count = nullptr;  // out: chunks
  uint16_t* index = nullptr;  // out: chunks * k slots; slots past count are unspecified
  int8_t* value = nullptr;    // out: chunks * k; sign mode +1/-1, int8 mode -127..127
};

// One tensor's apply step: U = integer inverse DCT of the merged values (exact, int64), then
// theta = ftz(ftz(theta) * decay_factor), theta = ftz(theta - lr * sign(U)) in float32.
struct ApplyArgs {
  const TensorPlan* plan = nullptr;
  const uint32_t* offset = nullptr;  // chunks + 1 entries, relative to index/value below
  const uint16_t* index = nullptr;
  const int32_t* value = nullptr;
  float* params = nullptr;  // numel, updated in place
  float lr = 0.0f;
  float decay_factor = 1.0f;
};

// AdamW (decoupled weight decay, bias-corrected), one tensor, float32.
struct AdamWArgs {
  float* params = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  uint64_t n = 0;
  float lr = 0.0f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.0f;
  uint64_t t = 1;  // step number, from 1, for bias correction
};

class Device {
 public:
  virtual ~Device() = default;
  virtual const DeviceInfo& info() const = 0;

  // Memory. alloc throws Error(out_of_memory) when the device has no room.
  virtual DeviceMemory alloc(size_t bytes) = 0;
  virtual void release(void* ptr) noexcept = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() {}

  // Optimizer ops. Defaults report the op as unsupported on this device.
  virtual void compress(const CompressArgs&) { unsupported("compress"); }
  virtual void apply(const ApplyArgs&) { unsupported("apply"); }
  virtual void adamw(const AdamWArgs&) { unsupported("adamw"); }
  // Index of the first element whose next momentum beta * delta + lr * grad would not be finite (a
  // NaN or infinite gradient, or an overflow), or UINT64_MAX if there is none. Reads only.
  virtual uint64_t first_nonfinite_momentum(const float* delta, const float* grad, float beta, float lr,
                                            uint64_t n) {
    (void)delta, (void)grad, (void)beta, (void)lr, (void)n;
    unsupported("first_nonfinite_momentum");
  }
  // Sum over elements of the parameter-hash mix (docs/protocol.md) of n float32 values.
  virtual uint64_t hash(const float* data, uint64_t n, uint64_t salt) {
    (void)data, (void)n, (void)salt;
    unsupported("hash");
  }

 protected:
  [[noreturn]] void unsupported(const char* op) const {
    fail(Code::unsupported, "device '" + info().name + "' does not support the op '" + op + "'");
  }
};

inline DeviceMemory& DeviceMemory::operator=(DeviceMemory&& o) noexcept {
  if (this != &o) {
    if (dev_ && ptr_) dev_->release(ptr_);
    dev_ = o.dev_, ptr_ = o.ptr_, bytes_ = o.bytes_;
    o.dev_ = nullptr, o.ptr_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}
inline DeviceMemory::~DeviceMemory() {
  if (dev_ && ptr_) dev_->release(ptr_);
}

}  // namespace distro

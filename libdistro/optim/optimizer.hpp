// One peer's DisTrO optimizer (DESIGN.md section 4): momentum with error feedback, block DCT, per-chunk
// top-k, and the exact apply of a merged update. Parameters and gradients are caller-owned float32
// host buffers; the momentum lives on the optimizer's device.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/device.hpp"
#include "optim/manifest.hpp"
#include "wire/messages.hpp"

namespace distro {

struct OptimizerOptions {
  uint64_t run_id = 0;
  uint32_t peer_id = 0;
  uint32_t chunk = 64;
  uint32_t topk = 4;
  float decay = 0.999f;
  ValueMode values = ValueMode::sign;
  std::string device = "cpu";
  unsigned threads = 0;
};

// Checks options; throws Error(invalid_argument) naming the field that is out of range.
void validate(const OptimizerOptions& o);

class Optimizer {
 public:
  explicit Optimizer(const OptimizerOptions& options);
  ~Optimizer();

  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, float* params,
                  const float* grad);
  // Builds the manifest and the device state; later add_tensor calls fail with Error(state).
  void freeze();
  bool frozen() const { return frozen_; }
  const Manifest& manifest() const;
  const OptimizerOptions& options() const { return opt_; }
  Device& device() { return *dev_; }

  // This peer's payload for the step. Throws Error(numeric) if any gradient is not finite, before
  // any state changes.
  PeerPayload compress(uint64_t step, float lr);
  // Applies a decoded merged update; the caller checked it against the manifest.
  void apply(const MergedUpdate& u);
  uint64_t param_hash();

  // Momentum of tensor t, copied to the host (tests and checkpoints).
  std::vector<float> momentum(size_t t);
  // Replaces tensor t's momentum (resuming from a checkpoint); data holds numel values.
  void set_momentum(size_t t, const std::vector<float>& data);

 private:
  struct Slot {
    float* params;
    const float* grad;
    DeviceMemory delta;
    DeviceMemory grad_dev, params_dev;  // staging when the device cannot read host memory
  };
  bool host_device() const;
  const float* grad_on_device(Slot& s, const TensorPlan& p);
  float* params_on_device(Slot& s, const TensorPlan& p, bool upload);

  OptimizerOptions opt_;
  std::unique_ptr<Device> dev_;
  std::vector<TensorSpec> specs_;
  std::vector<Slot> slots_;
  Manifest manifest_;
  bool frozen_ = false;
};

}  // namespace distro

// One peer's DisTrO optimizer (DESIGN.md section 4): momentum with error feedback, block DCT, per-chunk
// top-k, and the exact apply of a merged update. Parameters and gradients are caller-owned float32
// buffers: host memory when the optimizer opens its own device by name (they are staged to and from
// it), or memory of the caller's device when one is shared (the model's, so nothing is copied). The
// momentum lives on the optimizer's device.
#pragma once

#include <cmath>
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
  // Opens options.device; params and grads given to add_tensor are host memory.
  explicit Optimizer(const OptimizerOptions& options);
  // Runs on `device` (borrowed: it must outlive the optimizer; options.device is ignored); params and
  // grads given to add_tensor are memory of that device.
  Optimizer(const OptimizerOptions& options, Device& device);
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
  // any state changes. grad_norm, when the caller knows it, is the L2 norm of the gradient buffers
  // as they are now (NaN: unknown). With it the per-element check (a pass over the gradient and the
  // momentum) is skipped when no element can fail it: a finite norm bounds every |lr * g|, and the
  // optimizer keeps an upper bound on the momentum's norm (momentum_bound below), so the next
  // momentum stays far from float32 overflow. A wrong norm from the caller voids the guarantee.
  PeerPayload compress(uint64_t step, float lr, double grad_norm = std::nan(""));
  // Applies a decoded merged update; the caller checked it against the manifest.
  void apply(const MergedUpdate& u);
  uint64_t param_hash();  // parameter_hash (below) of the tensors
  // An upper bound on the L2 norm of all momentum (infinite: unknown until the next compress that
  // gets a gradient norm, which measures it once).
  double momentum_bound() const { return momentum_bound_; }

  // Momentum of tensor t, copied to the host (tests and checkpoints).
  std::vector<float> momentum(size_t t);
  // Replaces tensor t's momentum (resuming from a checkpoint); data holds numel values.
  void set_momentum(size_t t, const std::vector<float>& data);

 private:
  struct Slot {
    float* params;
    const float* grad;
    DeviceMemory delta;
    DeviceMemory grad_dev, params_dev;  // staging when the buffers are host memory on a GPU device
  };
  // Whole-manifest payload and update buffers on a GPU device, allocated once (not per step).
  struct Staging {
    DeviceMemory count, index, value;           // compress outputs: chunks, slots, slots
    DeviceMemory offset, merged_index, merged_value;  // apply inputs, grown to the largest update seen
  };
  const float* grad_on_device(Slot& s, const TensorPlan& p);
  float* params_on_device(Slot& s, const TensorPlan& p, bool upload);
  void check_device();

  OptimizerOptions opt_;
  std::unique_ptr<Device> owned_;
  Device* dev_ = nullptr;
  bool resident_ = false;  // params and grads are memory of dev_ (CPU device, or a shared device)
  Staging staging_;
  std::vector<TensorSpec> specs_;
  std::vector<Slot> slots_;
  Manifest manifest_;
  bool frozen_ = false;
  // Momentum starts at zero. After a step, ||delta|| <= ||beta delta + lr g|| (the error feedback
  // removes the selected DCT components: an orthogonal projection), so the bound follows
  // beta * bound + lr * ||g||, with slack for float32 rounding.
  double momentum_bound_ = 0.0;
};

// The parameter hash of a replica (docs/protocol.md) from its tensors in manifest order, each in
// `dev`'s memory: one batched pass (Device::hash_many), folded in order.
uint64_t parameter_hash(Device& dev, const std::vector<const float*>& data, const std::vector<uint64_t>& numel);

}  // namespace distro

// One peer's replica of a run: its device, the model's parameters and gradients on that device, and
// its optimizer state (DisTrO momentum, or AdamW moments for the all-reduce baseline). The in-process
// Trainer and the network node both drive peers through this class, so a network run does exactly
// the arithmetic of the in-process run with the same settings.
//
// Thread rules: one thread at a time per Replica. Replicas on different devices are independent.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/device.hpp"
#include "model/llama.hpp"
#include "optim/optimizer.hpp"
#include "train/trainer.hpp"

namespace distro {

struct GradStats {
  double loss = 0.0;       // mean over the batch's positions
  double grad_norm = 0.0;  // global L2 norm before clipping
};

class Replica {
 public:
  // Opens `device` ("cpu", "cuda:0", ...), builds the model from model_cfg and cfg.seed, and the
  // optimizer named by cfg.optimizer. Throws Error(not_found / unsupported / out_of_memory) naming
  // the device and what it lacks.
  Replica(const TrainConfig& cfg, const LlamaConfig& model_cfg, uint32_t peer_id, uint64_t run_id,
          const std::string& device);
  ~Replica();
  Replica(const Replica&) = delete;
  Replica& operator=(const Replica&) = delete;

  Device& device() { return *dev_; }
  LlamaModel& model() { return *model_; }
  // The DisTrO optimizer; Error(state) for an AdamW replica.
  Optimizer& optimizer();
  bool distro() const { return opt_ != nullptr; }

  // Gradient of the mean loss over cfg.batch sequences of cfg.seq tokens (host int32 arrays of
  // batch * seq entries), micro-batched as cfg.micro_batch says and left unclipped.
  double compute_grad(const int32_t* tokens, const int32_t* targets);
  double grad_norm();                   // global L2 norm of the current gradient
  // Clips the gradient so its norm is at most cfg.clip. AdamW: scales it in place. DisTrO: keeps
  // the factor and folds it into the compress's learning rate (momentum += (lr * s) g), which saves
  // a pass over the gradient; the gradient buffer itself stays unclipped.
  void clip(double norm);
  // compute_grad, grad_norm and clip in one.
  GradStats train_batch(const int32_t* tokens, const int32_t* targets);

  // DisTrO: this peer's encoded payload for `step`, and the apply of an encoded merged update
  // (decoded and checked against the manifest first; Error(corrupt / mismatch) leaves the
  // parameters untouched).
  std::vector<uint8_t> compress(uint64_t step, float lr);
  PeerPayload compress_payload(uint64_t step, float lr);  // the same, not yet encoded
  void apply(const std::vector<uint8_t>& encoded_update);
  // AdamW: one step over the current gradient.
  void adamw_step(float lr, uint64_t step);

  uint64_t hash();  // parameter hash (docs/protocol.md), equal on every backend for equal bits

  // Per tensor, host copies (checkpoints, joins). Sizes are checked: Error(size) names the tensor.
  size_t tensor_count() const;
  std::vector<float> params(size_t t);
  void set_params(size_t t, const std::vector<float>& data);
  // The optimizer state of tensor t: DisTrO momentum (one block) or AdamW m and v (two blocks).
  std::vector<std::vector<float>> state(size_t t);
  void set_state(size_t t, const std::vector<std::vector<float>>& blocks);

 private:
  TrainConfig cfg_;
  std::unique_ptr<Device> dev_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<Optimizer> opt_;
  std::vector<DeviceMemory> m_, v_;  // AdamW moments
  float grad_scale_ = 1.0f;          // DisTrO: the clip factor of the current gradient
  double grad_norm_ = std::nan("");  // the current gradient's norm (grad_norm), NaN until measured
};

}  // namespace distro

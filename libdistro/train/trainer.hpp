// Local multi-peer training (issue: built-in model): N peers in one process, each with its own
// device, parameter replica and optimizer state, train the built-in model on their own batches.
// With the DisTrO optimizer they exchange only compressed payloads and apply one merged update; with
// AdamW they average their gradients exactly (the all-reduce baseline). After every step the
// trainer checks that all replicas are bit-identical.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/llama.hpp"
#include "optim/manifest.hpp"

namespace distro {

struct TrainConfig {
  std::string preset = "nano";
  int vocab = 0;                      // 0: the dataset's vocabulary
  std::vector<std::string> devices = {"cpu", "cpu", "cpu", "cpu"};  // one entry per peer
  std::string optimizer = "distro";   // "distro" or "adamw"
  std::string data;                   // text file or token shard
  double val_fraction = 0.05;
  uint64_t steps = 200;               // total steps of the run (the schedule's length)
  int batch = 8;                      // sequences per peer per step
  int micro_batch = 0;                // sequences per forward/backward, 0 = batch
  int seq = 128;
  float lr = 0.0f;                    // peak; 0 = default_lr(optimizer, preset)
  uint64_t warmup = 0;                // steps; 0 = min(100, steps / 10)
  float min_lr_ratio = 0.1f;          // cosine decay ends at this fraction of the peak
  float weight_decay = 0.0f;
  float clip = 1.0f;                  // global gradient-norm clip; 0 = off
  // DisTrO
  uint32_t chunk = 64, topk = 4;
  float decay = 0.999f;
  ValueMode values = ValueMode::sign;
  // Apply each step's merged update one step late, as Psyche's overlapped training does: a peer
  // computes step s's gradient while step s-1's update is still on the wire. The last step applies
  // both, so the run ends with every update in.
  bool overlap = false;
  // AdamW
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  uint64_t seed = 1;
  unsigned threads = 0;               // CPU threads per peer, 0 = all cores
  uint64_t eval_batches = 8;          // validation batches per evaluation
};

// Checks every field; throws Error(invalid_argument) naming the field and what is expected.
void validate(const TrainConfig& c);
// The peak learning rate used when TrainConfig::lr is 0.
float default_lr(const std::string& optimizer, const std::string& preset);

struct StepStats {
  uint64_t step = 0;
  float lr = 0.0f;
  double train_loss = 0.0;            // mean over peers of their batch loss
  double grad_norm = 0.0;             // peer 0's, before clipping
  uint64_t tokens = 0;                // trained this step, all peers
  uint64_t bytes_up_per_peer = 0;     // DisTrO: payload; AdamW: ring all-reduce share
  uint64_t bytes_down_per_peer = 0;   // DisTrO: merged update; AdamW: ring all-reduce share
  double seconds = 0.0;
  std::vector<uint64_t> hashes;       // one per peer, after the step
};

class Trainer {
 public:
  explicit Trainer(const TrainConfig& c);
  ~Trainer();

  // Continues the run saved in dir (checkpoint.bin) with its own configuration; steps may be
  // raised or lowered by the caller afterwards with set_total_steps. Throws Error(not_found / corrupt /
  // mismatch) naming what is wrong with the file.
  static std::unique_ptr<Trainer> resume(const std::string& dir);

  StepStats step();
  double evaluate();  // mean validation loss of peer 0 over eval_batches fixed batches
  void save(const std::string& dir) const;

  const TrainConfig& config() const;
  uint64_t steps_done() const;
  uint64_t params() const;
  uint64_t allreduce_bytes_per_peer() const;  // bf16 ring all-reduce: 2(N-1)/N * 2 bytes * params
  std::vector<uint64_t> replica_hashes() const;
  void set_total_steps(uint64_t steps);
  LlamaModel& model(size_t peer);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  Trainer() = default;
};

}  // namespace distro

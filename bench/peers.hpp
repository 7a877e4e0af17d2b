// Simulated peers in one process: each holds its own replica of the parameters, its own gradient
// buffers and its own optimizer; together they run compress -> merge -> apply steps on synthetic
// gradients. Used by `distro compress` (the main job) and `distro bench optimizer`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/thread_pool.hpp"
#include "optim/optimizer.hpp"

namespace distro::bench {

struct PeersConfig {
  std::string model = "gpt2-124m";
  unsigned peers = 2;
  uint32_t chunk = 64, topk = 4;
  float decay = 0.999f, lr = 1e-3f, weight_decay = 0.0f;
  ValueMode values = ValueMode::sign;
  unsigned threads = 0;
  uint64_t seed = 1;
};

struct StepFigures {
  double seconds = 0;
  uint64_t payload_bytes = 0;  // mean over peers
  uint64_t update_bytes = 0;
  uint64_t coefficients = 0;   // sent per peer (mean)
  uint64_t union_size = 0;     // coefficients in the merged update
  std::vector<uint64_t> hashes;  // per peer, after apply
};

class Peers {
 public:
  explicit Peers(const PeersConfig& c);
  ~Peers();
  StepFigures step(uint64_t step);
  // Fills every peer's gradients with fresh random values for this step (each peer its own).
  void randomize_grads(uint64_t step);
  const Manifest& manifest() const;
  Optimizer& optimizer(unsigned i);
  uint64_t params() const;

 private:
  struct Peer;
  PeersConfig cfg_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<std::unique_ptr<Peer>> peers_;
};

}  // namespace distro::bench

// Shared by the network-message fuzz target and its seed generator: the fixed context the decoders
// run against, and the input layout (first byte: the message kind; the rest: the frame body).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "net/protocol.hpp"

namespace distro::fuzz {

inline net::RunInfo net_run() {
  net::RunInfo r;
  r.preset = "nano";
  r.vocab = 256;
  r.batch = 2;
  r.micro_batch = 0;
  r.seq = 4;
  r.clip = 1.0f;
  r.chunk = 64;
  r.topk = 4;
  r.decay = 0.999f;
  r.values = ValueMode::sign;
  r.seed = 1;
  r.total_steps = 100;
  r.nodes_per_round = 4;
  return r;
}

inline net::CheckpointInfo net_checkpoint() {
  net::CheckpointInfo c;
  c.step = 4;
  c.param_hash = 9;
  c.total_bytes = 1000;
  c.chunk_bytes = 300;
  c.chunks = 4;
  return c;
}

constexpr uint64_t kNetCheckpointMax = 1u << 20;
constexpr uint64_t kNetWireMax = 4096;
constexpr uint32_t kNetMaxContributors = 4;

inline std::vector<uint8_t> net_input(net::Kind kind, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out(body.size() + 1);
  out[0] = uint8_t(kind);
  std::copy(body.begin(), body.end(), out.begin() + 1);
  return out;
}

}  // namespace distro::fuzz

// In-memory forms of the two wire messages (docs/protocol.md). The codec (codec.hpp) turns them into
// bytes and back; the optimizer fills and reads them.
#pragma once

#include <cstdint>
#include <vector>

#include "optim/manifest.hpp"

namespace distro {

// One peer's compressed momentum for one step. For each chunk of the manifest (in order) it holds up
// to k selected coefficients: count[c] of them, with their in-chunk indices sorted ascending.
// Chunks with fewer non-zero coefficients than k send fewer (an all-zero chunk sends none), so a
// sign is never invented for a zero.
struct PeerPayload {
  uint64_t run_id = 0;
  uint64_t step = 0;
  uint32_t peer_id = 0;
  uint64_t manifest_hash = 0;
  ValueMode values = ValueMode::sign;
  // Per chunk: how many coefficients are sent (0..k of that chunk's tensor). Size: total_chunks.
  std::vector<uint16_t> count;
  // Concatenated in chunk order: indices (ascending within a chunk) and values. sign mode: +1/-1;
  // int8 mode: -127..127. Size: sum of count.
  std::vector<uint16_t> index;
  std::vector<int8_t> value;
};

// The merged update of one step: per chunk, the union of coefficients that peers sent with a non-zero
// fixed-point mean A = round(S * 256 / c) (docs/protocol.md for the rounding rule).
struct MergedUpdate {
  uint64_t run_id = 0;
  uint64_t step = 0;
  uint32_t contributors = 0;  // number of peer payloads merged
  uint64_t manifest_hash = 0;
  ValueMode values = ValueMode::sign;
  float lr = 0.0f;             // theta = theta * decay_factor, then theta -= lr * sign(U)
  float decay_factor = 1.0f;   // 1 - lr * weight_decay, computed once in float32 by the merger
  uint64_t prev_hash = 0;      // expected parameter hash before apply; 0 = unknown
  std::vector<uint32_t> offset;  // total_chunks + 1 entries: chunk c owns [offset[c], offset[c+1])
  std::vector<uint16_t> index;   // ascending within a chunk
  std::vector<int32_t> value;    // fixed-point means, never 0
};

// Largest |A| a merged value can have: 256 * (1 for sign mode, 127 for int8 mode).
inline int32_t max_merged_value(ValueMode v) { return v == ValueMode::sign ? 256 : 256 * 127; }

}  // namespace distro

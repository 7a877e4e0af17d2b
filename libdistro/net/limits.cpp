#include "net/limits.hpp"

#include <algorithm>
#include <bit>

#include "wire/codec.hpp"

namespace distro::net {

namespace {

// Bits of the largest Exp-Golomb code of a value <= v (docs/protocol.md 4.1): 2 * floor(log2(v + 1)) + 1.
uint64_t eg_bits(uint64_t v) { return 2 * uint64_t(std::bit_width(v + 1) - 1) + 1; }
// Bits of the largest truncated-binary code of a value < n: at most ceil(log2 n) <= bit_width(n).
uint64_t tb_bits(uint64_t n) { return uint64_t(std::bit_width(n)); }

constexpr uint32_t kFixed = 64;  // generous room for the fixed-size messages below
constexpr uint32_t kClamp = 0xFFFFFFFFu - 64;

uint32_t clamp32(uint64_t v) { return uint32_t(std::min<uint64_t>(v, kClamp)); }

}  // namespace

// Wire v2 cuts each tensor's chunks into pieces of at most wire::kPieceChunks chunks; each piece costs
// a 4-byte entry in the piece table and up to 7 padding bits, and has its own preamble.
uint64_t max_payload_bytes(const Manifest& m) {
  const uint64_t vbits = m.values == ValueMode::sign ? 1 : 8;
  uint64_t bytes = 0;
  for (const TensorPlan& t : m.tensors)
    for (uint64_t c0 = 0; c0 < t.chunks; c0 += wire::kPieceChunks) {
      const uint64_t chunks = std::min(t.chunks - c0, wire::kPieceChunks);
      uint64_t bits = eg_bits(chunks);                                // number of exceptions
      bits += chunks * (eg_bits(chunks) + tb_bits(t.k));              // each chunk an exception at worst
      bits += chunks * uint64_t(t.k) * (tb_bits(t.elems()) + vbits);  // indices and values
      bytes += 4 + (bits + 7) / 8;
    }
  return 48 + bytes;
}

uint64_t max_update_bytes(const Manifest& m, uint64_t contributors) {
  uint64_t bytes = 0;
  for (const TensorPlan& t : m.tensors) {
    const uint64_t u = std::min<uint64_t>(t.elems(), std::max<uint64_t>(1, contributors) * t.k);
    for (uint64_t c0 = 0; c0 < t.chunks; c0 += wire::kPieceChunks) {
      const uint64_t chunks = std::min(t.chunks - c0, wire::kPieceChunks);
      // Values take at most 16 bits: the fixed width is <= 16 and agreement coding is only used
      // when smaller.
      const uint64_t bits = 5 + chunks * (eg_bits(t.elems()) + u * (tb_bits(t.elems()) + 16));
      bytes += 4 + (bits + 7) / 8;
    }
  }
  return 64 + bytes;
}

uint64_t max_checkpoint_bytes(uint64_t params) { return 16 + (uint64_t(4) << 20) + 4 * params + 32; }

FrameLimits coordinator_frame_limits(const Manifest& m) {
  FrameLimits l;
  l.allow(uint8_t(Kind::hello), 2 + 2 + kMaxToken + 2 + kMaxAgent)
      .allow(uint8_t(Kind::sync), 16)
      .allow(uint8_t(Kind::checkpoint_request), 8)
      .allow(uint8_t(Kind::payload), clamp32(28 + max_payload_bytes(m)))
      .allow(uint8_t(Kind::hash_report), 16)
      .allow(uint8_t(Kind::notice), 9)
      .allow(uint8_t(Kind::error), 2 + 2 + kMaxReason)
      .allow(uint8_t(Kind::ping), 8)
      .allow(uint8_t(Kind::pong), 8);
  return l;
}

static FrameLimits node_common() {
  FrameLimits l;
  l.allow(uint8_t(Kind::welcome), 512)
      .allow(uint8_t(Kind::checkpoint_info), kFixed)
      .allow(uint8_t(Kind::checkpoint_chunk), 12 + kCheckpointChunkBytes)
      .allow(uint8_t(Kind::resync), 16 + 2 + kMaxReason)
      .allow(uint8_t(Kind::notice), 9)
      .allow(uint8_t(Kind::error), 2 + 2 + kMaxReason)
      .allow(uint8_t(Kind::ping), 8)
      .allow(uint8_t(Kind::pong), 8);
  return l;
}

FrameLimits node_frame_limits() {
  FrameLimits l = node_common();
  l.allow(uint8_t(Kind::round_start), clamp32(44 + 8 * kMaxBatchTokens));
  l.allow(uint8_t(Kind::update), 256u << 20);
  return l;
}

FrameLimits node_frame_limits(const RunInfo& run, const Manifest& m) {
  FrameLimits l = node_common();
  l.allow(uint8_t(Kind::round_start), clamp32((run.overlap ? 44 : 36) + 8 * uint64_t(run.batch) * run.seq));
  l.allow(uint8_t(Kind::update), clamp32(12 + 4 * uint64_t(run.nodes_per_round) + max_update_bytes(m, run.nodes_per_round)));
  return l;
}

}  // namespace distro::net

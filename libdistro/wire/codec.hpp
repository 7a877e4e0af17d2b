// The wire codec, version 2 (docs/protocol.md). Decoders check every field against the manifest,
// never size an allocation from an untrusted length, and throw Error(corrupt / mismatch) with a
// message naming what was wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "wire/messages.hpp"
#include "wire/tasks.hpp"

namespace distro {

constexpr uint16_t kWireVersion = 3;
enum class MessageKind : uint8_t { payload = 1, update = 2 };

// Header fields readable without a manifest.
struct MessageHeader {
  MessageKind kind = MessageKind::payload;
  uint16_t version = 0;
  ValueMode values = ValueMode::sign;
  uint64_t run_id = 0;
  uint64_t step = 0;
  uint32_t peer_id = 0;  // payload: sender; update: contributors
  uint64_t manifest_hash = 0;
  uint64_t prev_hash = 0;   // update only
  float lr = 0.0f;          // update only
  float decay_factor = 0.0f;  // update only
};

// A body is a table of piece lengths followed by the pieces: each tensor's chunks cut into pieces of
// at most wire::kPieceChunks chunks, each piece a byte-aligned bit stream of its own (docs/protocol.md
// section 3). So large messages (more than wire::kParallelMinCoefficients coefficients to encode, or
// wire::kParallelMinBodyBytes body bytes to decode) are encoded and decoded a piece per task on
// `threads` threads (0 = wire::default_threads()). The bytes, the decoded message and any error do
// not depend on the thread count: an encoder reports the first invalid tensor and chunk in manifest
// order, a decoder the error of the first bad piece in body order.
std::vector<uint8_t> encode_payload(const Manifest& m, const PeerPayload& p, unsigned threads = 0);
PeerPayload decode_payload(const Manifest& m, std::span<const uint8_t> bytes, unsigned threads = 0);

std::vector<uint8_t> encode_update(const Manifest& m, const MergedUpdate& u, unsigned threads = 0);
MergedUpdate decode_update(const Manifest& m, std::span<const uint8_t> bytes, unsigned threads = 0);

// Checks magic, version, kind, lengths and checksum; returns the header.
MessageHeader inspect_message(std::span<const uint8_t> bytes);

namespace wire {

// The most chunks of one tensor that one piece of a body holds (docs/protocol.md section 3).
constexpr uint64_t kPieceChunks = 2048;
// The number of pieces a body of this manifest has: the sum over tensors of ceil(chunks / kPieceChunks).
uint64_t piece_count(const Manifest& m);

// Messages with fewer coefficients than this are encoded (and merged) on the calling thread alone,
// and bodies of fewer bytes than this decoded on it: below them, starting threads costs about as
// much as it saves.
constexpr uint64_t kParallelMinCoefficients = 65536;
constexpr uint64_t kParallelMinBodyBytes = 64 * 1024;

}  // namespace wire

}  // namespace distro

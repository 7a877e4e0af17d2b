// The wire codec, version 1 (docs/protocol.md). Decoders check every field against the manifest,
// never size an allocation from an untrusted length, and throw Error(corrupt / mismatch) with a
// message naming what was wrong.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "wire/messages.hpp"

namespace distro {

constexpr uint16_t kWireVersion = 1;
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

std::vector<uint8_t> encode_payload(const Manifest& m, const PeerPayload& p);
PeerPayload decode_payload(const Manifest& m, std::span<const uint8_t> bytes);

std::vector<uint8_t> encode_update(const Manifest& m, const MergedUpdate& u);
MergedUpdate decode_update(const Manifest& m, std::span<const uint8_t> bytes);

// Checks magic, version, kind, lengths and checksum; returns the header.
MessageHeader inspect_message(std::span<const uint8_t> bytes);

}  // namespace distro

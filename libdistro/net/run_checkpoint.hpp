// The coordinator's durable state and the checkpoint it serves to joining nodes: one file format
// (docs/network.md, "checkpoints"), train/checkpoint-style:
//   "DSTRNETC", u32 version (1), u32 n, n bytes of JSON (meta), the float32 parameter blocks in
//   the model's tensor order, SHA-256 of everything before it (32 bytes). Little-endian.
// The meta always holds "step", "param_hash", "run_id", "manifest_hash" and "blocks" (the element
// count of each block); the coordinator's own file adds its private state (batch queue, node ids,
// ledger rows not yet committed). The copy served to nodes carries only the public keys.
// Written atomically (temporary file, fsync, rename, fsync of the folder).
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

namespace distro::net {

inline constexpr uint32_t kRunCheckpointVersion = 1;
inline constexpr uint32_t kMaxRunCheckpointMeta = 4u << 20;  // JSON bytes

std::vector<uint8_t> encode_run_checkpoint(nlohmann::json meta, const std::vector<std::vector<float>>& blocks);

struct RunCheckpoint {
  nlohmann::json meta;
  uint64_t step = 0, param_hash = 0, run_id = 0, manifest_hash = 0;
  std::vector<std::vector<float>> blocks;
};
// Checks magic, version, lengths, checksum, and that the blocks have exactly block_sizes elements.
// `what` names the source in errors. Throws Error(corrupt / mismatch).
RunCheckpoint decode_run_checkpoint(std::span<const uint8_t> bytes, const std::vector<uint64_t>& block_sizes,
                                    const std::string& what);

std::array<uint8_t, 32> sha256_of(std::span<const uint8_t> bytes);
std::string hex(std::span<const uint8_t> bytes);

// Atomic replace of path. Throws Error(io) naming the path and the system error.
void write_file_atomic(const std::string& path, std::span<const uint8_t> bytes);
// Whole file; Error(not_found) when absent, Error(corrupt) when larger than max_bytes.
std::vector<uint8_t> read_file(const std::string& path, uint64_t max_bytes);

}  // namespace distro::net

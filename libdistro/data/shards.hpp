// Token shards in llm.c's format: a header of 256 little-endian int32 values, [0] magic 20240520,
// [1] version 1, [2] number of tokens, the rest zero; then that many little-endian uint16 tokens.
// Files written by llm.c's GPT-2 data scripts read here unchanged. llm.c's Llama-3 shards (magic
// 20240801, uint32 tokens) are recognised and refused as not supported yet.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace distro {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardMagicUint32 = 20240801;  // llm.c's Llama-3 shards: uint32 tokens
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * 4;  // 1024
constexpr uint64_t kShardMaxTokens = 0x7FFFFFFF;           // the count is an int32

// Writes tokens to path atomically (PATH.tmp, fsync, rename). Throws Error(size) for more than
// kShardMaxTokens tokens, Error(io) naming the path when the file system refuses.
void write_token_shard(const std::filesystem::path& path, std::span<const uint16_t> tokens);

// Reads and validates a shard. With vocab != 0 every token must be < vocab. Throws:
//   not_found    the file does not exist;
//   corrupt      shorter than the header, wrong magic, negative count, size not header + 2 * count
//                bytes, a token >= vocab (with its position);
//   unsupported  a uint32-token shard (llm.c's Llama-3 magic);
//   mismatch     a version other than 1;
//   io           any other read failure.
// The count is checked against the file size before anything is allocated from it.
std::vector<uint16_t> read_token_shard(const std::filesystem::path& path, uint32_t vocab = 0);

// True when the file exists and starts with one of the shard magics (uint16 or uint32 tokens). Never
// throws for a missing or unreadable file (answers false); the reader gives the detailed errors.
bool has_shard_magic(const std::filesystem::path& path);

}  // namespace distro

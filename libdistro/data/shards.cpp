#include "data/shards.hpp"

#include <array>
#include <bit>
#include <cstdio>
#include <string>

#include "core/error.hpp"
#include "data/file_io.hpp"

namespace distro {
namespace {

static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big,
              "mixed-endian hosts are not supported");

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

int32_t load_le32(const unsigned char* p) {
  const uint32_t u = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
  return static_cast<int32_t>(u);
}

void store_le32(unsigned char* p, int32_t v) {
  const auto u = static_cast<uint32_t>(v);
  p[0] = static_cast<unsigned char>(u);
  p[1] = static_cast<unsigned char>(u >> 8);
  p[2] = static_cast<unsigned char>(u >> 16);
  p[3] = static_cast<unsigned char>(u >> 24);
}

uint16_t swap16(uint16_t v) { return static_cast<uint16_t>(v << 8 | v >> 8); }

}  // namespace

void write_token_shard(const std::filesystem::path& path, std::span<const uint16_t> tokens) {
  if (tokens.size() > kShardMaxTokens) {
    fail(Code::size, "token shard " + quoted(path) + ": " + std::to_string(tokens.size()) +
                         " tokens do not fit the int32 count of the header (at most " +
                         std::to_string(kShardMaxTokens) + " per shard)");
  }
  std::array<unsigned char, kShardHeaderBytes> header{};
  store_le32(header.data() + 0, kShardMagic);
  store_le32(header.data() + 4, kShardVersion);
  store_le32(header.data() + 8, static_cast<int32_t>(tokens.size()));

  std::vector<uint16_t> swapped;
  std::span<const uint16_t> body = tokens;
  if constexpr (std::endian::native == std::endian::big) {
    swapped.assign(tokens.begin(), tokens.end());
    for (auto& t : swapped) t = swap16(t);
    body = swapped;
  }
  const std::span<const std::byte> parts[] = {std::as_bytes(std::span<const unsigned char>(header)),
                                              std::as_bytes(body)};
  data_io::write_file_atomically(path, parts);
}

std::vector<uint16_t> read_token_shard(const std::filesystem::path& path, uint32_t vocab) {
  data_io::InputFile file(path, "token shard");
  const std::string name = "token shard " + quoted(path);
  const uint64_t size = file.size();
  if (size < kShardHeaderBytes) {
    fail(Code::corrupt, name + " is " + std::to_string(size) + " bytes, shorter than the " +
                            std::to_string(kShardHeaderBytes) + "-byte header");
  }
  std::array<unsigned char, kShardHeaderBytes> header{};
  file.read_exact(header.data(), header.size());
  const int32_t magic = load_le32(header.data() + 0);
  const int32_t version = load_le32(header.data() + 4);
  const int32_t count = load_le32(header.data() + 8);
  if (magic == kShardMagicUint32) {
    fail(Code::unsupported, name + " has magic " + std::to_string(magic) +
                                " (llm.c's Llama-3 format): uint32 token shards are not supported yet; "
                                "expected magic " + std::to_string(kShardMagic) + " (uint16 tokens)");
  }
  if (magic != kShardMagic) {
    fail(Code::corrupt, name + " is not a token shard: expected magic " + std::to_string(kShardMagic) +
                            ", found " + std::to_string(magic));
  }
  if (version != kShardVersion) {
    fail(Code::mismatch, name + " has version " + std::to_string(version) + ", expected version " +
                             std::to_string(kShardVersion));
  }
  if (count < 0) {
    fail(Code::corrupt, name + " has a negative token count (" + std::to_string(count) + ") in its header");
  }
  const uint64_t n = static_cast<uint64_t>(count);
  const uint64_t expected = kShardHeaderBytes + 2 * n;
  if (size != expected) {
    fail(Code::corrupt, name + " is " + std::to_string(size) + " bytes, expected " + std::to_string(expected) +
                            " (the " + std::to_string(kShardHeaderBytes) + "-byte header + " +
                            std::to_string(n) + " tokens x 2 bytes, as its header says)");
  }
  std::vector<uint16_t> tokens(static_cast<size_t>(n));
  file.read_exact(tokens.data(), tokens.size() * sizeof(uint16_t));
  if constexpr (std::endian::native == std::endian::big) {
    for (auto& t : tokens) t = swap16(t);
  }
  if (vocab != 0) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] >= vocab) {
        fail(Code::corrupt, name + ": token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                                " is outside the vocabulary of " + std::to_string(vocab) + " tokens");
      }
    }
  }
  return tokens;
}

bool has_shard_magic(const std::filesystem::path& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  unsigned char b[4];
  const bool got = std::fread(b, 1, 4, f) == 4;
  std::fclose(f);
  if (!got) return false;
  const int32_t magic = load_le32(b);
  return magic == kShardMagic || magic == kShardMagicUint32;
}

}  // namespace distro

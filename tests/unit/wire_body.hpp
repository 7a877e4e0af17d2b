// Helpers shared by the wire tests (test_wire.cpp, test_codec_parallel.cpp) for building and editing
// messages by hand, from an independent reading of docs/protocol.md: the checksum, and the piece
// table of a version 3 body.
#pragma once

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace distro::test {

// The wire checksum: XXH3_64bits (xxHash 0.8, seed 0, default secret) of header and body.
inline uint64_t wire_checksum(const uint8_t* p, size_t n) { return XXH3_64bits(p, n); }

// Recomputes the trailing checksum after a test edited a message.
inline void reseal(std::vector<uint8_t>& msg) {
  uint64_t h = wire_checksum(msg.data(), msg.size() - 8);
  for (int i = 0; i < 8; ++i) msg[msg.size() - 8 + i] = uint8_t(h >> (8 * i));
}

// A body of these pieces: the table of their lengths (u32 little-endian each), then their bytes.
inline std::vector<uint8_t> pieced(const std::vector<std::vector<uint8_t>>& pieces) {
  std::vector<uint8_t> body;
  for (const auto& p : pieces)
    for (int i = 0; i < 4; ++i) body.push_back(uint8_t(p.size() >> (8 * i)));
  for (const auto& p : pieces) body.insert(body.end(), p.begin(), p.end());
  return body;
}

// Where each of the `pieces` pieces of an encoded message starts (a byte offset into the message),
// read from its piece table; one more entry, the end of the last piece. `header` is the header size
// (40 for payloads, 56 for updates).
inline std::vector<size_t> piece_offsets(const std::vector<uint8_t>& msg, size_t header, size_t pieces) {
  std::vector<size_t> at(pieces + 1, header + 4 * pieces);
  for (size_t i = 0; i < pieces; ++i) {
    uint32_t n = 0;
    for (int b = 0; b < 4; ++b) n |= uint32_t(msg[header + 4 * i + size_t(b)]) << (8 * b);
    at[i + 1] = at[i] + n;
  }
  return at;
}

// A copy of an encoded message whose piece `i` (of `pieces`) edit(bytes) changed, in content or length,
// with the piece table, the body length and the checksum made consistent again.
template <class Edit>
std::vector<uint8_t> edit_piece(const std::vector<uint8_t>& msg, size_t header, size_t pieces, size_t i, Edit&& edit) {
  const std::vector<size_t> at = piece_offsets(msg, header, pieces);
  std::vector<std::vector<uint8_t>> parts;
  for (size_t j = 0; j < pieces; ++j)
    parts.emplace_back(msg.begin() + ptrdiff_t(at[j]), msg.begin() + ptrdiff_t(at[j + 1]));
  edit(parts[i]);
  const std::vector<uint8_t> body = pieced(parts);
  std::vector<uint8_t> out(msg.begin(), msg.begin() + ptrdiff_t(header));
  for (int b = 0; b < 4; ++b) out[36 + size_t(b)] = uint8_t(body.size() >> (8 * b));  // body_length
  out.insert(out.end(), body.begin(), body.end());
  out.resize(out.size() + 8);
  reseal(out);
  return out;
}

}  // namespace distro::test

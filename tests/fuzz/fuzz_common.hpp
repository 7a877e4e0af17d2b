// Shared by the fuzz targets and the seed-corpus generator: the fixed manifest the targets decode
// against, and the harness that runs one input.
//
// The manifest is written out by hand, with a fixed hash, so the committed seeds stay valid whatever
// make_manifest's canonical encoding becomes (make_corpus checks that the plan itself matches
// make_manifest), and so a libFuzzer build needs only the wire sources.
#pragma once

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "core/error.hpp"
#include "optim/manifest.hpp"
#include "wire/codec.hpp"

namespace distro::fuzz {

constexpr uint64_t kManifestHash = 0x31764D5A5A554644ull;  // "DFUZZMv1", little-endian
constexpr uint32_t kChunk = 8, kTopk = 3;

// The specs the plan below was derived from (make_manifest(kSpecs, 8, 3, mode) gives the same plan).
inline std::vector<TensorSpec> specs() {
  return {{"emb", {16, 16}}, {"norm", {12}}, {"odd", {3, 5, 7}}, {"one", {1}}};
}

inline Manifest manifest(ValueMode mode) {
  struct Row { const char* name; std::vector<int64_t> shape; uint64_t batch, rows, cols; uint32_t n1, n2; };
  const Row rows[] = {{"emb", {16, 16}, 1, 16, 16, 8, 8},  // 4 chunks of 64, k = 3
                      {"norm", {12}, 1, 1, 12, 1, 6},      // 2 chunks of 6, k = 3
                      {"odd", {3, 5, 7}, 3, 5, 7, 5, 7},   // 3 chunks of 35, k = 3
                      {"one", {1}, 1, 1, 1, 1, 1}};        // 1 chunk of 1, k = 1
  Manifest m;
  m.chunk = kChunk;
  m.topk = kTopk;
  m.values = mode;
  for (const Row& r : rows) {
    TensorPlan t;
    t.name = r.name;
    t.shape = r.shape;
    t.batch = r.batch;
    t.rows = r.rows;
    t.cols = r.cols;
    t.numel = r.batch * r.rows * r.cols;
    t.n1 = r.n1;
    t.n2 = r.n2;
    t.chunks = r.batch * (r.rows / r.n1) * (r.cols / r.n2);
    t.k = t.elems() < kTopk ? t.elems() : kTopk;
    t.chunk_base = m.total_chunks;
    t.slot_base = m.total_slots;
    m.total_chunks += t.chunks;
    m.total_slots += t.chunks * t.k;
    m.total_params += t.numel;
    m.tensors.push_back(t);
  }
  m.hash = kManifestHash;
  return m;
}

// Header layout constants of wire v3 (docs/protocol.md), for the reseal step below.
constexpr size_t kBodyLengthOffset = 36;
inline size_t header_bytes(uint8_t kind) { return kind == 2 ? 56 : 40; }

// Makes body length and checksum consistent, so mutations reach the body decoder instead of all
// dying at the checksum. Returns false when the input is too short to have a header.
inline bool reseal(std::vector<uint8_t>& m) {
  if (m.size() < 8) return false;
  size_t hb = header_bytes(m[6]);
  if (m.size() < hb + 8) return false;
  uint64_t body = m.size() - hb - 8;
  for (int i = 0; i < 4; ++i) m[kBodyLengthOffset + i] = uint8_t(body >> (8 * i));
  uint64_t h = XXH3_64bits(m.data(), m.size() - 8);  // the checksum: XXH3-64, little-endian
  for (int i = 0; i < 8; ++i) m[m.size() - 8 + size_t(i)] = uint8_t(h >> (8 * i));
  return true;
}

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "fuzz oracle violated: %s\n", what);
  std::abort();
}

// Decodes with `decode`; an accepted message must re-encode to exactly the same bytes (the format
// has one encoding per message, and the encoder's validation double-checks every decoded field).
// Only corrupt / mismatch errors are acceptable answers to bad input.
template <class Decode, class Encode>
void check_one(const Manifest& m, std::span<const uint8_t> in, Decode decode, Encode encode) {
  bool ok = false;
  decltype(decode(m, in)) msg;
  try {
    msg = decode(m, in);
    ok = true;
  } catch (const Error& e) {
    if (e.code() != Code::corrupt && e.code() != Code::mismatch) die(e.what());
  }
  if (!ok) return;
  std::vector<uint8_t> again;
  try {
    again = encode(m, msg);
  } catch (const Error& e) {
    die(e.what());  // the decoder let through something the encoder refuses
  }
  if (again.size() != in.size() || std::memcmp(again.data(), in.data(), in.size()) != 0)
    die("decode then encode changed the message");
}

template <class Decode, class Encode>
int run_input(const uint8_t* data, size_t size, Decode decode, Encode encode) {
  static const Manifest sign = manifest(ValueMode::sign), int8 = manifest(ValueMode::int8);
  const Manifest& m = size > 7 && data[7] == uint8_t(ValueMode::int8) ? int8 : sign;
  std::span<const uint8_t> raw(data, size);
  try {
    inspect_message(raw);
  } catch (const Error& e) {
    if (e.code() != Code::corrupt && e.code() != Code::mismatch) die(e.what());
  }
  check_one(m, raw, decode, encode);
  std::vector<uint8_t> sealed(data, data + size);
  if (reseal(sealed)) check_one(m, sealed, decode, encode);
  return 0;
}

}  // namespace distro::fuzz

// Wire format v3: round trips, size targets and a corpus of malformed messages (docs/protocol.md).
#include <catch2/catch.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "optim/manifest.hpp"
#include "wire/bits.hpp"
#include "wire/codec.hpp"
#include "wire/integer_codes.hpp"
#include "wire/messages.hpp"
#include "wire_body.hpp"

using namespace distro;
using wire::BitWriter;
using test::pieced;
using test::reseal;

namespace {

// ---- random inputs ---------------------------------------------------------------------------------

std::vector<uint16_t> subset(std::mt19937_64& rng, uint32_t n, uint32_t k) {
  std::vector<uint16_t> out;
  out.reserve(k);
  if (k * 8 <= n) {  // sparse: rejection against the few picked so far
    while (out.size() < k) {
      uint16_t v = uint16_t(rng() % n);
      if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
    }
  } else {
    std::vector<uint16_t> all(n);
    for (uint32_t i = 0; i < n; ++i) all[i] = uint16_t(i);
    for (uint32_t i = 0; i < k; ++i) std::swap(all[i], all[i + rng() % (n - i)]);
    out.assign(all.begin(), all.begin() + k);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Manifest random_manifest(std::mt19937_64& rng, ValueMode mode) {
  static const std::vector<std::vector<int64_t>> shapes = {
      {64, 64}, {128, 96}, {7}, {64}, {300}, {3, 16, 24}, {13, 17}, {1}, {2, 40}, {256}, {48, 1}};
  std::vector<TensorSpec> specs;
  int n = 2 + int(rng() % 5);
  for (int i = 0; i < n; ++i) specs.push_back({"t" + std::to_string(i) + ".w", shapes[rng() % shapes.size()]});
  uint32_t chunk = std::vector<uint32_t>{4, 8, 16, 64}[rng() % 4];
  uint32_t topk = 1 + uint32_t(rng() % 8);
  return make_manifest(specs, chunk, topk, mode);
}

PeerPayload random_payload(std::mt19937_64& rng, const Manifest& m, double short_prob) {
  PeerPayload p;
  p.run_id = rng();
  p.step = rng();
  p.peer_id = uint32_t(rng());
  p.manifest_hash = m.hash;
  p.values = m.values;
  for (const TensorPlan& t : m.tensors)
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint32_t cnt = t.k;
      if (std::uniform_real_distribution<double>(0, 1)(rng) < short_prob) cnt = uint32_t(rng() % t.k);
      p.count.push_back(uint16_t(cnt));
      for (uint16_t i : subset(rng, t.elems(), cnt)) {
        p.index.push_back(i);
        int8_t v = m.values == ValueMode::sign ? int8_t(rng() & 1 ? 1 : -1) : int8_t(int(rng() % 255) - 127);
        p.value.push_back(v);
      }
    }
  return p;
}

MergedUpdate random_update(std::mt19937_64& rng, const Manifest& m) {
  MergedUpdate u;
  u.run_id = rng();
  u.step = rng();
  u.contributors = uint32_t(rng() % 1000);
  u.manifest_hash = m.hash;
  u.values = m.values;
  u.lr = float(rng() % 1000) * 1e-6f;
  u.decay_factor = 1.0f - u.lr * 0.1f;
  u.prev_hash = rng();
  u.offset.push_back(0);
  const int32_t vmax = max_merged_value(m.values);
  for (const TensorPlan& t : m.tensors) {
    // Some tensors use small values only, so the width field varies.
    int32_t lim = rng() % 3 == 0 ? 1 + int32_t(rng() % 7) : vmax;
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint32_t n = 0;
      switch (rng() % 4) {
        case 0: n = 0; break;
        case 1: n = t.elems(); break;
        default: n = uint32_t(rng() % (t.elems() + 1)); break;
      }
      for (uint16_t i : subset(rng, t.elems(), n)) {
        int32_t v = 0;
        while (v == 0) v = int32_t(rng() % (2 * lim + 1)) - lim;
        u.index.push_back(i);
        u.value.push_back(v);
      }
      u.offset.push_back(uint32_t(u.index.size()));
    }
  }
  return u;
}

void require_equal(const PeerPayload& a, const PeerPayload& b) {
  REQUIRE(a.run_id == b.run_id);
  REQUIRE(a.step == b.step);
  REQUIRE(a.peer_id == b.peer_id);
  REQUIRE(a.manifest_hash == b.manifest_hash);
  REQUIRE(a.values == b.values);
  REQUIRE(a.count == b.count);
  REQUIRE(a.index == b.index);
  REQUIRE(a.value == b.value);
}

void require_equal(const MergedUpdate& a, const MergedUpdate& b) {
  REQUIRE(a.run_id == b.run_id);
  REQUIRE(a.step == b.step);
  REQUIRE(a.contributors == b.contributors);
  REQUIRE(a.manifest_hash == b.manifest_hash);
  REQUIRE(a.values == b.values);
  REQUIRE(std::bit_cast<uint32_t>(a.lr) == std::bit_cast<uint32_t>(b.lr));
  REQUIRE(std::bit_cast<uint32_t>(a.decay_factor) == std::bit_cast<uint32_t>(b.decay_factor));
  REQUIRE(a.prev_hash == b.prev_hash);
  REQUIRE(a.offset == b.offset);
  REQUIRE(a.index == b.index);
  REQUIRE(a.value == b.value);
}

// ---- crafting messages by hand (an independent reading of docs/protocol.md) ----------------------

constexpr size_t kPayloadHeader = 40, kUpdateHeader = 56;

void put_le(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(uint8_t(v >> (8 * i)));
}

struct HeaderFields {
  uint16_t version = 3;
  uint8_t kind = 1;
  uint8_t values = 1;
  uint64_t run_id = 11, step = 22, manifest_hash = 0;
  uint32_t peer = 33;
  float lr = 0.5f, decay = 0.75f;
  uint64_t prev_hash = 44;
};

std::vector<uint8_t> craft(const HeaderFields& h, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out = {'D', 'S', 'T', 'R'};
  put_le(out, h.version, 2);
  put_le(out, h.kind, 1);
  put_le(out, h.values, 1);
  put_le(out, h.run_id, 8);
  put_le(out, h.step, 8);
  put_le(out, h.manifest_hash, 8);
  put_le(out, h.peer, 4);
  put_le(out, body.size(), 4);
  if (h.kind == 2) {
    put_le(out, std::bit_cast<uint32_t>(h.lr), 4);
    put_le(out, std::bit_cast<uint32_t>(h.decay), 4);
    put_le(out, h.prev_hash, 8);
  }
  out.insert(out.end(), body.begin(), body.end());
  put_le(out, test::wire_checksum(out.data(), out.size()), 8);
  return out;
}

// A piece's bit stream built field by field; bits() tells where the padding starts.
struct Body {
  std::vector<uint8_t> bytes;
  BitWriter w{bytes};
  Body() = default;
  Body(const Body&) = delete;
  Body& eg(uint64_t v) { wire::put_exp_golomb(w, v); return *this; }
  Body& tb(uint32_t v, uint32_t n) { wire::put_truncated(w, v, n); return *this; }
  Body& bits(uint64_t v, unsigned n) { w.put_wide(v, n); return *this; }
  Body& bic(std::vector<uint16_t> x, uint32_t universe) {
    wire::put_interpolative(w, x.data(), uint32_t(x.size()), universe);
    return *this;
  }
  std::vector<uint8_t> done() { w.finish(); return bytes; }
};

template <class F>
void require_error(F&& f, Code code, const std::string& needle) {
  try {
    f();
    FAIL("no error; expected one containing \"" << needle << "\"");
  } catch (const Error& e) {
    INFO("message: " << e.what());
    REQUIRE(e.code() == code);
    REQUIRE_THAT(e.what(), Catch::Contains(needle));
  }
}

// One tensor of 8 coefficients in a single chunk, k = 1: the smallest useful payload.
Manifest tiny(ValueMode mode = ValueMode::sign) { return make_manifest({{"tiny", {8}}}, 64, 1, mode); }

}  // namespace

// ---- round trips -----------------------------------------------------------------------------------

TEST_CASE("payloads round-trip on random manifests in both value modes", "[wire]") {
  std::mt19937_64 rng(10);
  for (ValueMode mode : {ValueMode::sign, ValueMode::int8})
    for (int rep = 0; rep < 40; ++rep) {
      Manifest m = random_manifest(rng, mode);
      double short_prob = std::vector<double>{0.0, 0.05, 0.5, 1.0}[rep % 4];
      PeerPayload p = random_payload(rng, m, short_prob);
      std::vector<uint8_t> bytes = encode_payload(m, p);
      PeerPayload q = decode_payload(m, bytes);
      require_equal(p, q);
      REQUIRE(encode_payload(m, q) == bytes);  // one encoding per payload

      MessageHeader h = inspect_message(bytes);
      REQUIRE(h.kind == MessageKind::payload);
      REQUIRE(h.version == 3);
      REQUIRE(h.values == mode);
      REQUIRE(h.run_id == p.run_id);
      REQUIRE(h.step == p.step);
      REQUIRE(h.peer_id == p.peer_id);
      REQUIRE(h.manifest_hash == m.hash);
    }
}

TEST_CASE("merged updates round-trip on random manifests in both value modes", "[wire]") {
  std::mt19937_64 rng(11);
  for (ValueMode mode : {ValueMode::sign, ValueMode::int8})
    for (int rep = 0; rep < 40; ++rep) {
      Manifest m = random_manifest(rng, mode);
      MergedUpdate u = random_update(rng, m);
      std::vector<uint8_t> bytes = encode_update(m, u);
      MergedUpdate v = decode_update(m, bytes);
      require_equal(u, v);
      REQUIRE(encode_update(m, v) == bytes);

      MessageHeader h = inspect_message(bytes);
      REQUIRE(h.kind == MessageKind::update);
      REQUIRE(h.values == mode);
      REQUIRE(h.peer_id == u.contributors);
      REQUIRE(h.prev_hash == u.prev_hash);
      REQUIRE(std::bit_cast<uint32_t>(h.lr) == std::bit_cast<uint32_t>(u.lr));
      REQUIRE(std::bit_cast<uint32_t>(h.decay_factor) == std::bit_cast<uint32_t>(u.decay_factor));
    }
}

TEST_CASE("extreme values and widths round-trip", "[wire]") {
  Manifest m = make_manifest({{"a", {16, 16}}, {"b", {5}}}, 16, 3, ValueMode::int8);
  MergedUpdate u;
  u.manifest_hash = m.hash;
  u.values = ValueMode::int8;
  u.lr = 1e-3f;
  u.decay_factor = 1.0f;
  u.index = {0, 255, 1, 4};
  u.value = {-32512, 32512, -1, 1};
  u.offset = {0, 2, 4};
  auto bytes = encode_update(m, u);
  require_equal(u, decode_update(m, bytes));

  Manifest ms = make_manifest({{"a", {16, 16}}}, 16, 3, ValueMode::sign);
  u.manifest_hash = ms.hash;
  u.values = ValueMode::sign;
  u.index = {3, 7};
  u.value = {-256, 256};
  u.offset = {0, 2};
  require_equal(u, decode_update(ms, encode_update(ms, u)));

  PeerPayload p;
  p.manifest_hash = m.hash;
  p.values = ValueMode::int8;
  p.count = {3, 3};
  p.index = {0, 1, 255, 0, 2, 4};
  p.value = {-127, 127, 0, 5, -5, 1};
  require_equal(p, decode_payload(m, encode_payload(m, p)));
}

TEST_CASE("a k=4 sign payload costs at most 0.012 bits per parameter at 64x64 chunks", "[wire]") {
  std::mt19937_64 rng(12);
  Manifest m = make_manifest({{"w", {4096, 4096}}, {"norm", {4096}}}, 64, 4, ValueMode::sign);
  PeerPayload p = random_payload(rng, m, 0.0);
  std::vector<uint8_t> bytes = encode_payload(m, p);
  double bpp = double(bytes.size()) * 8 / double(m.total_params);
  INFO("bits per parameter: " << bpp << ", message bytes: " << bytes.size());
  REQUIRE(bpp <= 0.012);
  require_equal(p, decode_payload(m, bytes));
}

// Prints the size table of docs/protocol.md ("Measured sizes"). Hidden: run with "[wire-sizes]".
TEST_CASE("bits per parameter table", "[.][wire-sizes]") {
  std::mt19937_64 rng(13);
  std::printf("%-5s %-5s %12s %12s %12s %12s\n", "k", "value", "ours", "u16+value", "int64+value", "entropy");
  for (ValueMode mode : {ValueMode::sign, ValueMode::int8})
    for (uint32_t k : {4u, 8u, 32u}) {
      Manifest m = make_manifest({{"w", {4096, 4096}}}, 64, k, mode);
      PeerPayload p = random_payload(rng, m, 0.0);
      auto bytes = encode_payload(m, p);
      double params = double(m.total_params);
      double vbits = mode == ValueMode::sign ? 1 : 8;
      double ent = 0;  // log2 C(4096, k) + value bits, per chunk
      for (uint32_t i = 0; i < k; ++i) ent += std::log2(double(4096 - i) / double(i + 1));
      std::printf("%-5u %-5s %12.5f %12.5f %12.5f %12.5f\n", k, mode == ValueMode::sign ? "sign" : "int8",
                  double(bytes.size()) * 8 / params, k * (16 + vbits) / 4096, k * (64 + vbits) / 4096,
                  (ent + k * vbits) / 4096);
    }
}

// ---- malformed messages ----------------------------------------------------------------------------

TEST_CASE("truncated messages are rejected as corrupt", "[wire]") {
  std::mt19937_64 rng(20);
  Manifest m = random_manifest(rng, ValueMode::sign);
  auto bytes = encode_payload(m, random_payload(rng, m, 0.1));
  for (size_t len : {size_t(0), size_t(3), size_t(7), size_t(20), size_t(39), size_t(47), bytes.size() / 2,
                     bytes.size() - 9, bytes.size() - 1}) {
    INFO("length " << len);
    std::span<const uint8_t> cut(bytes.data(), len);
    require_error([&] { decode_payload(m, cut); }, Code::corrupt, "truncated");
    require_error([&] { inspect_message(cut); }, Code::corrupt, "truncated");
  }
  auto ub = encode_update(m, random_update(rng, m));
  for (size_t len : {size_t(48), size_t(55), size_t(63), ub.size() - 1}) {
    std::span<const uint8_t> cut(ub.data(), len);
    require_error([&] { decode_update(m, cut); }, Code::corrupt, "truncated");
  }
}

TEST_CASE("every single-bit flip of a small payload is rejected", "[wire]") {
  Manifest m = make_manifest({{"a", {8, 8}}, {"b", {6}}}, 8, 2, ValueMode::sign);
  std::mt19937_64 rng(21);
  auto bytes = encode_payload(m, random_payload(rng, m, 0.3));
  size_t by_checksum = 0, total = 0;
  for (size_t bit = 0; bit < bytes.size() * 8; ++bit) {
    auto bad = bytes;
    bad[bit / 8] ^= uint8_t(1u << (bit % 8));
    ++total;
    try {
      decode_payload(m, bad);
      FAIL("bit " << bit << " flipped and the payload still decoded");
    } catch (const Error& e) {
      by_checksum += std::string(e.what()).find("checksum mismatch") != std::string::npos;
    }
  }
  // The rest hit magic, version, kind or body length, which are checked before the checksum.
  INFO(by_checksum << " of " << total << " flips caught by the checksum");
  REQUIRE(by_checksum * 10 >= total * 7);
}

TEST_CASE("header checks name what was wrong", "[wire]") {
  Manifest m = tiny();
  const std::vector<uint8_t> piece = Body().eg(0).bic({5}, 8).bits(1, 1).done();
  const std::vector<uint8_t> body = pieced({piece});  // 1 chunk: 1 piece
  HeaderFields h;
  h.manifest_hash = m.hash;
  {
    auto ok = craft(h, body);
    PeerPayload p = decode_payload(m, ok);
    REQUIRE(p.count == std::vector<uint16_t>{1});
    REQUIRE(p.index == std::vector<uint16_t>{5});
    REQUIRE(p.value == std::vector<int8_t>{-1});
    REQUIRE(p.run_id == 11);
    REQUIRE(p.step == 22);
    REQUIRE(p.peer_id == 33);
    // The codec writes the same bytes for it (the format has one encoding per message).
    REQUIRE(encode_payload(m, p) == ok);
  }
  SECTION("bad magic") {
    auto b = craft(h, body);
    b[0] = 'X';
    require_error([&] { decode_payload(m, b); }, Code::corrupt, "magic");
  }
  SECTION("wrong version") {
    for (uint16_t version : {1, 2, 4}) {
      HeaderFields v = h;
      v.version = version;
      const std::string want = "wire version " + std::to_string(version) + " is not supported; this library reads version 3";
      require_error([&] { decode_payload(m, craft(v, body)); }, Code::mismatch, want);
      require_error([&] { inspect_message(craft(v, body)); }, Code::mismatch, want);
    }
    // A v1 message (the body one bit stream, no piece table) is refused by its version, before the
    // table is looked at.
    HeaderFields v = h;
    v.version = 1;
    require_error([&] { decode_payload(m, craft(v, piece)); }, Code::mismatch, "wire version 1 is not supported");
  }
  SECTION("unknown kind") {
    HeaderFields v = h;
    v.kind = 9;
    require_error([&] { decode_payload(m, craft(v, body)); }, Code::corrupt, "unknown message kind 9");
  }
  SECTION("wrong kind for the call") {
    require_error([&] { decode_update(m, craft(h, body)); }, Code::mismatch,
                  "expected a merged update but the message is a peer payload");
    HeaderFields v = h;
    v.kind = 2;
    require_error([&] { decode_payload(m, craft(v, pieced({Body().bits(0, 5).eg(0).done()}))); }, Code::mismatch,
                  "expected a peer payload but the message is a merged update");
  }
  SECTION("unknown value mode") {
    HeaderFields v = h;
    v.values = 5;
    require_error([&] { inspect_message(craft(v, body)); }, Code::corrupt, "unknown value mode 5");
  }
  SECTION("value mode differs from the manifest") {
    HeaderFields v = h;
    v.values = 2;
    require_error([&] { decode_payload(m, craft(v, body)); }, Code::mismatch,
                  "value mode mismatch: the message carries int8 values but the manifest uses sign values");
  }
  SECTION("manifest hash differs") {
    HeaderFields v = h;
    v.manifest_hash = 0x0123456789abcdefull;
    char want[32];
    std::snprintf(want, sizeof want, "0x%016llx", static_cast<unsigned long long>(m.hash));
    require_error([&] { decode_payload(m, craft(v, body)); }, Code::mismatch, "0x0123456789abcdef");
    require_error([&] { decode_payload(m, craft(v, body)); }, Code::mismatch, want);
    require_error([&] { decode_payload(m, craft(v, body)); }, Code::mismatch, "manifest hash mismatch");
  }
  SECTION("bad checksum") {
    auto b = craft(h, body);
    b.back() ^= 0x10;
    require_error([&] { decode_payload(m, b); }, Code::corrupt, "checksum mismatch");
  }
  SECTION("body length disagrees with the size") {
    auto b = craft(h, body);
    b.insert(b.end() - 8, uint8_t(0));  // one byte more than declared
    reseal(b);
    require_error([&] { decode_payload(m, b); }, Code::corrupt,
                  "trailing bytes: the header declares a 5-byte body but 6 bytes");
    auto c = craft(h, body);
    c[36] = 7;  // declares 7 bytes, carries 5
    reseal(c);
    require_error([&] { decode_payload(m, c); }, Code::corrupt,
                  "truncated: the header declares a 7-byte body but only 5 bytes");
  }
  SECTION("the piece table must fit in the body") {
    for (size_t n : {0, 1, 3}) {
      std::vector<uint8_t> short_body(n, 0);
      require_error([&] { decode_payload(m, craft(h, short_body)); }, Code::corrupt,
                    "peer payload body: truncated: the manifest cuts the body into 1 pieces, whose length table takes "
                    "4 bytes, but the body is only " + std::to_string(n) + " bytes");
    }
  }
  SECTION("the piece lengths must add up to the body") {
    std::vector<uint8_t> b = body;  // a byte more after the piece than its table entry says
    b.push_back(0);
    require_error([&] { decode_payload(m, craft(h, b)); }, Code::corrupt,
                  "peer payload body: the piece table's 1 lengths add up to 1 bytes, but 2 bytes follow the table");
    b = body;
    b[0] = 2;  // says 2 bytes; 1 follows
    require_error([&] { decode_payload(m, craft(h, b)); }, Code::corrupt, "add up to 2 bytes, but 1 bytes follow");
    b[0] = 0xFF, b[1] = 0xFF, b[2] = 0xFF, b[3] = 0xFF;  // a huge length is refused before it is used
    require_error([&] { decode_payload(m, craft(h, b)); }, Code::corrupt, "add up to 4294967295 bytes, but 1 bytes");
    // Consistent again when the entry counts the byte: then it trails the fields inside the piece.
    auto longer = piece;
    longer.push_back(0);
    require_error([&] { decode_payload(m, craft(h, pieced({longer}))); }, Code::corrupt,
                  "piece 0, tensor 'tiny' (#0): 1 trailing bytes after the last field (the piece is 2 bytes");
  }
  SECTION("nonzero padding") {
    auto p2 = piece;  // 1 + 3 + 1 = 5 bits used; bits 5..7 are padding
    p2[0] |= 0x80;
    require_error([&] { decode_payload(m, craft(h, pieced({p2}))); }, Code::corrupt,
                  "piece 0, tensor 'tiny' (#0): nonzero padding bits");
  }
  SECTION("piece ends early") {
    require_error([&] { decode_payload(m, craft(h, pieced({std::vector<uint8_t>{}}))); }, Code::corrupt,
                  "piece 0, tensor 'tiny' (#0), preamble: truncated: needed 32 more bits at bit 0 of a 0-byte piece");
    Manifest m2 = make_manifest({{"big", {64, 64}}}, 64, 4, ValueMode::sign);
    HeaderFields v = h;
    v.manifest_hash = m2.hash;
    Body body4;
    body4.eg(0).bic({100, 1000, 2000, 3000}, 4096);  // then no sign bits
    uint64_t used = body4.w.bits_written(0);
    REQUIRE((used % 8 != 0 && 8 - used % 8 < 4));  // the padding cannot stand in for 4 sign bits
    auto bb = body4.done();
    require_error([&] { decode_payload(m2, craft(v, pieced({bb}))); }, Code::corrupt,
                  "tensor 'big' (#0), chunk 0: truncated");
  }
  SECTION("overlong exp-Golomb code") {
    std::vector<uint8_t> zeros(12, 0);
    zeros.back() = 0xFF;
    require_error([&] { decode_payload(m, craft(h, pieced({zeros}))); }, Code::corrupt, "leading zero bits");
  }
  SECTION("garbage after a valid header and checksum never decodes into something invalid") {
    std::mt19937_64 rng(22);
    Manifest m3 = make_manifest({{"a", {16, 16}}, {"b", {12}}}, 16, 3, ValueMode::int8);  // 2 pieces
    HeaderFields v = h;
    v.manifest_hash = m3.hash;
    v.values = 2;
    int decoded = 0;
    for (int i = 0; i < 3000; ++i) {
      std::vector<uint8_t> first(rng() % 40), second(rng() % 4);
      for (auto& x : first) x = uint8_t(rng());
      for (auto& x : second) x = uint8_t(rng());
      // Mostly a consistent table with noise pieces; sometimes noise for the whole body.
      std::vector<uint8_t> noise = i % 8 ? pieced({first, second}) : first;
      try {
        PeerPayload p = decode_payload(m3, craft(v, noise));
        ++decoded;
        REQUIRE(encode_payload(m3, p) == craft(v, noise));  // the encoder's validation accepts it, byte for byte
      } catch (const Error& e) {
        REQUIRE(e.code() == Code::corrupt);
      }
    }
    (void)decoded;
  }
}

TEST_CASE("payload body fields out of range are rejected with the tensor and chunk", "[wire]") {
  Manifest m = make_manifest({{"emb", {16, 16}}, {"norm", {16}}}, 8, 2, ValueMode::int8);
  // emb: 4 chunks of 64, k = 2; norm: 2 chunks of 8, k = 2. One piece each.
  HeaderFields h;
  h.manifest_hash = m.hash;
  h.values = 2;
  const std::vector<uint8_t> ok_norm =  // the norm tensor, valid: no exceptions, 2 x (2 indices, 2 values)
      Body().eg(0).bic({0, 7}, 8).bits(1, 8).bits(2, 8).bic({3, 4}, 8).bits(3, 8).bits(4, 8).done();
  {
    Body b;
    b.eg(1).eg(2).tb(0, 2);  // one exception: chunk 2 sends 0
    for (int c = 0; c < 4; ++c)
      if (c != 2) b.bic({1, 63}, 64).bits(0x7F, 8).bits(0x81, 8);
    PeerPayload p = decode_payload(m, craft(h, pieced({b.done(), ok_norm})));
    REQUIRE(p.count == std::vector<uint16_t>{2, 2, 0, 2, 2, 2});
    REQUIRE(p.value[0] == 127);
    REQUIRE(p.value[1] == -127);
  }
  SECTION("more exceptions than chunks") {
    Body b;
    b.eg(5);
    require_error([&] { decode_payload(m, craft(h, pieced({b.done(), ok_norm}))); }, Code::corrupt,
                  "peer payload body, piece 0, tensor 'emb' (#0), preamble: 5 chunks are listed as sending fewer than "
                  "k = 2 coefficients, but the piece has only 4 chunks");
  }
  SECTION("exception past the last chunk") {
    Body b;
    b.eg(2).eg(1).tb(1, 2).eg(2);
    require_error([&] { decode_payload(m, craft(h, pieced({b.done(), ok_norm}))); }, Code::corrupt,
                  "exception 1 names chunk 2 + 2, past the piece's last chunk 3");
  }
  SECTION("int8 value -128") {
    Body b;
    b.eg(0);
    b.bic({1, 63}, 64).bits(0x05, 8).bits(0x80, 8);
    require_error([&] { decode_payload(m, craft(h, pieced({b.done(), ok_norm}))); }, Code::corrupt,
                  "tensor 'emb' (#0), chunk 0: int8 value -128 for coefficient 63");
  }
  SECTION("second tensor truncated") {
    Body b;
    b.eg(0);
    for (int c = 0; c < 4; ++c) b.bic({1, 63}, 64).bits(1, 8).bits(1, 8);
    require_error([&] { decode_payload(m, craft(h, pieced({b.done(), Body().eg(0).bic({0, 7}, 8).bits(1, 8).done()}))); },
                  Code::corrupt, "peer payload body, piece 1, tensor 'norm' (#1), chunk 0: truncated");
  }
  SECTION("a piece's fields do not run on into the next piece") {
    Body b;  // emb's piece stops after chunk 0's indices: its values are in the next piece's bytes
    b.eg(0).bic({1, 63}, 64);
    std::vector<uint8_t> rest = Body().bits(1, 8).bits(1, 8).done();
    require_error([&] { decode_payload(m, craft(h, pieced({b.done(), rest}))); }, Code::corrupt,
                  "piece 0, tensor 'emb' (#0), chunk 0: truncated");
  }
}

TEST_CASE("merged update body fields out of range are rejected", "[wire]") {
  Manifest m = make_manifest({{"w", {8, 8}}}, 8, 2, ValueMode::sign);  // 1 chunk of 64
  HeaderFields h;
  h.kind = 2;
  h.manifest_hash = m.hash;
  auto msg = [](const HeaderFields& hf, const std::vector<uint8_t>& piece) { return craft(hf, pieced({piece})); };
  {
    auto b = Body().bits(2, 5).eg(2).bic({4, 9}, 64).bits(0b11, 2).bits(0b01, 2).done();
    MergedUpdate u = decode_update(m, msg(h, b));
    REQUIRE(u.offset == std::vector<uint32_t>{0, 2});
    REQUIRE(u.index == std::vector<uint16_t>{4, 9});
    REQUIRE(u.value == std::vector<int32_t>{-1, 1});
    REQUIRE(u.lr == 0.5f);
    REQUIRE(u.decay_factor == 0.75f);
    REQUIRE(u.prev_hash == 44);
    REQUIRE(u.contributors == 33);
  }
  SECTION("zero value") {
    auto b = Body().bits(3, 5).eg(1).bic({4}, 64).bits(0, 3).done();
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt,
                  "tensor 'w' (#0), chunk 0: merged value 0 for coefficient 4 is outside the non-zero range -256..256");
  }
  SECTION("value too large") {
    auto b = Body().bits(10, 5).eg(1).bic({4}, 64).bits(300, 10).done();
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt, "merged value 300 for coefficient 4");
    auto c = Body().bits(10, 5).eg(1).bic({4}, 64).bits(1024 - 257, 10).done();
    require_error([&] { decode_update(m, msg(h, c)); }, Code::corrupt, "merged value -257");
  }
  SECTION("width beyond what the mode needs") {
    auto b = Body().bits(11, 5).eg(0).done();
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt,
                  "value width 11 bits exceeds the 10 bits that merged sign values need");
  }
  SECTION("union larger than the chunk") {
    auto b = Body().bits(2, 5).eg(65).done();
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt,
                  "union of 65 coefficients; the chunk has only 64");
  }
  SECTION("a width wider than the values need (the format has one encoding per update)") {
    auto b = Body().bits(4, 5).eg(2).bic({4, 9}, 64).bits(0b1111, 4).bits(0b0001, 4).done();
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt,
                  "merged update body, piece 0, tensor 'w' (#0), preamble: value width 4 is not the smallest that fits the piece's values (2 bits do)");
  }
  SECTION("agreement coding: +-256 as a sign bit and the distance from 256") {
    // Values -256, 256, 255: sign bit + EG(0) = 2 bits, 2 bits, and 1 + EG(1) = 4 bits (8 < 30).
    auto b = Body().bits(31, 5).eg(3).bic({1, 2, 40}, 64).bits(1, 1).eg(0).bits(0, 1).eg(0).bits(0, 1).eg(1).done();
    MergedUpdate u = decode_update(m, msg(h, b));
    REQUIRE(u.value == std::vector<int32_t>{-256, 256, 255});
    // The encoder picks it for such values, and the result is much smaller than 10-bit fields.
    auto bytes = encode_update(m, u);
    CHECK(bytes == msg(h, b));
  }
  SECTION("agreement coding where the fixed width is no larger") {
    auto b = Body().bits(31, 5).eg(1).bic({4}, 64).bits(0, 1).eg(255).done();  // value 1: 16 bits vs 2
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt,
                  "values use the agreement coding where the fixed width of 2 bits is no larger");
  }
  SECTION("fixed width where the agreement coding is smaller") {
    auto b = Body().bits(10, 5).eg(1).bic({4}, 64).bits(256, 10).done();  // 10 bits vs 2
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt,
                  "values use a fixed width where the agreement coding is smaller");
  }
  SECTION("agreement distance that would make the value zero or negative") {
    auto b = Body().bits(31, 5).eg(1).bic({4}, 64).bits(0, 1).eg(256).done();
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt,
                  "merged value distance 256 from full agreement for coefficient 4 is outside 0..255");
  }
  SECTION("values present with width 0") {
    auto b = Body().bits(0, 5).eg(1).bic({4}, 64).done();
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt, "value width is 0");
  }
  SECTION("fewer bits than the values need") {
    auto b = Body().bits(8, 5).eg(64).bits(0x11, 8).done();
    require_error([&] { decode_update(m, msg(h, b)); }, Code::corrupt, "chunk 0: truncated: 64 values of at least 8 bits");
  }
  SECTION("lr or decay factor not usable") {
    HeaderFields v = h;
    auto b = Body().bits(0, 5).eg(0).done();
    v.lr = std::numeric_limits<float>::quiet_NaN();
    require_error([&] { decode_update(m, msg(v, b)); }, Code::corrupt, "lr nan is not a finite value >= 0");
    v.lr = 0.1f;
    v.decay = 1.5f;
    require_error([&] { decode_update(m, msg(v, b)); }, Code::corrupt, "decay_factor 1.5 is not in (0, 1]");
  }
  SECTION("trailing bytes and padding") {
    auto b = Body().bits(0, 5).eg(0).done();  // 6 bits
    auto c = b;
    c.push_back(0);
    require_error([&] { decode_update(m, msg(h, c)); }, Code::corrupt, "1 trailing bytes after the last field");
    c = b;
    c[0] |= 0x40;
    require_error([&] { decode_update(m, msg(h, c)); }, Code::corrupt, "nonzero padding bits");
  }
}

// ---- pieces ----------------------------------------------------------------------------------------

TEST_CASE("the piece table: the worked example of docs/protocol.md section 3", "[wire]") {
  // a: 5000 chunks of 8x8 (pieces 0..2: chunks 0..2047, 2048..4095, 4096..4999); b: 1 chunk (piece 3).
  // k = 1 and every chunk sends nothing, so each piece is EG(chunks), then EG(0) = one 1 bit per
  // chunk (gaps of 0) and TB(0, 1) = no bits.
  Manifest m = make_manifest({{"a", {8, 40000}}, {"b", {8}}}, 8, 1, ValueMode::sign);
  REQUIRE(m.tensors[0].chunks == 5000);
  REQUIRE(m.tensors[1].chunks == 1);
  REQUIRE(wire::piece_count(m) == 4);
  PeerPayload p;
  p.manifest_hash = m.hash;
  p.count.assign(5001, 0);
  const std::vector<uint8_t> bytes = encode_payload(m, p);
  // EG(2048): 11 zeros, a 1, the 11-bit field 1, then 2048 ones: 2071 bits, 259 bytes.
  std::vector<uint8_t> full = {0x00, 0x18, 0x80};
  full.insert(full.end(), 255, 0xFF);
  full.push_back(0x7F);
  // EG(904): 9 zeros, a 1, the 9-bit field 905 - 512 = 393, then 904 ones: 923 bits, 116 bytes.
  Body last;
  last.eg(904);
  for (int i = 0; i < 904; ++i) last.bits(1, 1);
  const std::vector<uint8_t> tail = last.done();
  REQUIRE(tail.size() == 116);
  const std::vector<uint8_t> one = {0x0A};  // EG(1) = 0 1 0, then EG(0) = 1: bits 0 1 0 1
  const std::vector<uint8_t> table = {0x03, 0x01, 0, 0, 0x03, 0x01, 0, 0, 0x74, 0, 0, 0, 0x01, 0, 0, 0};
  std::vector<uint8_t> body = pieced({full, full, tail, one});
  REQUIRE(std::vector<uint8_t>(body.begin(), body.begin() + 16) == table);
  REQUIRE(body.size() == 651);
  HeaderFields h;
  h.manifest_hash = m.hash;
  h.run_id = h.step = 0;
  h.peer = 0;
  REQUIRE(bytes == craft(h, body));
  require_equal(p, decode_payload(m, bytes));
}

TEST_CASE("tensors of 2048, 2049 and more chunks round-trip in several pieces", "[wire]") {
  // chunk 4 (16 coefficients), k = 3: "exact" is one full piece, "over" a full one and one of a
  // single chunk, "many" three.
  std::mt19937_64 rng(14);
  for (ValueMode mode : {ValueMode::sign, ValueMode::int8}) {
    Manifest m = make_manifest({{"exact", {4, 4 * 2048}}, {"over", {4, 4 * 2049}}, {"norm", {7}}, {"many", {12, 4 * 1700}}},
                               4, 3, mode);
    REQUIRE(m.tensors[0].chunks == 2048);
    REQUIRE(m.tensors[1].chunks == 2049);
    REQUIRE(m.tensors[3].chunks == 5100);
    REQUIRE(wire::piece_count(m) == 1 + 2 + 1 + 3);
    for (double short_prob : {0.0, 0.3, 1.0}) {
      PeerPayload p = random_payload(rng, m, short_prob);
      std::vector<uint8_t> bytes = encode_payload(m, p);
      PeerPayload q = decode_payload(m, bytes);
      require_equal(p, q);
      REQUIRE(encode_payload(m, q) == bytes);
      // The table's lengths add up to the body after it.
      const std::vector<size_t> at = test::piece_offsets(bytes, kPayloadHeader, 7);
      REQUIRE(at.back() == bytes.size() - 8);
    }
    MergedUpdate u = random_update(rng, m);
    std::vector<uint8_t> ub = encode_update(m, u);
    MergedUpdate v = decode_update(m, ub);
    require_equal(u, v);
    REQUIRE(encode_update(m, v) == ub);
    REQUIRE(test::piece_offsets(ub, kUpdateHeader, 7).back() == ub.size() - 8);
  }
}

TEST_CASE("an update's value width is chosen per piece", "[wire]") {
  // One tensor of 2049 chunks of 4: piece 0 (chunks 0..2047) holds values of +-1 (2-bit fields),
  // piece 1 (chunk 2048) a value of 100 (8-bit fields).
  Manifest m = make_manifest({{"w", {2, 2 * 2049}}}, 2, 1, ValueMode::int8);
  REQUIRE(m.tensors[0].chunks == 2049);
  MergedUpdate u;
  u.manifest_hash = m.hash;
  u.values = ValueMode::int8;
  u.lr = 0.5f;
  u.decay_factor = 0.75f;
  u.offset.push_back(0);
  for (uint32_t c = 0; c < 2049; ++c) {
    u.index.push_back(uint16_t(c % 4));
    u.value.push_back(c == 2048 ? 100 : (c % 2 ? 1 : -1));
    u.offset.push_back(c + 1);
  }
  Body first;
  first.bits(2, 5);
  for (uint32_t c = 0; c < 2048; ++c) first.eg(1).bic({uint16_t(c % 4)}, 4).bits(c % 2 ? 1 : 3, 2);
  const std::vector<uint8_t> second = Body().bits(8, 5).eg(1).bic({0}, 4).bits(100, 8).done();
  HeaderFields h;
  h.kind = 2;
  h.values = 2;
  h.manifest_hash = m.hash;
  h.run_id = h.step = h.prev_hash = 0;
  h.peer = 0;
  const std::vector<uint8_t> want = craft(h, pieced({first.done(), second}));
  REQUIRE(encode_update(m, u) == want);
  require_equal(u, decode_update(m, want));
}

TEST_CASE("errors inside a middle piece name the piece", "[wire]") {
  // Three tensors of one chunk each: three pieces.
  Manifest m = make_manifest({{"a", {8}}, {"b", {8}}, {"c", {8}}}, 8, 1, ValueMode::sign);
  HeaderFields h;
  h.manifest_hash = m.hash;
  const std::vector<uint8_t> ok = Body().eg(0).bic({5}, 8).bits(1, 1).done();  // 5 bits used
  REQUIRE_NOTHROW(decode_payload(m, craft(h, pieced({ok, ok, ok}))));
  SECTION("nonzero padding") {
    auto bad = ok;
    bad[0] |= 0x20;
    require_error([&] { decode_payload(m, craft(h, pieced({ok, bad, ok}))); }, Code::corrupt,
                  "peer payload body, piece 1, tensor 'b' (#1): nonzero padding bits after the last field");
  }
  SECTION("trailing bytes") {
    auto bad = ok;
    bad.push_back(0);
    bad.push_back(0);
    require_error([&] { decode_payload(m, craft(h, pieced({ok, bad, ok}))); }, Code::corrupt,
                  "peer payload body, piece 1, tensor 'b' (#1): 2 trailing bytes after the last field (the piece is 3 "
                  "bytes, its fields end in byte 1)");
  }
  SECTION("an empty piece") {
    require_error([&] { decode_payload(m, craft(h, pieced({ok, ok, {}}))); }, Code::corrupt,
                  "piece 2, tensor 'c' (#2), preamble: truncated");
  }
  SECTION("the first bad piece in body order is reported") {
    auto pad = ok;
    pad[0] |= 0x80;
    require_error([&] { decode_payload(m, craft(h, pieced({ok, pad, {}}))); }, Code::corrupt,
                  "piece 1, tensor 'b' (#1): nonzero padding bits");
  }
}

// ---- encoder validation ----------------------------------------------------------------------------

TEST_CASE("encoders reject invalid input", "[wire]") {
  Manifest m = make_manifest({{"a", {8, 8}}, {"b", {4}}}, 8, 2, ValueMode::sign);  // a: 1x64 k=2; b: 1x4 k=2
  PeerPayload p;
  p.manifest_hash = m.hash;
  p.count = {2, 1};
  p.index = {3, 9, 0};
  p.value = {1, -1, 1};
  REQUIRE_NOTHROW(encode_payload(m, p));
  auto expect = [&](PeerPayload q, const std::string& needle) {
    require_error([&] { encode_payload(m, q); }, Code::invalid_argument, needle);
  };
  { auto q = p; q.index = {9, 3, 0}; expect(q, "indices are not strictly ascending (9 then 3)"); }
  { auto q = p; q.index = {3, 3, 0}; expect(q, "not strictly ascending"); }
  { auto q = p; q.index = {3, 9, 4}; expect(q, "tensor 'b' chunk 0: index 4 is outside the chunk's 4 coefficients"); }
  { auto q = p; q.count = {3, 0}; expect(q, "tensor 'a' chunk 0 has count 3 > k = 2"); }
  { auto q = p; q.count = {2}; expect(q, "count has 1 entries; the manifest has 2 chunks"); }
  { auto q = p; q.value = {1, 1}; expect(q, "index has 3 and value has 2"); }
  { auto q = p; q.value = {1, 0, 1}; expect(q, "sign value 0 is not +1 or -1"); }
  { auto q = p; q.manifest_hash ^= 1; expect(q, "is not the manifest's hash"); }
  { auto q = p; q.values = ValueMode::int8; expect(q, "the payload has int8 values but the manifest uses sign"); }

  Manifest m8 = make_manifest({{"a", {8, 8}}}, 8, 2, ValueMode::int8);
  PeerPayload p8;
  p8.manifest_hash = m8.hash;
  p8.values = ValueMode::int8;
  p8.count = {1};
  p8.index = {0};
  p8.value = {-128};
  require_error([&] { encode_payload(m8, p8); }, Code::invalid_argument, "int8 value -128");

  // k = 65536 does not fit PeerPayload::count (uint16_t): refused up front, both ways.
  Manifest mbig = make_manifest({{"full", {256, 256}}}, 256, 65536, ValueMode::sign);
  PeerPayload pb;
  pb.manifest_hash = mbig.hash;
  require_error([&] { encode_payload(mbig, pb); }, Code::unsupported, "tensor 'full' has k = 65536");
  HeaderFields hb;
  hb.manifest_hash = mbig.hash;
  require_error([&] { decode_payload(mbig, craft(hb, pieced({std::vector<uint8_t>{0x01}}))); }, Code::unsupported, "at most 65535");

  MergedUpdate u;
  u.manifest_hash = m.hash;
  u.lr = 0.01f;
  u.decay_factor = 0.999f;
  u.offset = {0, 2, 3};
  u.index = {3, 9, 0};
  u.value = {256, -1, 7};
  REQUIRE_NOTHROW(encode_update(m, u));
  auto expect_u = [&](MergedUpdate q, const std::string& needle) {
    require_error([&] { encode_update(m, q); }, Code::invalid_argument, needle);
  };
  { auto q = u; q.value[1] = 0; expect_u(q, "merged value 0 is outside"); }
  { auto q = u; q.value[0] = 257; expect_u(q, "merged value 257 is outside the non-zero range -256..256"); }
  { auto q = u; q.index = {9, 3, 0}; expect_u(q, "not strictly ascending"); }
  { auto q = u; q.index = {3, 9, 5}; expect_u(q, "index 5 is outside"); }
  { auto q = u; q.offset = {0, 3, 1}; q.index = {3}; q.value = {1}; expect_u(q, "offset decreases at chunk 1 (3 then 1)"); }
  { auto q = u; q.offset = {1, 2, 3}; expect_u(q, "offset[0] is 1"); }
  { auto q = u; q.offset = {0, 3}; expect_u(q, "offset has 2 entries"); }
  { auto q = u; q.lr = std::numeric_limits<float>::infinity(); expect_u(q, "lr inf"); }
  { auto q = u; q.decay_factor = 0.0f; expect_u(q, "decay_factor 0 is not in (0, 1]"); }
  {
    auto q = u;  // 5 coefficients in a 4-coefficient chunk
    q.offset = {0, 2, 7};
    q.index = {3, 9, 0, 1, 2, 3, 3};
    q.value = {1, 1, 1, 1, 1, 1, 1};
    expect_u(q, "tensor 'b' chunk 0 has 5 coefficients; the chunk has only 4");
  }
}

TEST_CASE("inspect_message reads both kinds without a manifest", "[wire]") {
  std::mt19937_64 rng(30);
  Manifest m = random_manifest(rng, ValueMode::int8);
  PeerPayload p = random_payload(rng, m, 0.2);
  MessageHeader hp = inspect_message(encode_payload(m, p));
  REQUIRE(hp.kind == MessageKind::payload);
  REQUIRE(hp.values == ValueMode::int8);
  REQUIRE(hp.run_id == p.run_id);
  REQUIRE(hp.step == p.step);
  REQUIRE(hp.peer_id == p.peer_id);
  REQUIRE(hp.manifest_hash == m.hash);
  REQUIRE(hp.prev_hash == 0);

  MergedUpdate u = random_update(rng, m);
  MessageHeader hu = inspect_message(encode_update(m, u));
  REQUIRE(hu.kind == MessageKind::update);
  REQUIRE(hu.version == 3);
  REQUIRE(hu.run_id == u.run_id);
  REQUIRE(hu.step == u.step);
  REQUIRE(hu.peer_id == u.contributors);
  REQUIRE(hu.prev_hash == u.prev_hash);
  REQUIRE(hu.lr == u.lr);
  REQUIRE(hu.decay_factor == u.decay_factor);
}

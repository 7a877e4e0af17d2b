// Wire format v1 (docs/protocol.md is the specification; keep the two in step).
#include "wire/codec.hpp"

#include <openssl/sha.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/error.hpp"
#include "wire/bits.hpp"
#include "wire/integer_codes.hpp"

namespace distro {

using wire::BitReader;
using wire::BitWriter;

namespace {

constexpr uint8_t kMagic[4] = {'D', 'S', 'T', 'R'};
// Header sizes: every field sits at an offset that is a multiple of its size.
constexpr size_t kPayloadHeaderBytes = 40;
constexpr size_t kUpdateHeaderBytes = 56;
constexpr size_t kChecksumBytes = 8;
constexpr unsigned kWidthFieldBits = 5;

// Byte offsets of the header fields (docs/protocol.md, "Header").
enum : size_t {
  kOffMagic = 0,
  kOffVersion = 4,
  kOffKind = 6,
  kOffValues = 7,
  kOffRunId = 8,
  kOffStep = 16,
  kOffManifest = 24,
  kOffPeer = 32,
  kOffBodyLength = 36,
  kOffLr = 40,
  kOffDecay = 44,
  kOffPrevHash = 48,
};

// ---- little-endian fields ------------------------------------------------------------------------

void put_le(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(uint8_t(v >> (8 * i)));
}
void patch_le(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = uint8_t(v >> (8 * i));
}
uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}
uint32_t float_bits(float f) { return std::bit_cast<uint32_t>(f); }
float bits_float(uint32_t b) { return std::bit_cast<float>(b); }

uint64_t checksum(const uint8_t* p, size_t n) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(p, n, digest);
  return get_le(digest, 8);
}

std::string hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string fmt_float(float f) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.9g", double(f));
  return buf;
}

const char* kind_name(MessageKind k) { return k == MessageKind::payload ? "peer payload" : "merged update"; }
const char* mode_name(ValueMode v) { return v == ValueMode::sign ? "sign" : "int8"; }
size_t header_bytes(MessageKind k) { return k == MessageKind::payload ? kPayloadHeaderBytes : kUpdateHeaderBytes; }

// Width in bits of the two's-complement field that holds v.
unsigned signed_width(int32_t v) {
  uint32_t mag = v < 0 ? ~uint32_t(v) : uint32_t(v);
  return unsigned(std::bit_width(mag)) + 1;
}
unsigned max_width(ValueMode v) { return signed_width(max_merged_value(v)); }

// Merged values cluster at +-vmax (every peer that sent a coefficient agreed on its sign), so a
// tensor may code each value as a sign bit and the exp-Golomb code of vmax - |A| instead of a fixed
// width. The width field's escape value kAgreementCode selects it, when it is strictly smaller.
constexpr unsigned kAgreementCode = 31;
bool agreement_cheaper(const int32_t* v, uint64_t n, unsigned width, int32_t vmax) {
  uint64_t agree = 0;
  for (uint64_t i = 0; i < n; ++i) agree += 1 + wire::exp_golomb_bits(uint64_t(vmax - (v[i] < 0 ? -v[i] : v[i])));
  return agree < n * width;
}

// ---- header ----------------------------------------------------------------------------------------

struct Parsed {
  MessageHeader header;
  const uint8_t* body = nullptr;
  size_t body_bytes = 0;
};

[[noreturn]] void corrupt(const std::string& what) { fail(Code::corrupt, what); }

Parsed parse(std::span<const uint8_t> bytes) {
  const uint8_t* p = bytes.data();
  size_t n = bytes.size();
  constexpr size_t kMin = kPayloadHeaderBytes + kChecksumBytes;
  if (n < 4)
    corrupt("truncated: a wire message is at least " + std::to_string(kMin) + " bytes, got " +
            std::to_string(n));
  if (std::memcmp(p + kOffMagic, kMagic, 4) != 0)
    corrupt("not a libdistro wire message: the first 4 bytes are not the magic \"DSTR\"");
  if (n < 8)
    corrupt("truncated: a wire message is at least " + std::to_string(kMin) + " bytes, got " +
            std::to_string(n));
  // The version is checked before anything else it governs: a later version may lay out the rest
  // differently, so the only useful answer is "not supported".
  uint16_t version = uint16_t(get_le(p + kOffVersion, 2));
  if (version != kWireVersion)
    fail(Code::mismatch, "wire version " + std::to_string(version) +
                             " is not supported; this library reads version " + std::to_string(kWireVersion));
  uint8_t kind = p[kOffKind];
  if (kind != uint8_t(MessageKind::payload) && kind != uint8_t(MessageKind::update))
    corrupt("unknown message kind " + std::to_string(kind) + "; expected 1 (peer payload) or 2 (merged update)");
  MessageKind mk = MessageKind(kind);
  size_t hb = header_bytes(mk);
  if (n < hb + kChecksumBytes)
    corrupt(std::string("truncated: a ") + kind_name(mk) + " is at least " +
            std::to_string(hb + kChecksumBytes) + " bytes (header and checksum), got " + std::to_string(n));
  uint64_t declared = get_le(p + kOffBodyLength, 4);
  uint64_t carried = n - hb - kChecksumBytes;
  if (declared > carried)
    corrupt("truncated: the header declares a " + std::to_string(declared) + "-byte body but only " +
            std::to_string(carried) + " bytes lie between the header and the checksum");
  if (declared < carried)
    corrupt("trailing bytes: the header declares a " + std::to_string(declared) + "-byte body but " +
            std::to_string(carried) + " bytes lie between the header and the checksum");
  uint64_t stated = get_le(p + n - kChecksumBytes, 8);
  uint64_t actual = checksum(p, n - kChecksumBytes);
  if (stated != actual)
    corrupt("checksum mismatch: the message carries " + hex64(stated) + " but its contents hash to " +
            hex64(actual) + " (damaged or altered in transit)");
  uint8_t values = p[kOffValues];
  if (values != uint8_t(ValueMode::sign) && values != uint8_t(ValueMode::int8))
    corrupt("unknown value mode " + std::to_string(values) + "; expected 1 (sign) or 2 (int8)");

  Parsed out;
  MessageHeader& h = out.header;
  h.kind = mk;
  h.version = version;
  h.values = ValueMode(values);
  h.run_id = get_le(p + kOffRunId, 8);
  h.step = get_le(p + kOffStep, 8);
  h.manifest_hash = get_le(p + kOffManifest, 8);
  h.peer_id = uint32_t(get_le(p + kOffPeer, 4));
  if (mk == MessageKind::update) {
    h.lr = bits_float(uint32_t(get_le(p + kOffLr, 4)));
    h.decay_factor = bits_float(uint32_t(get_le(p + kOffDecay, 4)));
    h.prev_hash = get_le(p + kOffPrevHash, 8);
  }
  out.body = p + hb;
  out.body_bytes = size_t(declared);
  return out;
}

// Checks that bind a message to the caller's run: kind, value mode and manifest.
void check_binding(const Manifest& m, const MessageHeader& h, MessageKind want) {
  if (h.kind != want)
    fail(Code::mismatch, std::string("expected a ") + kind_name(want) + " but the message is a " + kind_name(h.kind));
  if (h.values != m.values)
    fail(Code::mismatch, std::string("value mode mismatch: the message carries ") + mode_name(h.values) +
                             " values but the manifest uses " + mode_name(m.values) + " values");
  if (h.manifest_hash != m.hash)
    fail(Code::mismatch, "manifest hash mismatch: the message was made for manifest " + hex64(h.manifest_hash) +
                             " but this run's manifest is " + hex64(m.hash));
}

// lr and the decay factor are applied to every parameter, so a NaN or a wild value must not pass.
std::string update_scalars_problem(float lr, float decay) {
  if (!std::isfinite(lr) || lr < 0.0f) return "lr " + fmt_float(lr) + " is not a finite value >= 0";
  if (!std::isfinite(decay) || !(decay > 0.0f) || decay > 1.0f)
    return "decay_factor " + fmt_float(decay) + " is not in (0, 1]";
  return {};
}

// Start of a message: the header with body_length 0, patched by finish_message.
std::vector<uint8_t> start_message(MessageKind kind, ValueMode values, uint64_t run_id, uint64_t step,
                                   uint64_t manifest_hash, uint32_t peer, size_t body_estimate) {
  std::vector<uint8_t> out;
  out.reserve(header_bytes(kind) + body_estimate + kChecksumBytes);
  for (uint8_t b : kMagic) out.push_back(b);  // (vector::insert trips a GCC 12 false -Wstringop-overflow)
  put_le(out, kWireVersion, 2);
  put_le(out, uint8_t(kind), 1);
  put_le(out, uint8_t(values), 1);
  put_le(out, run_id, 8);
  put_le(out, step, 8);
  put_le(out, manifest_hash, 8);
  put_le(out, peer, 4);
  put_le(out, 0, 4);  // body length, patched later
  return out;
}

void finish_message(std::vector<uint8_t>& out, size_t header) {
  size_t body = out.size() - header;
  if (body > 0xFFFFFFFFu)
    fail(Code::size, "message body is " + std::to_string(body) + " bytes; the wire format allows at most 2^32 - 1");
  patch_le(out.data() + kOffBodyLength, body, 4);
  put_le(out, checksum(out.data(), out.size()), 8);
}

// Where a body decoder is, for error messages: "tensor 'name' (#t) chunk c: ...".
struct Where {
  const char* what;  // "peer payload" / "merged update"
  const TensorPlan* tensor = nullptr;
  size_t tensor_no = 0;
  int64_t chunk = -1;  // -1: the tensor's preamble (exception list / value width)

  std::string prefix() const {
    std::string s = std::string(what) + " body";
    if (tensor) {
      s += ", tensor '" + tensor->name + "' (#" + std::to_string(tensor_no) + ")";
      s += chunk >= 0 ? ", chunk " + std::to_string(chunk) : std::string(", preamble");
    }
    return s + ": ";
  }
  [[noreturn]] void corrupt(const std::string& msg) const { fail(Code::corrupt, prefix() + msg); }
};

// After the last field only zero padding bits up to the next byte may remain.
void check_end(const BitReader& r, const Where& where) {
  uint64_t used = r.position();
  uint64_t used_bytes = (used + 7) / 8;
  if (used_bytes < r.size_bytes())
    where.corrupt(std::to_string(r.size_bytes() - used_bytes) + " trailing bytes after the last field (the body is " +
                  std::to_string(r.size_bytes()) + " bytes, its fields end in byte " + std::to_string(used_bytes) + ")");
  if (r.remaining() > 0) {
    BitReader tail = r;
    if (tail.get(unsigned(r.remaining())) != 0) where.corrupt("nonzero padding bits after the last field");
  }
}

// Runs a body decoder, turning any corrupt-stream error from the bit layer (truncation, overlong
// code) into one that names the tensor and chunk being decoded.
template <class F>
void with_context(Where& where, F&& body) {
  try {
    body();
  } catch (const Error& e) {
    if (e.code() != Code::corrupt || std::string_view(e.what()).starts_with(where.what)) throw;
    where.corrupt(e.what());
  }
}

// PeerPayload::count is uint16_t, so k = 65536 (a 256x256 chunk with top-k >= 65536) cannot be held.
void check_payload_manifest(const Manifest& m) {
  for (const TensorPlan& t : m.tensors)
    if (t.k > 0xFFFF)
      fail(Code::unsupported, "tensor '" + t.name + "' has k = " + std::to_string(t.k) +
                                  "; peer payloads carry at most 65535 coefficients per chunk");
}

}  // namespace

// ---- peer payload ---------------------------------------------------------------------------------

std::vector<uint8_t> encode_payload(const Manifest& m, const PeerPayload& p) {
  auto bad = [](const std::string& msg) { fail(Code::invalid_argument, "encode_payload: " + msg); };
  check_payload_manifest(m);
  if (p.values != ValueMode::sign && p.values != ValueMode::int8)
    bad("value mode " + std::to_string(int(p.values)) + " is unknown");
  if (p.values != m.values)
    bad(std::string("the payload has ") + mode_name(p.values) + " values but the manifest uses " + mode_name(m.values));
  if (p.manifest_hash != m.hash)
    bad("payload.manifest_hash " + hex64(p.manifest_hash) + " is not the manifest's hash " + hex64(m.hash));
  if (p.count.size() != m.total_chunks)
    bad("count has " + std::to_string(p.count.size()) + " entries; the manifest has " +
        std::to_string(m.total_chunks) + " chunks");
  // Counts first, so the index/value walks below stay inside the arrays.
  uint64_t total = 0;
  for (const TensorPlan& t : m.tensors)
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint16_t cnt = p.count[t.chunk_base + c];
      if (cnt > t.k)
        bad("tensor '" + t.name + "' chunk " + std::to_string(c) + " has count " + std::to_string(cnt) +
            " > k = " + std::to_string(t.k));
      total += cnt;
    }
  if (p.index.size() != total || p.value.size() != total)
    bad("the counts add up to " + std::to_string(total) + " coefficients but index has " +
        std::to_string(p.index.size()) + " and value has " + std::to_string(p.value.size()));

  unsigned value_bits = p.values == ValueMode::sign ? 1 : 8;
  size_t estimate = size_t(total * (value_bits + 13) / 8 + m.tensors.size() + 16);
  std::vector<uint8_t> out = start_message(MessageKind::payload, p.values, p.run_id, p.step, m.hash, p.peer_id, estimate);
  BitWriter w(out);
  uint64_t pos = 0;  // next coefficient of index/value
  for (const TensorPlan& t : m.tensors) {
    const uint16_t* count = p.count.data() + t.chunk_base;
    // Exception list: the chunks that send fewer than k, as gaps between chunk numbers.
    uint64_t exceptions = 0;
    for (uint64_t c = 0; c < t.chunks; ++c) exceptions += count[c] < t.k;
    wire::put_exp_golomb(w, exceptions);
    uint64_t next = 0;
    for (uint64_t c = 0; c < t.chunks && exceptions > 0; ++c) {
      if (count[c] >= t.k) continue;
      wire::put_exp_golomb(w, c - next);
      wire::put_truncated(w, count[c], t.k);
      next = c + 1;
      --exceptions;
    }
    const uint32_t elems = t.elems();
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint32_t cnt = count[c];
      const uint16_t* idx = p.index.data() + pos;
      const int8_t* val = p.value.data() + pos;
      for (uint32_t i = 0; i < cnt; ++i) {
        if (idx[i] >= elems)
          bad("tensor '" + t.name + "' chunk " + std::to_string(c) + ": index " + std::to_string(idx[i]) +
              " is outside the chunk's " + std::to_string(elems) + " coefficients");
        if (i > 0 && idx[i] <= idx[i - 1])
          bad("tensor '" + t.name + "' chunk " + std::to_string(c) + ": indices are not strictly ascending (" +
              std::to_string(idx[i - 1]) + " then " + std::to_string(idx[i]) + ")");
      }
      wire::put_interpolative(w, idx, cnt, elems);
      if (p.values == ValueMode::sign) {
        uint64_t bits = 0;
        for (uint32_t i = 0; i < cnt; ++i) {
          if (val[i] != 1 && val[i] != -1)
            bad("tensor '" + t.name + "' chunk " + std::to_string(c) + ": sign value " + std::to_string(val[i]) +
                " is not +1 or -1");
          bits |= uint64_t(val[i] < 0) << (i & 31);
          if ((i & 31) == 31 || i + 1 == cnt) {
            w.put(bits, (i & 31) + 1);
            bits = 0;
          }
        }
      } else {
        for (uint32_t i = 0; i < cnt; ++i) {
          if (val[i] == -128)
            bad("tensor '" + t.name + "' chunk " + std::to_string(c) + ": int8 value -128 is outside -127..127");
          w.put(uint8_t(val[i]), 8);
        }
      }
      pos += cnt;
    }
  }
  w.finish();
  finish_message(out, kPayloadHeaderBytes);
  return out;
}

PeerPayload decode_payload(const Manifest& m, std::span<const uint8_t> bytes) {
  Parsed parsed = parse(bytes);
  const MessageHeader& h = parsed.header;
  check_binding(m, h, MessageKind::payload);
  check_payload_manifest(m);

  PeerPayload p;
  p.run_id = h.run_id;
  p.step = h.step;
  p.peer_id = h.peer_id;
  p.manifest_hash = h.manifest_hash;
  p.values = h.values;
  p.count.assign(m.total_chunks, 0);  // manifest-sized, not message-sized
  // Every coefficient costs at least one value bit, so the body's size bounds the total as well.
  uint64_t bound = std::min<uint64_t>(m.total_slots, uint64_t(parsed.body_bytes) * 8);
  p.index.reserve(size_t(bound));
  p.value.reserve(size_t(bound));

  BitReader r(parsed.body, parsed.body_bytes);
  Where where{"peer payload"};
  const bool sign = h.values == ValueMode::sign;
  with_context(where, [&] {
    for (size_t ti = 0; ti < m.tensors.size(); ++ti) {
      const TensorPlan& t = m.tensors[ti];
      where.tensor = &t;
      where.tensor_no = ti;
      where.chunk = -1;
      uint16_t* count = p.count.data() + t.chunk_base;
      std::fill(count, count + t.chunks, uint16_t(t.k));
      uint64_t exceptions = wire::get_exp_golomb(r);
      if (exceptions > t.chunks)
        where.corrupt(std::to_string(exceptions) + " chunks are listed as sending fewer than k = " +
                      std::to_string(t.k) + " coefficients, but the tensor has only " + std::to_string(t.chunks) +
                      " chunks");
      uint64_t next = 0;
      for (uint64_t e = 0; e < exceptions; ++e) {
        uint64_t gap = wire::get_exp_golomb(r);
        if (gap >= t.chunks - next)  // next <= chunks, so no overflow
          where.corrupt("exception " + std::to_string(e) + " names chunk " + std::to_string(next) + " + " +
                        std::to_string(gap) + ", past the tensor's last chunk " + std::to_string(t.chunks - 1));
        uint64_t c = next + gap;
        count[c] = uint16_t(wire::get_truncated(r, t.k));  // in [0, k) by construction
        next = c + 1;
      }
      const uint32_t elems = t.elems();
      for (uint64_t c = 0; c < t.chunks; ++c) {
        where.chunk = int64_t(c);
        uint32_t cnt = count[c];
        if (cnt == 0) continue;
        size_t at = p.index.size();
        p.index.resize(at + cnt);
        p.value.resize(at + cnt);
        wire::get_interpolative(r, p.index.data() + at, cnt, elems);
        int8_t* val = p.value.data() + at;
        if (sign) {
          for (uint32_t i = 0; i < cnt; i += 32) {
            unsigned n = std::min<uint32_t>(32, cnt - i);
            uint32_t bits = r.get(n);
            for (unsigned j = 0; j < n; ++j) val[i + j] = (bits >> j) & 1 ? int8_t(-1) : int8_t(1);
          }
        } else {
          for (uint32_t i = 0; i < cnt; ++i) {
            uint32_t b = r.get(8);
            if (b == 0x80)
              where.corrupt("int8 value -128 for coefficient " + std::to_string(p.index[at + i]) +
                            "; values lie in -127..127");
            val[i] = int8_t(uint8_t(b));
          }
        }
      }
    }
    where.tensor = nullptr;
    check_end(r, where);
  });
  return p;
}

// ---- merged update --------------------------------------------------------------------------------

std::vector<uint8_t> encode_update(const Manifest& m, const MergedUpdate& u) {
  auto bad = [](const std::string& msg) { fail(Code::invalid_argument, "encode_update: " + msg); };
  if (u.values != ValueMode::sign && u.values != ValueMode::int8)
    bad("value mode " + std::to_string(int(u.values)) + " is unknown");
  if (u.values != m.values)
    bad(std::string("the update has ") + mode_name(u.values) + " values but the manifest uses " + mode_name(m.values));
  if (u.manifest_hash != m.hash)
    bad("update.manifest_hash " + hex64(u.manifest_hash) + " is not the manifest's hash " + hex64(m.hash));
  if (std::string why = update_scalars_problem(u.lr, u.decay_factor); !why.empty()) bad(why);
  if (u.offset.size() != m.total_chunks + 1)
    bad("offset has " + std::to_string(u.offset.size()) + " entries; expected total_chunks + 1 = " +
        std::to_string(m.total_chunks + 1));
  if (u.offset[0] != 0) bad("offset[0] is " + std::to_string(u.offset[0]) + "; expected 0");
  if (u.index.size() != u.offset.back() || u.value.size() != u.offset.back())
    bad("offset ends at " + std::to_string(u.offset.back()) + " but index has " + std::to_string(u.index.size()) +
        " and value has " + std::to_string(u.value.size()) + " entries");
  // All offsets first, so every chunk's [offset[c], offset[c+1]) lies inside index/value below.
  for (size_t c = 0; c + 1 < u.offset.size(); ++c)
    if (u.offset[c + 1] < u.offset[c])
      bad("offset decreases at chunk " + std::to_string(c) + " (" + std::to_string(u.offset[c]) + " then " +
          std::to_string(u.offset[c + 1]) + ")");
  const int32_t vmax = max_merged_value(u.values);

  std::vector<uint8_t> out = start_message(MessageKind::update, u.values, u.run_id, u.step, m.hash, u.contributors,
                                           size_t(u.index.size()) * 3 + m.total_chunks / 4 + 16);
  // The update header has three more fields after the common part.
  put_le(out, float_bits(u.lr), 4);
  put_le(out, float_bits(u.decay_factor), 4);
  put_le(out, u.prev_hash, 8);
  BitWriter w(out);
  for (const TensorPlan& t : m.tensors) {
    const uint32_t elems = t.elems();
    const uint32_t* off = u.offset.data() + t.chunk_base;
    // Validate the tensor's chunks and find the value width before writing it.
    unsigned width = 0;
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint32_t n = off[c + 1] - off[c];
      if (n > elems)
        bad("tensor '" + t.name + "' chunk " + std::to_string(c) + " has " + std::to_string(n) +
            " coefficients; the chunk has only " + std::to_string(elems));
      for (uint32_t i = off[c]; i < off[c + 1]; ++i) {
        int32_t v = u.value[i];
        if (v == 0 || v > vmax || v < -vmax)
          bad("tensor '" + t.name + "' chunk " + std::to_string(c) + ": merged value " + std::to_string(v) +
              " is outside the non-zero range -" + std::to_string(vmax) + ".." + std::to_string(vmax));
        if (u.index[i] >= elems)
          bad("tensor '" + t.name + "' chunk " + std::to_string(c) + ": index " + std::to_string(u.index[i]) +
              " is outside the chunk's " + std::to_string(elems) + " coefficients");
        if (i > off[c] && u.index[i] <= u.index[i - 1])
          bad("tensor '" + t.name + "' chunk " + std::to_string(c) + ": indices are not strictly ascending (" +
              std::to_string(u.index[i - 1]) + " then " + std::to_string(u.index[i]) + ")");
        width = std::max(width, signed_width(v));
      }
    }
    const uint64_t n_values = off[t.chunks] - off[0];
    const bool agree = agreement_cheaper(u.value.data() + off[0], n_values, width, vmax);
    w.put(agree ? kAgreementCode : width, kWidthFieldBits);
    const uint32_t mask = width == 32 ? ~0u : (1u << width) - 1;
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint32_t n = off[c + 1] - off[c];
      wire::put_exp_golomb(w, n);
      wire::put_interpolative(w, u.index.data() + off[c], n, elems);
      for (uint32_t i = off[c]; i < off[c + 1]; ++i) {
        if (agree) {
          int32_t v = u.value[i];
          w.put(v < 0 ? 1u : 0u, 1);
          wire::put_exp_golomb(w, uint64_t(vmax - (v < 0 ? -v : v)));
        } else {
          w.put(uint32_t(u.value[i]) & mask, width);
        }
      }
    }
  }
  w.finish();
  finish_message(out, kUpdateHeaderBytes);
  return out;
}

MergedUpdate decode_update(const Manifest& m, std::span<const uint8_t> bytes) {
  Parsed parsed = parse(bytes);
  const MessageHeader& h = parsed.header;
  check_binding(m, h, MessageKind::update);
  if (std::string why = update_scalars_problem(h.lr, h.decay_factor); !why.empty())
    fail(Code::corrupt, "merged update header: " + why);

  MergedUpdate u;
  u.run_id = h.run_id;
  u.step = h.step;
  u.contributors = h.peer_id;
  u.manifest_hash = h.manifest_hash;
  u.values = h.values;
  u.lr = h.lr;
  u.decay_factor = h.decay_factor;
  u.prev_hash = h.prev_hash;
  u.offset.reserve(size_t(m.total_chunks) + 1);
  u.offset.push_back(0);
  // index/value grow chunk by chunk; each value costs >= 1 bit, which is checked against the bits
  // left before a chunk's arrays grow, so their size is bounded by the message's own size.

  BitReader r(parsed.body, parsed.body_bytes);
  Where where{"merged update"};
  const int32_t vmax = max_merged_value(h.values);
  const unsigned wmax = max_width(h.values);
  with_context(where, [&] {
    for (size_t ti = 0; ti < m.tensors.size(); ++ti) {
      const TensorPlan& t = m.tensors[ti];
      where.tensor = &t;
      where.tensor_no = ti;
      where.chunk = -1;
      unsigned width = r.get(kWidthFieldBits);
      const bool agree = width == kAgreementCode;
      if (agree) width = 0;
      else if (width > wmax)
        where.corrupt("value width " + std::to_string(width) + " bits exceeds the " + std::to_string(wmax) +
                      " bits that merged " + mode_name(h.values) + " values need");
      const uint32_t elems = t.elems();
      const uint32_t sign_bit = width == 0 ? 0 : 1u << (width - 1);
      unsigned widest = 0;  // the width the tensor's values need; must equal `width` (one encoding)
      for (uint64_t c = 0; c < t.chunks; ++c) {
        where.chunk = int64_t(c);
        uint64_t n = wire::get_exp_golomb(r);
        if (n > elems)
          where.corrupt("union of " + std::to_string(n) + " coefficients; the chunk has only " +
                        std::to_string(elems));
        if (n > 0 && width == 0 && !agree) where.corrupt("coefficients present but the tensor's value width is 0");
        const uint64_t least = agree ? 2 : width;  // bits per value at the least
        if (n * least > r.remaining())
          where.corrupt("truncated: " + std::to_string(n) + " values of at least " + std::to_string(least) +
                        " bits need more than the " + std::to_string(r.remaining()) + " bits left");
        size_t at = u.index.size();
        u.index.resize(at + n);
        u.value.resize(at + n);
        wire::get_interpolative(r, u.index.data() + at, uint32_t(n), elems);
        int32_t* val = u.value.data() + at;
        for (uint32_t i = 0; i < n; ++i) {
          int32_t v;
          if (agree) {
            bool negative = r.get(1) != 0;
            uint64_t gap = wire::get_exp_golomb(r);
            if (gap >= uint64_t(vmax))
              where.corrupt("merged value distance " + std::to_string(gap) + " from full agreement for coefficient " +
                            std::to_string(u.index[at + i]) + " is outside 0.." + std::to_string(vmax - 1));
            v = (vmax - int32_t(gap)) * (negative ? -1 : 1);
          } else {
            uint32_t raw = r.get(width);
            v = int32_t(raw) - int32_t(raw & sign_bit) * 2;  // two's complement of `width` bits
          }
          if (v == 0 || v > vmax || v < -vmax)
            where.corrupt("merged value " + std::to_string(v) + " for coefficient " +
                          std::to_string(u.index[at + i]) + " is outside the non-zero range -" +
                          std::to_string(vmax) + ".." + std::to_string(vmax));
          widest = std::max(widest, signed_width(v));
          val[i] = v;
        }
        if (u.index.size() > 0xFFFFFFFFu) where.corrupt("more than 2^32 - 1 coefficients in total");
        u.offset.push_back(uint32_t(u.index.size()));
      }
      where.chunk = -1;
      // One encoding per message: the width must be the smallest that fits, and the agreement
      // coding is used exactly when it is strictly cheaper.
      const uint32_t first = u.offset[t.chunk_base];
      const bool cheaper = agreement_cheaper(u.value.data() + first, u.value.size() - first, widest, vmax);
      if (agree && !cheaper)
        where.corrupt("values use the agreement coding where the fixed width of " + std::to_string(widest) +
                      " bits is no larger");
      if (!agree && widest != width)
        where.corrupt("value width " + std::to_string(width) + " is not the smallest that fits the tensor's values (" +
                      std::to_string(widest) + " bits do)");
      if (!agree && cheaper) where.corrupt("values use a fixed width where the agreement coding is smaller");
    }
    where.tensor = nullptr;
    check_end(r, where);
  });
  return u;
}

MessageHeader inspect_message(std::span<const uint8_t> bytes) { return parse(bytes).header; }

}  // namespace distro

// Wire format v3 (docs/protocol.md is the specification; keep the two in step).
#include "wire/codec.hpp"

#define XXH_INLINE_ALL  // header-only xxHash (libxxhash-dev); nothing to link
#include <xxhash.h>

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

// XXH3_64bits (xxHash 0.8, seed 0, default secret) over header and body; written little-endian.
uint64_t checksum(const uint8_t* p, size_t n) { return XXH3_64bits(p, n); }

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
// The encoder and decoder both sum agreement_bits() over a tensor's values and compare.
constexpr unsigned kAgreementCode = 31;

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
  wire::reserve_large(out, header_bytes(kind) + body_estimate + kChecksumBytes);
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

// Where a body decoder is, for error messages: "piece p, tensor 'name' (#t), chunk c: ...".
struct Where {
  static constexpr int64_t kPreamble = -1;  // the piece's exception list / value width
  static constexpr int64_t kEnd = -2;       // after the piece's last chunk (padding, trailing bytes)

  const char* what;  // "peer payload" / "merged update"
  int64_t piece = -1;  // in body order; -1: the body as a whole (the piece table)
  const TensorPlan* tensor = nullptr;
  size_t tensor_no = 0;
  int64_t chunk = kPreamble;  // the chunk index within the tensor, or kPreamble / kEnd

  std::string prefix() const {
    std::string s = std::string(what) + " body";
    if (piece >= 0) s += ", piece " + std::to_string(piece);
    if (tensor) {
      s += ", tensor '" + tensor->name + "' (#" + std::to_string(tensor_no) + ")";
      if (chunk >= 0) s += ", chunk " + std::to_string(chunk);
      else if (chunk == kPreamble) s += ", preamble";
    }
    return s + ": ";
  }
  [[noreturn]] void corrupt(const std::string& msg) const { fail(Code::corrupt, prefix() + msg); }
};

// After a piece's last field only zero padding bits up to the next byte may remain.
void check_end(const BitReader& r, const Where& where) {
  uint64_t used = r.position();
  uint64_t used_bytes = (used + 7) / 8;
  if (used_bytes < r.size_bytes())
    where.corrupt(std::to_string(r.size_bytes() - used_bytes) + " trailing bytes after the last field (the piece is " +
                  std::to_string(r.size_bytes()) + " bytes, its fields end in byte " + std::to_string(used_bytes) + ")");
  if (r.remaining() > 0) {
    BitReader tail = r;
    if (tail.get(unsigned(r.remaining())) != 0) where.corrupt("nonzero padding bits after the last field");
  }
}

// The end of a piece: its arrays trimmed to the `at` coefficients decoded (never growing them; no
// reallocation), then the padding checked.
template <class Value>
void end_piece(const BitReader& r, Where& where, std::vector<uint16_t>& index, std::vector<Value>& value, size_t at) {
  index.resize(at);
  value.resize(at);
  where.chunk = Where::kEnd;
  check_end(r, where);
}

// Runs a piece decoder, turning any corrupt-stream error from the bit layer (truncation, overlong
// code) into one that names the piece, tensor and chunk being decoded.
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

// ---- pieces -----------------------------------------------------------------------------------------
//
// A body is the table of its pieces' byte lengths, then the pieces: every tensor's chunks in runs of
// at most kPieceChunks, each run a byte-aligned bit stream of its own that needs nothing from the
// others (docs/protocol.md section 3). The pieces follow from the manifest alone, so encoders and
// decoders run them as tasks on any number of threads, and the bytes never depend on that number.

struct Piece {
  size_t tensor = 0;
  uint64_t c0 = 0, c1 = 0;  // the tensor's chunks [c0, c1)
  uint64_t pos = 0;         // encode_payload: the piece's first coefficient in index/value
  size_t estimate = 0;      // encoders: bytes to reserve for its stream
};

std::vector<Piece> plan_pieces(const Manifest& m) {
  std::vector<Piece> pieces;
  pieces.reserve(size_t(wire::piece_count(m)));
  for (size_t t = 0; t < m.tensors.size(); ++t)
    for (uint64_t c0 = 0; c0 < m.tensors[t].chunks; c0 += wire::kPieceChunks) {
      Piece pc;
      pc.tensor = t;
      pc.c0 = c0;
      pc.c1 = std::min(m.tensors[t].chunks, c0 + wire::kPieceChunks);
      pieces.push_back(pc);
    }
  return pieces;
}

// The error context of piece `no`, at its preamble.
Where piece_where(const char* what, const Manifest& m, const Piece& pc, size_t no) {
  Where w{what};
  w.piece = int64_t(no);
  w.tensor = &m.tensors[pc.tensor];
  w.tensor_no = pc.tensor;
  return w;
}

// Threads an encoder uses: one for small messages, where starting threads costs what it saves.
unsigned encode_threads(uint64_t coefficients, unsigned requested) {
  return coefficients > wire::kParallelMinCoefficients ? wire::default_threads(requested) : 1;
}
// Threads a decoder uses, by the same rule on the body's size.
unsigned decode_threads(size_t body_bytes, size_t pieces, unsigned requested) {
  return body_bytes >= wire::kParallelMinBodyBytes && pieces > 1 ? wire::default_threads(requested) : 1;
}

// Writes the body after the header already in `out`: the piece table, then the pieces' streams.
// encode(w, piece) writes one piece; it may throw, and then the first failing piece's error is the
// one that surfaces (wire::run_tasks). With one thread the pieces go straight into `out`, through one
// writer that pads each to a byte; with more, each into a buffer of its own, copied into place (in
// parallel too) once all lengths are known.
// A body over 2^32 - 1 bytes, and so any piece that long, is refused by finish_message.
template <class Encode>
void encode_body(std::vector<uint8_t>& out, const std::vector<Piece>& pieces, unsigned threads, const Encode& encode) {
  const size_t table = out.size();
  out.resize(table + 4 * pieces.size());  // patched below
  std::vector<size_t> length(pieces.size());
  if (threads <= 1 || pieces.size() <= 1) {
    BitWriter w(out);
    for (size_t i = 0; i < pieces.size(); ++i) {
      const uint64_t start = w.bits_written(0);
      encode(w, pieces[i]);
      w.align();
      length[i] = size_t((w.bits_written(0) - start) / 8);
    }
    w.finish();
  } else {
    std::vector<std::vector<uint8_t>> streams(pieces.size());
    wire::run_tasks(threads, pieces.size(), [&](size_t i) {
      wire::reserve_large(streams[i], pieces[i].estimate);
      BitWriter w(streams[i]);
      encode(w, pieces[i]);
      w.finish();
    });
    std::vector<size_t> at(pieces.size() + 1, out.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
      length[i] = streams[i].size();
      at[i + 1] = at[i] + length[i];
    }
    wire::reserve_large(out, at.back() + kChecksumBytes);
    out.resize(at.back());
    wire::run_tasks(threads, pieces.size(), [&](size_t i) {
      if (length[i] > 0) std::memcpy(out.data() + at[i], streams[i].data(), length[i]);
      std::vector<uint8_t>().swap(streams[i]);
    });
  }
  for (size_t i = 0; i < pieces.size(); ++i) patch_le(out.data() + table + 4 * i, length[i], 4);
}

// Reads and checks the piece table of a body cut into `pieces` pieces (their number comes from the
// manifest): it must fit in the body, and its lengths must add up to exactly the bytes after it.
// Only then are the lengths used. Returns each piece's bytes, in body order.
std::vector<std::span<const uint8_t>> read_piece_table(const Parsed& parsed, size_t pieces, const char* what) {
  const uint64_t table = 4 * uint64_t(pieces);
  const uint64_t body = parsed.body_bytes;
  if (table > body)
    fail(Code::corrupt, std::string(what) + " body: truncated: the manifest cuts the body into " +
                            std::to_string(pieces) + " pieces, whose length table takes " + std::to_string(table) +
                            " bytes, but the body is only " + std::to_string(body) + " bytes");
  uint64_t sum = 0;
  for (size_t i = 0; i < pieces; ++i) sum += get_le(parsed.body + 4 * i, 4);
  if (sum != body - table)
    fail(Code::corrupt, std::string(what) + " body: the piece table's " + std::to_string(pieces) +
                            " lengths add up to " + std::to_string(sum) + " bytes, but " + std::to_string(body - table) +
                            " bytes follow the table (a " + std::to_string(body) + "-byte body less its " +
                            std::to_string(table) + "-byte table)");
  std::vector<std::span<const uint8_t>> out;
  out.reserve(pieces);
  const uint8_t* p = parsed.body + table;
  for (size_t i = 0; i < pieces; ++i) {
    const size_t n = size_t(get_le(parsed.body + 4 * i, 4));
    out.emplace_back(p, n);
    p += n;
  }
  return out;
}

// Decodes a body's `n` pieces with decode(i, index, value, at), which decodes piece i, appends its
// coefficients to index/value from `at` on and returns their end. On one thread the pieces go
// straight into the message's arrays (with room for `reserve` coefficients first). On several, each
// piece goes into arrays of its own; then check_total(total) runs, the arrays are copied into place
// and place(i, start) runs for each piece with the start of its coefficients (for offsets counted
// from the piece's start), in parallel too. Either way the first bad piece's error is thrown
// (wire::run_tasks), and the message's arrays end up holding exactly the coefficients.
template <class Value, class Decode, class CheckTotal, class Place>
void decode_body(size_t n, unsigned threads, size_t reserve, std::vector<uint16_t>& index, std::vector<Value>& value,
                 const Decode& decode, const CheckTotal& check_total, const Place& place) {
  if (threads <= 1) {
    wire::reserve_large(index, reserve);
    wire::reserve_large(value, reserve);
    size_t at = 0;
    for (size_t i = 0; i < n; ++i) at = decode(i, index, value, at);
    check_total(at);
    return;
  }
  struct Part {
    std::vector<uint16_t> index;
    std::vector<Value> value;
  };
  std::vector<Part> parts(n);
  wire::run_tasks(threads, n, [&](size_t i) { decode(i, parts[i].index, parts[i].value, 0); });
  std::vector<uint64_t> at(n + 1, 0);
  for (size_t i = 0; i < n; ++i) at[i + 1] = at[i] + parts[i].index.size();
  check_total(at.back());
  wire::reserve_large(index, size_t(at.back()));
  wire::reserve_large(value, size_t(at.back()));
  index.resize(size_t(at.back()));
  value.resize(size_t(at.back()));
  wire::run_tasks(threads, n, [&](size_t i) {
    std::copy(parts[i].index.begin(), parts[i].index.end(), index.begin() + ptrdiff_t(at[i]));
    std::copy(parts[i].value.begin(), parts[i].value.end(), value.begin() + ptrdiff_t(at[i]));
    parts[i] = Part();  // frees the piece's arrays now
    place(i, at[i]);
  });
}

}  // namespace

// ---- pieces, public ------------------------------------------------------------------------------

namespace wire {

uint64_t piece_count(const Manifest& m) {
  uint64_t n = 0;
  for (const TensorPlan& t : m.tensors) n += (t.chunks + kPieceChunks - 1) / kPieceChunks;
  return n;
}

}  // namespace wire

// ---- peer payload ---------------------------------------------------------------------------------

std::vector<uint8_t> encode_payload(const Manifest& m, const PeerPayload& p, unsigned threads) {
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
  const unsigned value_bits = p.values == ValueMode::sign ? 1 : 8;
  const unsigned nthreads = encode_threads(p.index.size(), threads);
  std::vector<Piece> pieces = plan_pieces(m);
  // Counts first, so the index/value walks below stay inside the arrays. This pass also finds each
  // piece's first coefficient.
  uint64_t total = 0;
  for (Piece& pc : pieces) {
    const TensorPlan& t = m.tensors[pc.tensor];
    const uint16_t* count = p.count.data() + t.chunk_base;
    pc.pos = total;
    for (uint64_t c = pc.c0; c < pc.c1; ++c) {
      if (count[c] > t.k)
        bad("tensor '" + t.name + "' chunk " + std::to_string(c) + " has count " + std::to_string(count[c]) +
            " > k = " + std::to_string(t.k));
      total += count[c];
    }
    pc.estimate = size_t((total - pc.pos) * (value_bits + 13) / 8 + 16);
  }
  if (p.index.size() != total || p.value.size() != total)
    bad("the counts add up to " + std::to_string(total) + " coefficients but index has " +
        std::to_string(p.index.size()) + " and value has " + std::to_string(p.value.size()));

  size_t estimate = nthreads > 1 ? 0 : size_t(total * (value_bits + 13) / 8 + 5 * pieces.size() + 16);
  std::vector<uint8_t> out = start_message(MessageKind::payload, p.values, p.run_id, p.step, m.hash, p.peer_id, estimate);
  encode_body(out, pieces, nthreads, [&](BitWriter& w, const Piece& pc) {
    const TensorPlan& t = m.tensors[pc.tensor];
    const uint16_t* count = p.count.data() + t.chunk_base;
    // Exception list: the piece's chunks that send fewer than k, as gaps from its first chunk on.
    uint64_t exceptions = 0;
    for (uint64_t c = pc.c0; c < pc.c1; ++c) exceptions += count[c] < t.k;
    wire::put_exp_golomb(w, exceptions);
    uint64_t next = pc.c0;
    for (uint64_t c = pc.c0; c < pc.c1 && exceptions > 0; ++c) {
      if (count[c] >= t.k) continue;
      wire::put_exp_golomb(w, c - next);
      wire::put_truncated(w, count[c], t.k);
      next = c + 1;
      --exceptions;
    }
    const uint32_t elems = t.elems();
    uint64_t pos = pc.pos;  // next coefficient of index/value
    for (uint64_t c = pc.c0; c < pc.c1; ++c) {
      const uint32_t cnt = count[c];
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
  });
  finish_message(out, kPayloadHeaderBytes);
  return out;
}

namespace {

// Decodes piece `no` (`pc`, its bytes `in`) of a payload: its chunks' counts into `count_all` (the
// message's manifest-sized array), its coefficients into index/value from `at` on. Returns the end
// of its coefficients; index/value then hold exactly that many. The arrays grow only as far as the
// piece's bits left can fill (one value bit per coefficient), so memory stays bounded by its size.
size_t decode_payload_piece(const Manifest& m, const Piece& pc, size_t no, std::span<const uint8_t> in, bool sign,
                            uint16_t* count_all, std::vector<uint16_t>& index, std::vector<int8_t>& value, size_t at) {
  const TensorPlan& t = m.tensors[pc.tensor];
  BitReader r(in.data(), in.size());
  Where where = piece_where("peer payload", m, pc, no);
  with_context(where, [&] {
    const uint64_t chunks = pc.c1 - pc.c0;
    uint16_t* count = count_all + t.chunk_base + pc.c0;  // the piece's chunks, from 0
    std::fill(count, count + chunks, uint16_t(t.k));
    uint64_t exceptions = wire::get_exp_golomb(r);
    if (exceptions > chunks)
      where.corrupt(std::to_string(exceptions) + " chunks are listed as sending fewer than k = " + std::to_string(t.k) +
                    " coefficients, but the piece has only " + std::to_string(chunks) + " chunks");
    uint64_t next = 0;
    uint64_t held_back = 0;  // k - count, summed over the exceptions
    for (uint64_t e = 0; e < exceptions; ++e) {
      uint64_t gap = wire::get_exp_golomb(r);
      if (gap >= chunks - next)  // next <= chunks, so no overflow
        where.corrupt("exception " + std::to_string(e) + " names chunk " + std::to_string(pc.c0 + next) + " + " +
                      std::to_string(gap) + ", past the piece's last chunk " + std::to_string(pc.c1 - 1));
      uint64_t c = next + gap;
      count[c] = uint16_t(wire::get_truncated(r, t.k));  // in [0, k) by construction
      held_back += t.k - count[c];
      next = c + 1;
    }
    // Room for the whole piece at once rather than chunk by chunk: its coefficients, as far as the
    // bits left can hold. A truncated piece grows chunk by chunk below and fails where it ends.
    const uint64_t piece_total = chunks * t.k - held_back;
    index.resize(at + size_t(std::min<uint64_t>(piece_total, r.remaining())));
    value.resize(index.size());
    const uint32_t elems = t.elems();
    for (uint64_t c = 0; c < chunks; ++c) {
      const uint32_t cnt = count[c];
      if (cnt == 0) continue;
      where.chunk = int64_t(pc.c0 + c);
      if (at + cnt > index.size()) {
        index.resize(at + cnt);
        value.resize(at + cnt);
      }
      uint16_t* idx = index.data() + at;
      int8_t* val = value.data() + at;
      wire::get_interpolative(r, idx, cnt, elems);
      if (sign) {
        for (uint32_t i = 0; i < cnt; i += 32) {
          const unsigned n = std::min<uint32_t>(32, cnt - i);
          const uint32_t bits = r.get(n);
          for (unsigned j = 0; j < n; ++j) val[i + j] = int8_t(1 - 2 * int((bits >> j) & 1));  // 1 = -1
        }
      } else {
        for (uint32_t i = 0; i < cnt; ++i) {
          uint32_t b = r.get(8);
          if (b == 0x80)
            where.corrupt("int8 value -128 for coefficient " + std::to_string(idx[i]) + "; values lie in -127..127");
          val[i] = int8_t(uint8_t(b));
        }
      }
      at += cnt;
    }
    end_piece(r, where, index, value, at);
  });
  return at;
}

}  // namespace

PeerPayload decode_payload(const Manifest& m, std::span<const uint8_t> bytes, unsigned threads) {
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
  const std::vector<Piece> pieces = plan_pieces(m);
  const std::vector<std::span<const uint8_t>> in = read_piece_table(parsed, pieces.size(), "peer payload");
  p.count.assign(m.total_chunks, 0);  // manifest-sized, not message-sized
  const bool sign = h.values == ValueMode::sign;
  // Every coefficient costs at least one value bit, so the body's size bounds the total as well.
  const uint64_t bound = std::min<uint64_t>(m.total_slots, uint64_t(parsed.body_bytes) * 8);
  decode_body(
      pieces.size(), decode_threads(parsed.body_bytes, pieces.size(), threads), size_t(bound), p.index, p.value,
      [&](size_t i, std::vector<uint16_t>& index, std::vector<int8_t>& value, size_t at) {
        return decode_payload_piece(m, pieces[i], i, in[i], sign, p.count.data(), index, value, at);
      },
      [](uint64_t) {}, [](size_t, uint64_t) {});
  return p;
}

// ---- merged update --------------------------------------------------------------------------------

namespace {

// The agreement coding of one value: its sign bit (1 = negative), then EG(vmax - |v|), written as
// one field (|v| >= 1 and vmax <= 32512, so EG's z <= 14 and the field is at most 30 bits).
inline void put_agreement(BitWriter& w, int32_t v, int32_t vmax) {
  const uint32_t x = uint32_t(vmax - (v < 0 ? -v : v)) + 1;
  const unsigned z = unsigned(std::bit_width(x)) - 1;
  const uint32_t eg = (1u << z) | ((x & ((1u << z) - 1)) << (z + 1));
  w.put(uint32_t(v < 0) | (eg << 1), 2 * z + 2);
}

// Bits of v's agreement coding.
inline uint64_t agreement_bits(int32_t v, int32_t vmax) {
  return 1 + wire::exp_golomb_bits(uint64_t(vmax - (v < 0 ? -v : v)));
}

}  // namespace

std::vector<uint8_t> encode_update(const Manifest& m, const MergedUpdate& u, unsigned threads) {
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
  const unsigned nthreads = encode_threads(u.index.size(), threads);
  std::vector<Piece> pieces = plan_pieces(m);
  for (Piece& pc : pieces) {
    const uint32_t* off = u.offset.data() + m.tensors[pc.tensor].chunk_base;
    pc.estimate = size_t(off[pc.c1] - off[pc.c0]) * 3 + size_t(pc.c1 - pc.c0) / 4 + 16;
  }

  std::vector<uint8_t> out =
      start_message(MessageKind::update, u.values, u.run_id, u.step, m.hash, u.contributors,
                    nthreads > 1 ? 0 : size_t(u.index.size()) * 3 + m.total_chunks / 4 + 5 * pieces.size() + 16);
  // The update header has three more fields after the common part.
  put_le(out, float_bits(u.lr), 4);
  put_le(out, float_bits(u.decay_factor), 4);
  put_le(out, u.prev_hash, 8);
  encode_body(out, pieces, nthreads, [&](BitWriter& w, const Piece& pc) {
    const TensorPlan& t = m.tensors[pc.tensor];
    const uint32_t elems = t.elems();
    const uint32_t* off = u.offset.data() + t.chunk_base;
    // First the piece's chunks are checked, and measured: the width field depends on all the
    // piece's values. The smallest width that fits them, and the agreement coding exactly when it is
    // strictly smaller (docs/protocol.md section 6: one encoding per update).
    unsigned wd = 0;
    uint64_t agree_size = 0;
    for (uint64_t c = pc.c0; c < pc.c1; ++c) {
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
        wd = std::max(wd, signed_width(v));
        agree_size += agreement_bits(v, vmax);
      }
    }
    const bool ag = agree_size < uint64_t(off[pc.c1] - off[pc.c0]) * wd;
    w.put(ag ? kAgreementCode : wd, kWidthFieldBits);
    const uint32_t mask = wd == 32 ? ~0u : (1u << wd) - 1;
    for (uint64_t c = pc.c0; c < pc.c1; ++c) {
      uint32_t n = off[c + 1] - off[c];
      wire::put_exp_golomb(w, n);
      wire::put_interpolative(w, u.index.data() + off[c], n, elems);
      if (ag) {
        for (uint32_t i = off[c]; i < off[c + 1]; ++i) put_agreement(w, u.value[i], vmax);
      } else {
        for (uint32_t i = off[c]; i < off[c + 1]; ++i) w.put(uint32_t(u.value[i]) & mask, wd);
      }
    }
  });
  finish_message(out, kUpdateHeaderBytes);
  return out;
}

namespace {

// Decodes piece `no` (`pc`, its bytes `in`) of a merged update: offset[c + 1] = the end of chunk c's
// coefficients (counted from the start of index/value) for the piece's chunks c, in `offset_all`
// (the message's manifest-sized array), and the coefficients into index/value from `at` on. Returns
// the end of its coefficients (which may pass 2^32 - 1: the caller checks the total); index/value
// then hold exactly that many.
size_t decode_update_piece(const Manifest& m, ValueMode mode, const Piece& pc, size_t no, std::span<const uint8_t> in,
                           uint32_t* offset_all, std::vector<uint16_t>& index, std::vector<int32_t>& value, size_t at) {
  const TensorPlan& t = m.tensors[pc.tensor];
  BitReader r(in.data(), in.size());
  Where where = piece_where("merged update", m, pc, no);
  const int32_t vmax = max_merged_value(mode);
  const unsigned wmax = max_width(mode);
  with_context(where, [&] {
    unsigned width = r.get(kWidthFieldBits);
    const bool agree = width == kAgreementCode;
    if (agree) width = 0;
    else if (width > wmax)
      where.corrupt("value width " + std::to_string(width) + " bits exceeds the " + std::to_string(wmax) +
                    " bits that merged " + mode_name(mode) + " values need");
    const uint32_t elems = t.elems();
    const uint32_t sign_bit = width == 0 ? 0 : 1u << (width - 1);
    const uint64_t least = agree ? 2 : width;  // bits per value at the least
    const size_t first = at;
    int32_t pos_max = 0, neg_max = 0;  // the largest positive value and negative magnitude
    uint64_t agree_size = 0;           // bits the agreement coding of the piece's values takes
    uint32_t* offset = offset_all + t.chunk_base;
    for (uint64_t c = pc.c0; c < pc.c1; ++c) {
      where.chunk = int64_t(c);
      uint64_t n = wire::get_exp_golomb(r);
      if (n > elems)
        where.corrupt("union of " + std::to_string(n) + " coefficients; the chunk has only " + std::to_string(elems));
      if (n > 0 && width == 0 && !agree) where.corrupt("coefficients present but the piece's value width is 0");
      if (n * least > r.remaining())
        where.corrupt("truncated: " + std::to_string(n) + " values of at least " + std::to_string(least) +
                      " bits need more than the " + std::to_string(r.remaining()) + " bits left");
      if (at + n > index.size()) {
        // Grow by an eighth (resize zero-fills, and every page it touches costs a page fault on
        // fresh memory), no further than the bits left can fill (one bit per value at the least).
        size_t want = std::max<size_t>(at + n, std::min<uint64_t>(at + n + at / 8 + 4096, at + r.remaining()));
        index.resize(want);
        value.resize(want);
      }
      uint16_t* idx = index.data() + at;
      int32_t* val = value.data() + at;
      wire::get_interpolative(r, idx, uint32_t(n), elems);
      // The values run on a copy of the reader whose address never escapes, so the compiler keeps
      // it in registers; the rare slow path below syncs it with r.
      BitReader vr = r;
      if (agree) {
        for (uint32_t i = 0; i < n; ++i) {
          // The sign bit and a short EG code, read from one peeked word when all their bits are
          // there; otherwise field by field, which meets any error exactly where it did before.
          bool negative;
          uint64_t gap;
          unsigned bits;
          const uint64_t word = vr.peek_word();  // >= 57 bits
          const unsigned lead = unsigned(std::countr_zero(word >> 1));
          if (lead <= 27 && 2 * lead + 2 <= vr.remaining()) {
            negative = word & 1;
            gap = ((uint64_t(1) << lead) | ((word >> (lead + 2)) & ((uint64_t(1) << lead) - 1))) - 1;
            bits = 2 * lead + 2;
            vr.consume_peeked(bits);
          } else {
            r = vr;
            negative = r.get(1) != 0;
            gap = wire::get_exp_golomb(r);
            vr = r;
            bits = 1 + wire::exp_golomb_bits(gap);
          }
          if (gap >= uint64_t(vmax))
            where.corrupt("merged value distance " + std::to_string(gap) + " from full agreement for coefficient " +
                          std::to_string(idx[i]) + " is outside 0.." + std::to_string(vmax - 1));
          // 1..vmax in magnitude: the value is non-zero and within range. Signs are random, so
          // no branch on them: v = mag or -mag by arithmetic.
          const int32_t flip = -int32_t(negative);
          const int32_t v = ((vmax - int32_t(gap)) ^ flip) - flip;
          pos_max = std::max(pos_max, v);
          neg_max = std::max(neg_max, -v);
          agree_size += bits;
          val[i] = v;
        }
      } else {
        // When all n * width bits are still there (after the indices), no check per value; else
        // checked reads, which fail where they did before.
        const bool all_there = n * width <= vr.remaining();
        const uint64_t mask = (uint64_t(1) << width) - 1;
        for (uint32_t i = 0; i < n; ++i) {
          uint32_t raw;
          if (all_there) {
            raw = uint32_t(vr.peek_word() & mask);
            vr.consume_peeked(width);
          } else {
            raw = vr.get(width);
          }
          const int32_t v = int32_t(raw) - int32_t(raw & sign_bit) * 2;  // two's complement of `width` bits
          if (v == 0 || v > vmax || v < -vmax)
            where.corrupt("merged value " + std::to_string(v) + " for coefficient " + std::to_string(idx[i]) +
                          " is outside the non-zero range -" + std::to_string(vmax) + ".." + std::to_string(vmax));
          pos_max = std::max(pos_max, v);
          neg_max = std::max(neg_max, -v);
          agree_size += agreement_bits(v, vmax);
          val[i] = v;
        }
      }
      r = vr;
      at += n;
      offset[c + 1] = uint32_t(at);  // wraps only past 2^32 - 1 in all, which the caller refuses
    }
    where.chunk = Where::kPreamble;
    // The width the piece's values need (the widest signed_width() of them), which must equal
    // `width`: one encoding per message. The agreement coding is used exactly when it is strictly
    // cheaper.
    const unsigned widest = std::max(pos_max > 0 ? signed_width(pos_max) : 0u, neg_max > 0 ? signed_width(-neg_max) : 0u);
    const bool cheaper = agree_size < uint64_t(at - first) * widest;
    if (agree && !cheaper)
      where.corrupt("values use the agreement coding where the fixed width of " + std::to_string(widest) +
                    " bits is no larger");
    if (!agree && widest != width)
      where.corrupt("value width " + std::to_string(width) + " is not the smallest that fits the piece's values (" +
                    std::to_string(widest) + " bits do)");
    if (!agree && cheaper) where.corrupt("values use a fixed width where the agreement coding is smaller");
    end_piece(r, where, index, value, at);
  });
  return at;
}

}  // namespace

MergedUpdate decode_update(const Manifest& m, std::span<const uint8_t> bytes, unsigned threads) {
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
  const std::vector<Piece> pieces = plan_pieces(m);
  const std::vector<std::span<const uint8_t>> in = read_piece_table(parsed, pieces.size(), "merged update");
  u.offset.assign(size_t(m.total_chunks) + 1, 0);  // manifest-sized
  // index/value: every value costs at least one bit, so a chunk's arrays grow only after checking
  // that its values' bits are still in the piece, and never past what the bits left can hold:
  // memory stays bounded by the message's own size. Updates take 6 to 12 bits per coefficient, so
  // one coefficient per body byte, reserved up front, usually spares any regrowth.
  decode_body(
      pieces.size(), decode_threads(parsed.body_bytes, pieces.size(), threads),
      size_t(std::min<uint64_t>(m.total_params, parsed.body_bytes)), u.index, u.value,
      [&](size_t i, std::vector<uint16_t>& index, std::vector<int32_t>& value, size_t at) {
        if (at == 0) {  // a piece's own arrays (several threads): one coefficient per byte, as above
          const Piece& pc = pieces[i];
          const size_t room = size_t(std::min<uint64_t>((pc.c1 - pc.c0) * m.tensors[pc.tensor].elems(), in[i].size()));
          wire::reserve_large(index, room);
          wire::reserve_large(value, room);
        }
        return decode_update_piece(m, h.values, pieces[i], i, in[i], u.offset.data(), index, value, at);
      },
      [](uint64_t total) {
        if (total > 0xFFFFFFFFu) fail(Code::corrupt, "merged update body: more than 2^32 - 1 coefficients in total");
      },
      [&](size_t i, uint64_t start) {  // a piece's offsets count from its start
        const Piece& pc = pieces[i];
        uint32_t* offset = u.offset.data() + m.tensors[pc.tensor].chunk_base;
        for (uint64_t c = pc.c0; c < pc.c1; ++c) offset[c + 1] += uint32_t(start);
      });
  return u;
}

MessageHeader inspect_message(std::span<const uint8_t> bytes) { return parse(bytes).header; }

}  // namespace distro

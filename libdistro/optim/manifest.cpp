#include "optim/manifest.hpp"

#include <openssl/sha.h>

#include <algorithm>
#include <set>

#include "core/error.hpp"

namespace distro {

uint64_t chunk_edge(uint64_t n, uint64_t s) {
  if (n == 0) return 0;
  if (s >= n) return n;
  for (uint64_t d = s; d > 1; --d)
    if (n % d == 0) return d;
  return 1;
}

namespace {

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}

// Canonical encoding hashed into the manifest hash: a tag, the options, then every tensor's name and
// shape. docs/protocol.md spells it out; changing it changes every hash.
uint64_t manifest_hash(const Manifest& m) {
  std::string buf = "distro-manifest-v1";
  put_u64(buf, m.chunk);
  put_u64(buf, m.topk);
  put_u64(buf, uint64_t(m.values));
  put_u64(buf, m.tensors.size());
  for (const auto& t : m.tensors) {
    put_u64(buf, t.name.size());
    buf += t.name;
    put_u64(buf, t.shape.size());
    for (int64_t d : t.shape) put_u64(buf, uint64_t(d));
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(buf.data()), buf.size(), digest);
  uint64_t h = 0;
  for (int i = 0; i < 8; ++i) h |= uint64_t(digest[i]) << (8 * i);
  return h;
}

}  // namespace

Manifest make_manifest(const std::vector<TensorSpec>& specs, uint32_t chunk, uint32_t topk,
                       ValueMode values) {
  if (chunk < 1 || chunk > kMaxChunk)
    fail(Code::invalid_argument, "chunk edge " + std::to_string(chunk) + " is out of range; expected 1.." +
                                     std::to_string(kMaxChunk));
  if (topk < 1) fail(Code::invalid_argument, "top-k is 0; expected at least 1 coefficient per chunk");
  if (values != ValueMode::sign && values != ValueMode::int8)
    fail(Code::invalid_argument, "value mode " + std::to_string(int(values)) +
                                     " is unknown; expected 1 (sign) or 2 (int8)");
  if (specs.empty()) fail(Code::state, "no tensors are registered; add at least one tensor first");
  if (specs.size() > 0xFFFFFF) fail(Code::size, "too many tensors (" + std::to_string(specs.size()) + ")");

  Manifest m;
  m.chunk = chunk;
  m.topk = topk;
  m.values = values;
  std::set<std::string> names;
  for (const auto& s : specs) {
    if (s.name.empty()) fail(Code::invalid_argument, "a tensor name is empty; expected 1..255 bytes");
    if (s.name.size() > kMaxTensorName)
      fail(Code::invalid_argument, "tensor name '" + s.name.substr(0, 32) + "...' is " +
                                       std::to_string(s.name.size()) + " bytes; expected at most 255");
    if (!names.insert(s.name).second)
      fail(Code::invalid_argument, "tensor name '" + s.name + "' is registered twice; names must be unique");
    if (s.shape.empty() || s.shape.size() > kMaxRank)
      fail(Code::size, "tensor '" + s.name + "' has rank " + std::to_string(s.shape.size()) +
                           "; expected 1.." + std::to_string(kMaxRank));
    TensorPlan t;
    t.name = s.name;
    t.shape = s.shape;
    uint64_t numel = 1;
    for (size_t i = 0; i < s.shape.size(); ++i) {
      int64_t d = s.shape[i];
      if (d <= 0)
        fail(Code::size, "tensor '" + s.name + "' has dimension " + std::to_string(i) + " = " +
                             std::to_string(d) + "; expected a positive size");
      if (uint64_t(d) > kMaxTensorElements / numel)
        fail(Code::size, "tensor '" + s.name + "' has more than 2^40 elements");
      numel *= uint64_t(d);
    }
    t.numel = numel;
    size_t r = s.shape.size();
    t.cols = uint64_t(s.shape[r - 1]);
    t.rows = r >= 2 ? uint64_t(s.shape[r - 2]) : 1;
    t.batch = numel / (t.rows * t.cols);
    t.n1 = uint32_t(chunk_edge(t.rows, chunk));
    t.n2 = uint32_t(chunk_edge(t.cols, chunk));
    t.chunks = t.batch * (t.rows / t.n1) * (t.cols / t.n2);
    t.k = std::min<uint32_t>(topk, t.elems());
    t.chunk_base = m.total_chunks;
    t.slot_base = m.total_slots;
    m.total_chunks += t.chunks;
    m.total_slots += t.chunks * t.k;
    m.total_params += numel;
    m.tensors.push_back(std::move(t));
  }
  m.hash = manifest_hash(m);
  return m;
}

}  // namespace distro

// Writes (or checks) the seed corpus of the fuzz targets: a few valid messages of each kind against
// the fixed fuzz manifest, plus a few malformed ones. Deterministic: raw mt19937_64 output only.
//   distro_fuzz_corpus write tests/fuzz/corpus    regenerate after a format change
//   distro_fuzz_corpus check tests/fuzz/corpus    (ctest) fail if the committed seeds are stale
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "wire/messages.hpp"

using namespace distro;

namespace {

struct Seed {
  std::string dir, name;
  std::vector<uint8_t> bytes;
};

std::vector<uint16_t> subset(std::mt19937_64& rng, uint32_t n, uint32_t k) {
  std::vector<uint16_t> s;
  while (s.size() < k) {
    uint16_t v = uint16_t(rng() % n);
    bool seen = false;
    for (uint16_t x : s) seen |= x == v;
    if (!seen) s.push_back(v);
  }
  std::sort(s.begin(), s.end());
  return s;
}

PeerPayload payload(std::mt19937_64& rng, const Manifest& m, unsigned short_every, bool empty) {
  PeerPayload p;
  p.run_id = 7;
  p.step = 100;
  p.peer_id = 3;
  p.manifest_hash = m.hash;
  p.values = m.values;
  unsigned i = 0;
  for (const TensorPlan& t : m.tensors)
    for (uint64_t c = 0; c < t.chunks; ++c, ++i) {
      uint32_t cnt = empty ? 0 : t.k;
      if (!empty && short_every && i % short_every == 0) cnt = uint32_t(rng() % t.k);
      p.count.push_back(uint16_t(cnt));
      for (uint16_t x : subset(rng, t.elems(), cnt)) {
        p.index.push_back(x);
        p.value.push_back(m.values == ValueMode::sign ? int8_t(rng() & 1 ? -1 : 1) : int8_t(int(rng() % 255) - 127));
      }
    }
  return p;
}

MergedUpdate update(std::mt19937_64& rng, const Manifest& m, bool empty, bool dense) {
  MergedUpdate u;
  u.run_id = 7;
  u.step = 100;
  u.contributors = 5;
  u.manifest_hash = m.hash;
  u.values = m.values;
  u.lr = 0.0005f;
  u.decay_factor = 0.99999f;
  u.prev_hash = 0x0123456789ABCDEFull;
  u.offset.push_back(0);
  int32_t vmax = max_merged_value(m.values);
  for (const TensorPlan& t : m.tensors)
    for (uint64_t c = 0; c < t.chunks; ++c) {
      uint32_t n = empty ? 0 : dense && c == 0 ? t.elems() : uint32_t(rng() % (t.k * 2 + 1));
      if (n > t.elems()) n = t.elems();
      for (uint16_t x : subset(rng, t.elems(), n)) {
        int32_t v = 0;
        while (v == 0) v = int32_t(rng() % uint64_t(2 * vmax + 1)) - vmax;
        u.index.push_back(x);
        u.value.push_back(v);
      }
      u.offset.push_back(uint32_t(u.index.size()));
    }
  return u;
}

std::vector<Seed> seeds() {
  std::mt19937_64 rng(20240601);
  const Manifest ms = fuzz::manifest(ValueMode::sign), m8 = fuzz::manifest(ValueMode::int8);
  std::vector<Seed> out;
  auto add = [&](const char* dir, const char* name, std::vector<uint8_t> b) { out.push_back({dir, name, std::move(b)}); };

  auto p_full = encode_payload(ms, payload(rng, ms, 0, false));
  add("payload", "valid-sign-full", p_full);
  add("payload", "valid-sign-short-chunks", encode_payload(ms, payload(rng, ms, 3, false)));
  add("payload", "valid-sign-empty", encode_payload(ms, payload(rng, ms, 0, true)));
  add("payload", "valid-int8", encode_payload(m8, payload(rng, m8, 4, false)));
  auto cut = p_full;
  cut.resize(cut.size() / 2);
  add("payload", "bad-truncated", cut);
  auto flip = p_full;
  flip[flip.size() - 3] ^= 0x04;
  add("payload", "bad-checksum", flip);
  auto ver = p_full;
  ver[4] = 1;  // version 1, whose body had no piece table
  fuzz::reseal(ver);
  add("payload", "bad-version", ver);
  auto trail = p_full;
  trail.insert(trail.end() - 8, uint8_t(0));
  fuzz::reseal(trail);
  add("payload", "bad-trailing-byte", trail);
  auto table = p_full;
  table[40] += 1;  // the first piece's length: the table no longer adds up to the body
  fuzz::reseal(table);
  add("payload", "bad-piece-table", table);

  auto u_sign = encode_update(ms, update(rng, ms, false, false));
  add("update", "valid-sign", u_sign);
  add("update", "valid-int8", encode_update(m8, update(rng, m8, false, false)));
  add("update", "valid-empty", encode_update(ms, update(rng, ms, true, false)));
  add("update", "valid-dense-chunk", encode_update(ms, update(rng, ms, false, true)));
  auto ucut = u_sign;
  ucut.resize(ucut.size() - 12);
  add("update", "bad-truncated", ucut);
  auto ukind = u_sign;
  ukind[6] = 1;  // says payload; the update decoder must refuse it
  fuzz::reseal(ukind);
  add("update", "bad-kind", ukind);
  return out;
}

// The hand-written fuzz plan must match what make_manifest builds (all but the hash).
bool plan_matches() {
  Manifest a = fuzz::manifest(ValueMode::sign);
  Manifest b = make_manifest(fuzz::specs(), fuzz::kChunk, fuzz::kTopk, ValueMode::sign);
  bool ok = a.tensors.size() == b.tensors.size() && a.total_chunks == b.total_chunks &&
            a.total_slots == b.total_slots && a.total_params == b.total_params;
  for (size_t i = 0; ok && i < a.tensors.size(); ++i) {
    const TensorPlan &x = a.tensors[i], &y = b.tensors[i];
    ok = x.name == y.name && x.shape == y.shape && x.numel == y.numel && x.batch == y.batch && x.rows == y.rows &&
         x.cols == y.cols && x.n1 == y.n1 && x.n2 == y.n2 && x.chunks == y.chunks && x.k == y.k &&
         x.chunk_base == y.chunk_base && x.slot_base == y.slot_base;
  }
  if (!ok) std::fprintf(stderr, "the fuzz manifest (tests/fuzz/fuzz_common.hpp) differs from make_manifest's plan\n");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc != 3 || (std::string(argv[1]) != "write" && std::string(argv[1]) != "check")) {
    std::fprintf(stderr, "usage: %s write|check CORPUS_DIR\n", argv[0]);
    return 2;
  }
  bool write = std::string(argv[1]) == "write";
  fs::path root(argv[2]);
  if (!plan_matches()) return 1;
  int stale = 0;
  size_t total = 0;
  for (const Seed& s : seeds()) {
    fs::path p = root / s.dir / (s.name + ".bin");
    total += s.bytes.size();
    if (write) {
      fs::create_directories(p.parent_path());
      std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(s.bytes.data()), std::streamsize(s.bytes.size()));
      continue;
    }
    std::ifstream in(p, std::ios::binary);
    std::vector<uint8_t> have((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.is_open() || have != s.bytes) {
      std::fprintf(stderr, "stale or missing seed: %s\n", p.string().c_str());
      ++stale;
    }
  }
  if (stale) {
    std::fprintf(stderr, "%d seeds differ; regenerate with: distro_fuzz_corpus write tests/fuzz/corpus\n", stale);
    return 1;
  }
  std::printf("%s %zu bytes of seeds under %s\n", write ? "wrote" : "checked", total, root.string().c_str());
  return 0;
}

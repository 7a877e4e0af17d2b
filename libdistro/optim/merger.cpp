#include "optim/merger.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "optim/chunk_math.hpp"
#include "wire/codec.hpp"

namespace distro {

Merger::Merger(Manifest manifest, uint64_t run_id, uint64_t step)
    : manifest_(std::move(manifest)), run_id_(run_id), step_(step) {}

void Merger::add(std::span<const uint8_t> bytes) { add(decode_payload(manifest_, bytes)); }

void Merger::add(PeerPayload p) {
  if (finished_) fail(Code::state, "this merger is finished; create a new one for the next step");
  if (p.run_id != run_id_)
    fail(Code::mismatch, "payload is for run " + std::to_string(p.run_id) + "; this merger is for run " + std::to_string(run_id_));
  if (p.step != step_)
    fail(Code::mismatch, "payload is for step " + std::to_string(p.step) + "; this merger is for step " + std::to_string(step_));
  if (p.manifest_hash != manifest_.hash || p.values != manifest_.values)
    fail(Code::mismatch, "payload was made for another manifest or value mode");
  if (p.count.size() != manifest_.total_chunks)
    fail(Code::corrupt, "payload covers " + std::to_string(p.count.size()) + " chunks; the manifest has " +
                            std::to_string(manifest_.total_chunks));
  for (const auto& q : payloads_)
    if (q.peer_id == p.peer_id)
      fail(Code::state, "a payload from peer " + std::to_string(p.peer_id) + " was already added for step " +
                            std::to_string(step_));
  payloads_.push_back(std::move(p));
}

MergedUpdate Merger::finish(float lr, float weight_decay, uint64_t prev_hash) {
  if (finished_) fail(Code::state, "this merger is already finished");
  if (!std::isfinite(lr) || lr < 0.0f)
    fail(Code::invalid_argument, "learning rate is " + std::to_string(lr) + "; expected a finite value >= 0");
  if (!std::isfinite(weight_decay) || weight_decay < 0.0f)
    fail(Code::invalid_argument, "weight decay is " + std::to_string(weight_decay) + "; expected a finite value >= 0");
  // One float32 multiply and one subtract, here only; replicas take the factor from the update.
  const float prod = lr * weight_decay;
  const float decay_factor = 1.0f - prod;
  if (!(decay_factor > 0.0f))
    fail(Code::invalid_argument, "learning rate times weight decay is " + std::to_string(prod) +
                                     "; expected less than 1, so that the decay factor 1 - lr * wd stays positive");
  MergedUpdate u;
  u.run_id = run_id_;
  u.step = step_;
  u.contributors = uint32_t(payloads_.size());
  u.manifest_hash = manifest_.hash;
  u.values = manifest_.values;
  u.lr = lr;
  u.decay_factor = decay_factor;
  u.prev_hash = prev_hash;
  u.offset.assign(manifest_.total_chunks + 1, 0);

  // Cursor into each payload's concatenated lists; chunks are visited in order.
  std::vector<size_t> cursor(payloads_.size(), 0);
  std::vector<std::pair<uint16_t, int32_t>> entries;
  for (uint64_t c = 0; c < manifest_.total_chunks; ++c) {
    entries.clear();
    for (size_t i = 0; i < payloads_.size(); ++i) {
      const PeerPayload& p = payloads_[i];
      for (uint16_t s = 0; s < p.count[c]; ++s)
        entries.emplace_back(p.index[cursor[i] + s], p.value[cursor[i] + s]);
      cursor[i] += p.count[c];
    }
    std::sort(entries.begin(), entries.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t a = 0; a < entries.size();) {
      size_t b = a;
      int64_t sum = 0;
      for (; b < entries.size() && entries[b].first == entries[a].first; ++b) sum += entries[b].second;
      int32_t mean = fixed_point_mean(sum, int64_t(b - a));
      if (mean != 0) {
        u.index.push_back(entries[a].first);
        u.value.push_back(mean);
      }
      a = b;
    }
    u.offset[c + 1] = uint32_t(u.index.size());
  }
  finished_ = true;
  return u;
}

}  // namespace distro

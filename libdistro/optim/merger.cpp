#include "optim/merger.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <memory>

#include "core/error.hpp"
#include "optim/chunk_math.hpp"
#include "wire/codec.hpp"

namespace distro {

Merger::Merger(Manifest manifest, uint64_t run_id, uint64_t step)
    : manifest_(std::move(manifest)), run_id_(run_id), step_(step) {}

void Merger::add(std::span<const uint8_t> bytes, unsigned threads) { add(decode_payload(manifest_, bytes, threads)); }

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

// Merges chunks [c0, c1): cursor[i] is where the range starts in payload i's lists. Writes the
// union of each chunk (ascending indices, non-zero fixed-point means) to index/value and, for each
// chunk c, the number written so far to ends[c]; returns that number.
//
// A chunk's entries are ascending within each payload. When one payload alone sent coefficients in
// the chunk (always so with one payload), they are the union as they are. Otherwise the entries are
// summed into per-index accumulators and a two-level bitmap of the indices seen, whose set bits,
// read in order, give the union sorted without sorting (cost: the entries plus elems / 4096 words).
size_t Merger::merge_range(uint64_t c0, uint64_t c1, const uint64_t* cursor, uint16_t* index, int32_t* value,
                           uint32_t* ends) const {
  const size_t np = payloads_.size();
  std::vector<uint64_t> cur(cursor, cursor + np);
  std::vector<int64_t> sum;     // per index of the chunk: sum of the values
  std::vector<uint32_t> cnt;    //                         payloads that sent it
  std::vector<uint64_t> seen;   // bit per index: sent by someone
  std::vector<uint64_t> words;  // bit per word of `seen`: not zero
  size_t n = 0;
  // The tensor holding c0 (tensors are few: a linear walk is fine).
  size_t t = 0;
  while (t + 1 < manifest_.tensors.size() && manifest_.tensors[t].chunk_base + manifest_.tensors[t].chunks <= c0) ++t;
  for (uint64_t c = c0; c < c1; ++c) {
    while (manifest_.tensors[t].chunk_base + manifest_.tensors[t].chunks <= c) ++t;
    size_t senders = 0, sender = 0;
    for (size_t i = 0; i < np; ++i)
      if (payloads_[i].count[c] != 0) ++senders, sender = i;
    if (senders == 1) {
      const PeerPayload& p = payloads_[sender];
      const uint16_t k = p.count[c];
      for (uint16_t s = 0; s < k; ++s) {
        const int32_t mean = int32_t(p.value[cur[sender] + s]) * 256;  // fixed_point_mean(v, 1)
        if (mean != 0) {  // an int8 value may be 0
          index[n] = p.index[cur[sender] + s];
          value[n++] = mean;
        }
      }
      cur[sender] += k;
    } else if (senders > 1) {
      const uint32_t elems = manifest_.tensors[t].elems();
      if (sum.size() < elems) {
        sum.assign(elems, 0);
        cnt.assign(elems, 0);
        seen.assign((elems + 63) / 64, 0);
        words.assign((seen.size() + 63) / 64, 0);
      }
      for (size_t i = 0; i < np; ++i) {
        const PeerPayload& p = payloads_[i];
        const uint16_t k = p.count[c];
        for (uint16_t s = 0; s < k; ++s) {
          const uint16_t x = p.index[cur[i] + s];
          sum[x] += p.value[cur[i] + s];
          ++cnt[x];
          seen[x >> 6] |= uint64_t(1) << (x & 63);
          words[x >> 12] |= uint64_t(1) << ((x >> 6) & 63);
        }
        cur[i] += k;
      }
      for (size_t g = 0; g < (elems + 4095) / 4096; ++g) {
        for (uint64_t wb = words[g]; wb != 0; wb &= wb - 1) {
          const size_t w = g * 64 + size_t(std::countr_zero(wb));
          for (uint64_t b = seen[w]; b != 0; b &= b - 1) {
            const size_t x = w * 64 + size_t(std::countr_zero(b));
            // c = 1 is the common case (one payload chose the coefficient); its mean is exact.
            const int32_t mean = cnt[x] == 1 ? int32_t(sum[x] * 256) : fixed_point_mean(sum[x], cnt[x]);
            if (mean != 0) {
              index[n] = uint16_t(x);
              value[n++] = mean;
            }
            sum[x] = 0;
            cnt[x] = 0;
          }
          seen[w] = 0;
        }
        words[g] = 0;
      }
    }
    ends[c] = uint32_t(n);
  }
  return n;
}

MergedUpdate Merger::finish(float lr, float weight_decay, uint64_t prev_hash, unsigned requested_threads) {
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

  // Chunks merge independently, so ranges of chunks merge on separate threads, each into arrays of
  // its own, which are then copied into place: the result does not depend on the thread count.
  const size_t np = payloads_.size();
  uint64_t coefficients = 0;
  for (const PeerPayload& p : payloads_) coefficients += p.index.size();
  const unsigned threads = coefficients > wire::kParallelMinCoefficients ? wire::default_threads(requested_threads) : 1;
  const uint64_t chunks = manifest_.total_chunks;
  // A few ranges per thread, so that an unlucky range does not hold up the others; one range for one thread.
  const size_t ranges =
      threads == 1 ? 1 : size_t(std::max<uint64_t>(1, std::min<uint64_t>(chunks, uint64_t(threads) * 4)));
  auto range_begin = [&](size_t r) { return chunks * r / ranges; };

  // Pass 1: where each range starts in every payload's lists (prefix sums of the counts), and the
  // most coefficients its union can hold (the sum of its counts).
  std::vector<uint64_t> start(ranges * np, 0), bound(ranges, 0);
  wire::run_tasks(threads, ranges, [&](size_t r) {
    for (size_t i = 0; i < np; ++i) {
      const uint16_t* count = payloads_[i].count.data();
      uint64_t sum = 0;
      for (uint64_t c = range_begin(r); c < range_begin(r + 1); ++c) sum += count[c];
      start[r * np + i] = sum;
      bound[r] += sum;
    }
  });
  for (size_t i = 0; i < np; ++i) {  // range sums to exclusive prefix sums
    uint64_t at = 0;
    for (size_t r = 0; r < ranges; ++r) {
      const uint64_t here = start[r * np + i];
      start[r * np + i] = at;
      at += here;
    }
  }

  if (ranges == 1) {  // one thread: straight into the update, no copy
    wire::reserve_large(u.index, bound[0]);
    wire::reserve_large(u.value, bound[0]);
    u.index.resize(bound[0]);
    u.value.resize(bound[0]);
    const size_t n = merge_range(0, chunks, start.data(), u.index.data(), u.value.data(), u.offset.data() + 1);
    u.index.resize(n);  // drops what zero means left unused (no reallocation)
    u.value.resize(n);
    finished_ = true;
    return u;
  }

  // Pass 2: merge each range. offset[c + 1] gets the count within the range, fixed up in pass 3.
  struct Out {
    std::unique_ptr<uint16_t[]> index;  // uninitialised: sized by the bound, filled up to n
    std::unique_ptr<int32_t[]> value;
    size_t n = 0;
  };
  std::vector<Out> out(ranges);
  wire::run_tasks(threads, ranges, [&](size_t r) {
    Out& o = out[r];
    o.index.reset(new uint16_t[bound[r]]);
    o.value.reset(new int32_t[bound[r]]);
    wire::advise_huge_pages(o.index.get(), bound[r] * sizeof(uint16_t));
    wire::advise_huge_pages(o.value.get(), bound[r] * sizeof(int32_t));
    o.n = merge_range(range_begin(r), range_begin(r + 1), start.data() + r * np, o.index.get(), o.value.get(),
                      u.offset.data() + 1);
  });

  // Pass 3: copy the ranges into place and make their offsets global.
  std::vector<size_t> base(ranges + 1, 0);
  for (size_t r = 0; r < ranges; ++r) base[r + 1] = base[r] + out[r].n;
  wire::reserve_large(u.index, base[ranges]);
  wire::reserve_large(u.value, base[ranges]);
  u.index.resize(base[ranges]);
  u.value.resize(base[ranges]);
  wire::run_tasks(threads, ranges, [&](size_t r) {
    std::copy_n(out[r].index.get(), out[r].n, u.index.data() + base[r]);
    std::copy_n(out[r].value.get(), out[r].n, u.value.data() + base[r]);
    for (uint64_t c = range_begin(r); c < range_begin(r + 1); ++c) u.offset[c + 1] += uint32_t(base[r]);
    out[r] = Out();
  });
  finished_ = true;
  return u;
}

}  // namespace distro

#include "data/sampler.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <mutex>
#include <string>

#include "core/error.hpp"

namespace distro {
namespace {

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kSamplerSalt = 0x73616D706C657231ull;  // "sampler1": bump to change the scheme

uint64_t finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// splitmix64: a 64-bit counter stepped by the golden gamma, each value finalised. Fully specified by
// integer arithmetic, so every platform draws the same numbers.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t next() {
    state_ += kGoldenGamma;
    return finalize(state_);
  }
  // Uniform in [0, n), n >= 1: draws below 2^64 mod n are rejected so the modulo has no bias.
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;
    for (;;) {
      const uint64_t r = next();
      if (r >= threshold) return r % n;
    }
  }

 private:
  uint64_t state_;
};

uint64_t epoch_stream_seed(uint64_t seed, uint64_t e) {
  return finalize(finalize(seed ^ kSamplerSalt) + (e + 1) * kGoldenGamma);
}

[[noreturn]] void bad(const std::string& msg) { fail(Code::invalid_argument, "sampler: " + msg); }

}  // namespace

struct Sampler::Cache {
  std::mutex mu;
  std::array<std::shared_ptr<const Epoch>, 2> slots;  // slots[0] is the most recently used
};

Sampler::Sampler(const Dataset& data, uint64_t seed, int T)
    : data_(&data), seed_(seed), T_(T), cache_(std::make_unique<Cache>()) {
  data.check_sequence_length(T);
  const uint64_t n = data.train_size();
  const uint64_t w = static_cast<uint64_t>(T) + 1;
  windows_ = std::max<uint64_t>(1, (n - static_cast<uint64_t>(T)) / w);
  if (windows_ > std::numeric_limits<uint32_t>::max()) {
    fail(Code::size, "sampler: " + std::to_string(windows_) + " windows of " + std::to_string(w) +
                         " tokens per epoch exceed 2^32 - 1; use a longer sequence length or split the data");
  }
  max_offset_ = std::min<uint64_t>(static_cast<uint64_t>(T), n - windows_ * w);
  const uint64_t nv = data.val_size();
  val_windows_ = nv >= w ? (nv - 1) / static_cast<uint64_t>(T) : 0;
}

Sampler::~Sampler() = default;
Sampler::Sampler(Sampler&&) noexcept = default;
Sampler& Sampler::operator=(Sampler&&) noexcept = default;

std::shared_ptr<const Sampler::Epoch> Sampler::epoch(uint64_t e) const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  auto& slots = cache_->slots;
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] && slots[i]->index == e) {
      if (i != 0) std::swap(slots[0], slots[i]);
      return slots[0];
    }
  }
  auto ep = std::make_shared<Epoch>();
  ep->index = e;
  SplitMix64 rng(epoch_stream_seed(seed_, e));
  ep->offset = rng.below(max_offset_ + 1);
  ep->perm.resize(static_cast<size_t>(windows_));
  for (uint64_t i = 0; i < windows_; ++i) ep->perm[i] = static_cast<uint32_t>(i);
  for (uint64_t i = windows_ - 1; i > 0; --i) {
    const uint64_t k = rng.below(i + 1);
    std::swap(ep->perm[i], ep->perm[k]);
  }
  slots[1] = std::move(slots[0]);
  slots[0] = std::move(ep);
  return slots[0];
}

uint64_t Sampler::epoch_offset(uint64_t e) const { return epoch(e)->offset; }

uint64_t Sampler::sample_index(uint64_t step, uint32_t peer, uint32_t peers, int B, int b) {
  if (B < 1) bad("batch size " + std::to_string(B) + " must be >= 1");
  if (peers == 0) bad("peers must be >= 1");
  if (peer >= peers) bad("peer " + std::to_string(peer) + " is out of range for " + std::to_string(peers) + " peers");
  if (b < 0 || b >= B) bad("sequence " + std::to_string(b) + " is out of range for batch size " + std::to_string(B));
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  const auto ub = static_cast<uint64_t>(B);
  // j = (step * peers + peer) * B + b, refused where it would pass 2^64.
  if (step > (kMax - peer) / peers || (step * peers + peer) > (kMax - static_cast<uint64_t>(b)) / ub) {
    bad("step " + std::to_string(step) + " is too large for " + std::to_string(peers) + " peers x batch " +
        std::to_string(B));
  }
  return (step * peers + peer) * ub + static_cast<uint64_t>(b);
}

uint64_t Sampler::train_window_start(uint64_t j) const {
  const auto ep = epoch(j / windows_);
  return ep->offset + static_cast<uint64_t>(ep->perm[j % windows_]) * (static_cast<uint64_t>(T_) + 1);
}

uint64_t Sampler::val_window_start(uint64_t v) const {
  if (v >= val_windows_) {
    bad("validation window " + std::to_string(v) + " is out of range (there are " + std::to_string(val_windows_) +
        ")");
  }
  return data_->val_begin() + v * static_cast<uint64_t>(T_);
}

void Sampler::fill(uint64_t start, int b, int32_t* tokens, int32_t* targets) const {
  const uint16_t* src = data_->tokens().data() + start;
  const size_t at = static_cast<size_t>(b) * static_cast<size_t>(T_);
  for (int t = 0; t < T_; ++t) {
    tokens[at + t] = src[t];
    targets[at + t] = src[t + 1];
  }
}

void Sampler::train_batch(uint64_t step, uint32_t peer, uint32_t peers, int B, int32_t* tokens,
                          int32_t* targets) const {
  if (tokens == nullptr || targets == nullptr) bad("tokens and targets must not be null");
  const uint64_t j0 = sample_index(step, peer, peers, B, B - 1) - static_cast<uint64_t>(B - 1);
  for (int b = 0; b < B; ++b) fill(train_window_start(j0 + static_cast<uint64_t>(b)), b, tokens, targets);
}

uint64_t Sampler::val_batches(int B) const {
  if (B < 1) bad("batch size " + std::to_string(B) + " must be >= 1");
  return val_windows_ / static_cast<uint64_t>(B);
}

void Sampler::val_batch(uint64_t i, int B, int32_t* tokens, int32_t* targets) const {
  if (tokens == nullptr || targets == nullptr) bad("tokens and targets must not be null");
  const uint64_t n = val_batches(B);
  if (i >= n) {
    bad("validation batch " + std::to_string(i) + " is out of range: there are " + std::to_string(n) +
        " batches of " + std::to_string(B) + " sequences of " + std::to_string(T_) + " tokens");
  }
  for (int b = 0; b < B; ++b) {
    fill(val_window_start(i * static_cast<uint64_t>(B) + static_cast<uint64_t>(b)), b, tokens, targets);
  }
}

}  // namespace distro

// The deterministic sampler: which token windows a peer trains on at a step, as a pure function of
// (seed, step, peer, peers, B). No state advances between calls, so batches can be asked for out of
// order or twice, and a run resumed from a checkpoint sees exactly the batches it would have seen.
//
// Training windows (the scheme is part of a run's reproducibility: changing it changes every batch).
//   n = training tokens, T = sequence length. A window is T + 1 consecutive tokens (T inputs, and the
//   same positions shifted by one as targets). Each epoch cuts the training part into
//       W = max(1, (n - T) / (T + 1))
//   windows with stride T + 1, so the windows of one epoch share no token at all:
//       start(e, w) = offset_e + w * (T + 1),   w in [0, W),
//   offset_e in [0, min(T, n - W * (T + 1))] (the full [0, T] once n >= 2T + 1), so later epochs see
//   windows shifted against earlier ones.
//   Global sample index j = (step * peers + peer) * B + b  (b in [0, B)) lies in epoch e = j / W at slot
//   j % W, and slot s of epoch e is window perm_e[s].
//   perm_e and offset_e come from one splitmix64 stream seeded by (seed, e): offset_e is its first
//   bounded draw, perm_e the Fisher-Yates shuffle of 0..W-1 (i from W-1 down to 1, swap i with a draw
//   in [0, i]) with the following draws. Bounded draws reject the low values that would bias the
//   modulo, so the result is identical on every platform and standard library. Exactly: with f the
//   splitmix64 finaliser and g = 0x9E3779B97F4A7C15, the stream starts at
//   f(f(seed ^ 0x73616D706C657231) + (e + 1) * g), each draw adds g to the state and returns f(state),
//   and a draw in [0, m) takes the first r >= (2^64 - m) mod m and returns r mod m.
//   Consequences: within an epoch no two samples share a token (so peers at one step, and all steps of
//   the epoch, get disjoint windows); B and peers are part of the run's configuration (changing them
//   re-maps j); a step that straddles the end of an epoch mixes windows of two epochs.
//
// Validation windows are fixed and sequential: window v starts at val_begin + v * T (stride T, so the
// inputs of consecutive windows tile the validation part and each validation token after the first
// is a target exactly once); batch i holds windows i*B .. i*B + B - 1. They never touch training
// tokens.
//
// The Sampler keeps a pointer to the Dataset: the Dataset must outlive it and must not be moved.
// Const methods are safe to call from several threads (the per-epoch permutation cache is locked).
// A Sampler moves but does not copy.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "data/dataset.hpp"

namespace distro {

class Sampler {
 public:
  // Throws Error(invalid_argument) when T < 1 or either part of the dataset is shorter than T + 1
  // tokens (Dataset::check_sequence_length), Error(size) when an epoch would exceed 2^32 windows.
  Sampler(const Dataset& data, uint64_t seed, int T);
  ~Sampler();
  Sampler(Sampler&&) noexcept;
  Sampler& operator=(Sampler&&) noexcept;

  // Fills tokens[b * T + t] and targets[b * T + t] (= the token after tokens[b * T + t]) for the B
  // sequences of this (step, peer). Throws Error(invalid_argument) for B < 1, peers == 0,
  // peer >= peers, null buffers, or indices past 2^64.
  void train_batch(uint64_t step, uint32_t peer, uint32_t peers, int B, int32_t* tokens, int32_t* targets) const;

  // Number of non-overlapping validation batches of B sequences (0 without a validation part).
  uint64_t val_batches(int B) const;
  // The i-th validation batch, i < val_batches(B); throws Error(invalid_argument) otherwise.
  void val_batch(uint64_t i, int B, int32_t* tokens, int32_t* targets) const;

  // The pieces of the scheme above, for the trainer's reports and for tests.
  int seq_len() const { return T_; }
  uint64_t seed() const { return seed_; }
  uint64_t windows_per_epoch() const { return windows_; }
  uint64_t val_windows() const { return val_windows_; }
  // Global sample index j; throws Error(invalid_argument) as train_batch does.
  static uint64_t sample_index(uint64_t step, uint32_t peer, uint32_t peers, int B, int b);
  // Epoch of global sample j, and the index into Dataset::tokens() where its window starts.
  uint64_t epoch_of(uint64_t j) const { return j / windows_; }
  uint64_t train_window_start(uint64_t j) const;
  uint64_t epoch_offset(uint64_t epoch) const;
  uint64_t val_window_start(uint64_t v) const;

 private:
  struct Epoch {
    uint64_t index = 0;
    uint64_t offset = 0;
    std::vector<uint32_t> perm;
  };
  std::shared_ptr<const Epoch> epoch(uint64_t e) const;
  void fill(uint64_t start, int b, int32_t* tokens, int32_t* targets) const;

  const Dataset* data_;
  uint64_t seed_;
  int T_;
  uint64_t windows_ = 0;
  uint64_t max_offset_ = 0;
  uint64_t val_windows_ = 0;
  struct Cache;                   // the two epochs asked for last, behind a mutex
  std::unique_ptr<Cache> cache_;  // (a pointer, so that the Sampler can move)
};

}  // namespace distro

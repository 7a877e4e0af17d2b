// The run's stream of batches and which of them are still owed (docs/network.md, "batches").
//
// Batch b of a run with N slots per round is the sampler's batch (step b / N + 1, peer b % N, of N
// peers): exactly what in-process peer b % N trains at step b / N + 1 of `distro train --peers N`.
// Each round takes the smallest batch ids not yet trained; a batch whose payload did not make it
// (its node left, missed the deadline or was cut off) is given back and, being the smallest, is the
// first one taken by the next round. So with N nodes and no faults round s trains exactly the
// batches of in-process step s, and after a fault every later batch shifts by the missed ones, the
// same way on every replica (the queue is part of the coordinator's checkpoint).
#pragma once

#include <cstddef>
#include <cstdint>
#include <set>
#include <vector>

namespace distro::net {

struct BatchCoords {
  uint64_t step = 0;   // the sampler's step (from 1)
  uint32_t peer = 0;   // the sampler's peer
  uint32_t peers = 0;  // N
};

class BatchQueue {
 public:
  // slots: N, batches per round (>= 1). Throws Error(invalid_argument) for 0.
  explicit BatchQueue(uint32_t slots);
  // Restores a saved queue: next_fresh = first id never handed out, owed = ids given back (each
  // below next_fresh). Throws Error(corrupt) for an owed id >= next_fresh or a repeated one.
  BatchQueue(uint32_t slots, uint64_t next_fresh, const std::vector<uint64_t>& owed);

  // Removes and returns the n smallest ids not yet trained (owed ones first, then fresh), ascending.
  std::vector<uint64_t> take(size_t n);
  // Returns ids that were taken but not trained; they are taken again before any fresh one.
  // Throws Error(invalid_argument) for an id that was never handed out or is owed already.
  void give_back(const std::vector<uint64_t>& ids);

  BatchCoords coords(uint64_t batch_id) const;
  uint32_t slots() const { return slots_; }
  uint64_t next_fresh() const { return next_fresh_; }
  std::vector<uint64_t> owed() const { return {owed_.begin(), owed_.end()}; }

 private:
  uint32_t slots_;
  uint64_t next_fresh_ = 0;
  std::set<uint64_t> owed_;
};

}  // namespace distro::net

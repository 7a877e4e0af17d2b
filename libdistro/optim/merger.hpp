// Merges peers' payloads of one step into the update every replica applies (DESIGN.md section 4,
// steps 5-7). Integer arithmetic only, so the result does not depend on arrival order or device.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "optim/manifest.hpp"
#include "wire/messages.hpp"

namespace distro {

class Merger {
 public:
  Merger(Manifest manifest, uint64_t run_id, uint64_t step);

  // Decodes (on `threads` threads, 0 = wire::default_threads(); see decode_payload), checks (run,
  // step, duplicate peer) and keeps one payload. A rejected payload changes nothing. Throws
  // Error(corrupt / mismatch / state).
  void add(std::span<const uint8_t> bytes, unsigned threads = 0);
  // Adds an already decoded payload (in-process peers); checked the same way.
  void add(PeerPayload payload);
  size_t count() const { return payloads_.size(); }

  // Merges everything added so far. decay_factor = 1 - lr * weight_decay in float32. Large merges
  // run on `threads` threads over ranges of chunks (0 = wire::default_threads()); the result does
  // not depend on the thread count.
  MergedUpdate finish(float lr, float weight_decay, uint64_t prev_hash, unsigned threads = 0);
  bool finished() const { return finished_; }
  const Manifest& manifest() const { return manifest_; }

 private:
  size_t merge_range(uint64_t c0, uint64_t c1, const uint64_t* cursor, uint16_t* index, int32_t* value,
                     uint32_t* ends) const;

  Manifest manifest_;
  uint64_t run_id_, step_;
  std::vector<PeerPayload> payloads_;
  bool finished_ = false;
};

}  // namespace distro

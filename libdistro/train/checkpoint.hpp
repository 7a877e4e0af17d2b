// Checkpoints of a local training run: one file, dir/checkpoint.bin, written atomically (temporary
// file, fsync, rename, fsync of the folder), so a kill at any instant leaves the last good one.
//
// Layout (little-endian): "DSTRCKPT", u32 version (1), u32 n, n bytes of JSON (the run's
// configuration, the step, and the element count of every block), the float32 blocks in order, and
// SHA-256 of everything before it (32 bytes). With overlapped training the delayed merged update
// (wire format) follows the blocks, its byte count in the JSON as "pending_update_bytes".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/trainer.hpp"

namespace distro {

constexpr uint32_t kCheckpointVersion = 1;

class CheckpointWriter {
 public:
  TrainConfig config;
  uint64_t step = 0;
  std::vector<uint8_t> pending_update;  // overlap: the encoded update not yet applied (may be empty)
  void add_block(std::vector<float> data) { blocks_.push_back(std::move(data)); }
  // Writes dir/checkpoint.bin (creating dir). Throws Error(io) naming the path and the system error.
  void write(const std::string& dir) const;

 private:
  std::vector<std::vector<float>> blocks_;
};

class CheckpointReader {
 public:
  // Reads and checks dir/checkpoint.bin (or a file path): magic, version, lengths and checksum.
  // Throws Error(not_found / corrupt / mismatch) with what was wrong and what was expected.
  explicit CheckpointReader(const std::string& dir_or_file);
  const TrainConfig& config() const { return config_; }
  uint64_t step() const { return step_; }
  // The next block, which must hold n elements; `what` names it in errors.
  std::vector<float> next_block(uint64_t n, const std::string& what);
  // The delayed update saved by an overlapped run (empty when none); call after the last block.
  std::vector<uint8_t> pending_update();
  // Throws Error(corrupt) if blocks are left over.
  void finish() const;

 private:
  std::string path_;
  std::vector<uint8_t> bytes_;
  TrainConfig config_;
  uint64_t step_ = 0;
  std::vector<uint64_t> sizes_;
  uint64_t pending_bytes_ = 0;
  bool pending_read_ = false;
  size_t next_ = 0, offset_ = 0;
};

}  // namespace distro

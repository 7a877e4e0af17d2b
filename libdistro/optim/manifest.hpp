// The manifest: the ordered list of trainable tensors with the chunk plan of each (DESIGN.md section 4,
// distro-algorithm.md section 1.2). Every peer of a run builds the same manifest; its hash binds every
// payload and update to it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace distro {

enum class ValueMode : uint8_t { sign = 1, int8 = 2 };

// Largest divisor of n that is <= s (the DeMo/Psyche chunk rule). chunk_edge(0, s) == 0.
uint64_t chunk_edge(uint64_t n, uint64_t s);

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// One tensor seen as [batch, rows, cols] (rank 1: batch = rows = 1; rank >= 3: leading dims are the
// batch) and cut into n1 x n2 chunks. Chunks are numbered batch-major, then row block, then column
// block; a coefficient's index inside its chunk is f1 * n2 + f2.
struct TensorPlan {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t numel = 0;
  uint64_t batch = 1, rows = 1, cols = 1;
  uint32_t n1 = 1, n2 = 1;  // chunk edges
  uint64_t chunks = 0;      // batch * (rows / n1) * (cols / n2)
  uint32_t k = 1;           // coefficients sent per chunk: clamp(topk, 1, n1 * n2)
  uint64_t chunk_base = 0;  // index of this tensor's first chunk in the whole model
  uint64_t slot_base = 0;   // index of this tensor's first (chunk, k) slot in the whole model
  uint32_t elems() const { return n1 * n2; }
};

struct Manifest {
  uint32_t chunk = 64;
  uint32_t topk = 4;
  ValueMode values = ValueMode::sign;
  std::vector<TensorPlan> tensors;
  uint64_t total_params = 0;
  uint64_t total_chunks = 0;
  uint64_t total_slots = 0;  // sum over tensors of chunks * k
  uint64_t hash = 0;         // first 8 bytes (little-endian) of SHA-256 over the canonical encoding
};

constexpr uint32_t kMaxChunk = 256;          // keeps the integer inverse DCT inside int64
constexpr size_t kMaxTensorName = 255;
constexpr size_t kMaxRank = 8;
constexpr uint64_t kMaxTensorElements = uint64_t(1) << 40;

// Validates the specs and options and builds the plan. Throws Error(invalid_argument / size) naming
// the tensor and field that is wrong.
Manifest make_manifest(const std::vector<TensorSpec>& specs, uint32_t chunk, uint32_t topk,
                       ValueMode values);

}  // namespace distro

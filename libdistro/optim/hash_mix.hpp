// The parameter hash (docs/protocol.md, "parameter hash"), shared by every backend. Each float32
// element contributes mix64(bits + (i + 1) * kGolden + salt) and a tensor's hash is the sum of those
// terms modulo 2^64, so a GPU can reduce it in any order and get the same value. It detects replica
// drift; it is not a cryptographic commitment.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DISTRO_HD __host__ __device__
#else
#define DISTRO_HD
#endif

namespace distro {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// splitmix64's finaliser.
DISTRO_HD inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

DISTRO_HD inline uint64_t hash_term(uint32_t bits, uint64_t i, uint64_t salt) {
  return mix64(uint64_t(bits) + (i + 1) * kGolden + salt);
}

// Salt of the t-th tensor of a manifest, and the fold of tensor sums into the model's hash.
DISTRO_HD inline uint64_t tensor_salt(uint64_t t) { return mix64(t + 1); }
DISTRO_HD inline uint64_t fold_hash(uint64_t acc, uint64_t tensor_sum) {
  return mix64(acc ^ tensor_sum) + kGolden;
}

}  // namespace distro

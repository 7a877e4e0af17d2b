// Fresh pseudo-random device data for the GPU benchmarks (never zeros, never a repeated block).
#pragma once

#include <cstdint>

namespace distro::bench {

// x[i] = scale * z_i, z_i approximately standard normal (Irwin-Hall sum of four uniforms from a
// counter hash of (seed, i)); queued on the default stream. Returns a cudaError_t as int.
int fill_normal(float* x, uint64_t n, uint64_t seed, float scale);

}  // namespace distro::bench

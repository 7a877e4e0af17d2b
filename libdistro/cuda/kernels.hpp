// Launchers of the CUDA kernels (kernels/*.cu). Host code calls only these; the kernels themselves
// are private to their .cu file. Conventions (kernels/README.md):
//   - a launcher validates nothing the caller already checked, launches on the given stream and
//     returns the launch's cudaError_t (cudaGetLastError after <<<>>>), never aborts or throws;
//   - the caller (CudaDevice) sets the current device, turns a failure into distro::Error and
//   decides
//     when to synchronise;
//   - device pointers are raw; sizes are element counts (uint64_t).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace distro::cuda {

// Adds sum over i < n of hash_term(bits(data[i]), i, salt) (optim/hash_mix.hpp) to *out, modulo
// 2^64. *out is one device word that the caller zeroes first. data must be 4-byte aligned; any
// further alignment is used when present (16-byte loads). max_blocks bounds the grid (a few per SM
// is plenty); n == 0 launches nothing.
cudaError_t launch_hash(const float* data, uint64_t n, uint64_t salt, unsigned long long* out,
                        unsigned max_blocks, cudaStream_t stream);

// cudaSuccess when this build holds code that runs on the current device (cudaFuncGetAttributes on
// a kernel), else the error that a launch would give (e.g. cudaErrorNoKernelImageForDevice).
cudaError_t kernels_loadable();

// ---- DisTrO optimizer ops (kernels/distro_compress.cu, kernels/distro_apply.cu) ----

// One tensor seen as [batch, rows, cols] cut into n1 x n2 chunks (optim/manifest.hpp TensorPlan):
// chunk c = (b, row block, column block), batch-major.
struct ChunkShape {
  uint64_t chunks = 0;
  uint64_t rows = 1, cols = 1;  // per batch entry; rows % n1 == 0, cols % n2 == 0
  uint32_t n1 = 1, n2 = 1;      // 1..256
};

// The compress of one tensor (CompressArgs in backend/device.hpp): momentum, block DCT with float32
// accumulation, per-chunk top-k of |Y| (ties to the lowest index, indices ascending), quantised
// values, and error feedback of the selected full-precision coefficients. Bases are float32 tables
// in device memory, row-major B[i * n + f] and transposed Bt[f * n + i] (16-byte aligned).
struct CompressLaunch {
  ChunkShape shape;
  uint32_t k = 1;           // slots per chunk, 1..min(n1 * n2, 65535)
  const float* grad = nullptr;
  float* delta = nullptr;
  float beta = 0.0f, lr = 0.0f;
  int value_mode = 1;       // 1: sign, 2: int8 (ValueMode)
  uint16_t* count = nullptr;
  uint16_t* index = nullptr;
  int8_t* value = nullptr;
  const float* b1 = nullptr;   // n1 x n1
  const float* b1t = nullptr;
  const float* b2 = nullptr;   // n2 x n2
  const float* b2t = nullptr;
  float* workspace = nullptr;  // global scratch, CompressPlan::workspace_floats floats (may be null when 0)
};

// Which kernel runs and how: filled by plan_compress for the current device.
struct CompressPlan {
  int kernel = 0;  // 1: the plain 64x64 kernel, 2: the generic one, 3/4: the folded 64x64 one (4: momentum kept)
  unsigned grid = 1;              // persistent blocks, each loops over chunks
  size_t smem = 0;                // dynamic shared memory per block
  uint64_t workspace_floats = 0;  // global scratch the generic kernel needs (0: it works in shared memory)
};

// Plans the compress of L on the current device (sm_count multiprocessors). The 64x64 kernel needs
// grad and delta 16-byte aligned; otherwise the generic kernel runs.
cudaError_t plan_compress(const CompressLaunch& L, unsigned sm_count, CompressPlan* plan);
cudaError_t launch_compress(const CompressLaunch& L, const CompressPlan& plan, cudaStream_t stream);

// Sets *out (a device word the caller set to UINT64_MAX) to the lowest i < n where grad[i] or
// beta * delta[i] + lr * grad[i] (float32, two roundings and an add, as on the CPU) is not finite.
cudaError_t launch_first_nonfinite(const float* delta, const float* grad, float beta, float lr, uint64_t n,
                                   unsigned long long* out, unsigned max_blocks, cudaStream_t stream);

// The exact apply of one tensor (ApplyArgs): per chunk the integer inverse DCT of the merged
// entries [offset[c], offset[c+1]) over the i14 tables (int64, exact), its sign, then per element
// theta = ftz(ftz(theta) * decay), theta = ftz(theta -/+ lr): the CPU's bits on every input.
// Entries whose index is >= n1 * n2 are skipped (the caller validated the update).
struct ApplyLaunch {
  ChunkShape shape;
  const uint32_t* offset = nullptr;  // chunks + 1
  const uint16_t* index = nullptr;
  const int32_t* value = nullptr;
  float* params = nullptr;
  float lr = 0.0f, decay = 1.0f;
  const int32_t* bi1 = nullptr;   // round(B1 * 2^14), row-major [i * n1 + f]
  const int32_t* bi1t = nullptr;  // transposed [f * n1 + i]
  const int32_t* bi2 = nullptr;
  const int32_t* bi2t = nullptr;
};

// Grid and kernel choice are made inside (sm_count multiprocessors on the current device).
cudaError_t launch_apply(const ApplyLaunch& L, unsigned sm_count, cudaStream_t stream);

}  // namespace distro::cuda

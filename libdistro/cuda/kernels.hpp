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

}  // namespace distro::cuda

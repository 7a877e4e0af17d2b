// CUDA runtime failures as distro::Error, for the CUDA backend's host files: Code::out_of_memory for
// allocation failures, Code::device otherwise, the message naming the device, the call and
// cudaGetErrorName / cudaGetErrorString. The runtime's last-error slot is cleared first, so a
// recoverable error does not resurface in a later call.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "core/error.hpp"

namespace distro::cuda {

[[noreturn]] inline void raise_error(int ordinal, const std::string& call, cudaError_t err) {
  (void)cudaGetLastError();
  const Code code = err == cudaErrorMemoryAllocation ? Code::out_of_memory : Code::device;
  fail(code, "cuda:" + std::to_string(ordinal) + ": " + call + " failed: " + cudaGetErrorName(err) + " (" +
                 cudaGetErrorString(err) + ")");
}

inline void check_error(int ordinal, const char* call, cudaError_t err) {
  if (err != cudaSuccess) raise_error(ordinal, call, err);
}

}  // namespace distro::cuda

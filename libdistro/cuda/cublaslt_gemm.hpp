// Row-major batched GEMM (cuda::GemmArgs in kernels.hpp) on the tensor cores through cuBLASLt:
// bf16 inputs, float32 accumulation (CUBLAS_COMPUTE_32F) and float32 output C. Used by the matmul
// op (after converting its float32 operands to bf16) and by attention's products.
//
// Our matrices are row-major, cuBLAS's column-major: a row-major C[M,N] is a column-major C^T
// [N,M] with the same leading dimension, and C^T = op(B)^T op(A)^T, so cuBLASLt computes that
// product with the operands swapped (A' = B, B' = A) and m' = N, n' = M; a stored matrix needs no
// copy, only its transpose flag read the other way (see plan() in the .cpp).
//
// Determinism: the descriptors and the heuristic's algorithm are cached per shape (sizes, flags,
// strides and pointer alignment), so a shape always runs the same algorithm, and the search
// allows only split-K schemes without in-place accumulation (none, or partials in float32 reduced
// by a separate kernel), so results are the same on every run. Shapes cuBLASLt has no algorithm
// for run on a plain kernel (kernels/matmul.cu); DISTRO_CUDA_GEMM=fallback forces it everywhere.
#pragma once

#include <cstdint>
#include <memory>

#include "cuda/kernels.hpp"

namespace distro::cuda {

class LtGemm {
 public:
  // Creates the cuBLASLt handle and its workspace on the current device (`ordinal`, named in
  // errors). Throws Error(device) when cuBLASLt cannot start there.
  explicit LtGemm(int ordinal);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Queues C = alpha * op(A) op(B) + beta * C (GemmArgs) on stream; A and B are bf16 bit patterns.
  // The caller checked the pointers and sizes. Throws Error(device) on a cuBLASLt failure.
  void run(const GemmArgs& g, const uint16_t* A, const uint16_t* B, float* C, float alpha, float beta,
           cudaStream_t stream);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace distro::cuda

#include "cuda/cublaslt_gemm.hpp"

#include <cublasLt.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "core/error.hpp"
#include "cuda/cuda_error.hpp"

namespace distro::cuda {
namespace {

// Workspace cuBLASLt may use (split-K partials, Hopper kernels); 32 MiB is what NVIDIA recommends
// for Hopper.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

[[noreturn]] void lt_fail(int ordinal, const char* call, cublasStatus_t st) {
  fail(st == CUBLAS_STATUS_ALLOC_FAILED ? Code::out_of_memory : Code::device,
       "cuda:" + std::to_string(ordinal) + ": " + call + " failed: " + cublasLtGetStatusName(st) + " (" +
           cublasLtGetStatusString(st) + ")");
}

#define DISTRO_LT_CHECK(expr)                                                 \
  do {                                                                        \
    if (cublasStatus_t st_ = (expr); st_ != CUBLAS_STATUS_SUCCESS) lt_fail(ordinal, #expr, st_); \
  } while (0)

// Largest power of two <= 256 dividing the address of every batch entry and of every row.
uint32_t alignment(const void* p, int64_t ld, int64_t stride, int64_t batch, size_t elem) {
  uint64_t v = uint64_t(reinterpret_cast<uintptr_t>(p)) | (uint64_t(ld) * elem);
  if (batch > 1) v |= uint64_t(stride) * elem;
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

using Key = std::array<int64_t, 15>;

}  // namespace

// One shape's descriptors and the algorithm chosen for it (found == false: the fallback kernel).
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLAS's A' (our B), B' (our A), C
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
  ~LtPlan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

struct LtGemm::State {
  int ordinal = -1;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  bool force_fallback = false;
  std::mutex mu;
  std::map<Key, std::unique_ptr<LtPlan>> plans;

  LtPlan& plan(const GemmArgs& g, const void* A, const void* B, const void* C);
};

LtGemm::LtGemm(int ordinal) : s_(std::make_unique<State>()) {
  s_->ordinal = ordinal;
  const char* env = std::getenv("DISTRO_CUDA_GEMM");
  s_->force_fallback = env && std::strcmp(env, "fallback") == 0;
  DISTRO_LT_CHECK(cublasLtCreate(&s_->handle));
  if (cudaError_t err = cudaMalloc(&s_->workspace, kWorkspaceBytes); err != cudaSuccess) {
    cublasLtDestroy(s_->handle);
    raise_error(ordinal, "cudaMalloc(cuBLASLt workspace)", err);
  }
}

LtGemm::~LtGemm() {
  // Errors are ignored: at process exit the runtime may already be unloading.
  s_->plans.clear();
  if (s_->workspace) cudaFree(s_->workspace);
  if (s_->handle) cublasLtDestroy(s_->handle);
  (void)cudaGetLastError();
}

LtPlan& LtGemm::State::plan(const GemmArgs& g, const void* A, const void* B, const void* C) {
  const uint32_t align_a = alignment(A, g.lda, g.strideA, g.batch, 2);
  const uint32_t align_b = alignment(B, g.ldb, g.strideB, g.batch, 2);
  const uint32_t align_c = alignment(C, g.ldc, g.strideC, g.batch, 4);
  const Key key{g.M, g.N, g.K, g.transA, g.transB, g.lda, g.ldb, g.ldc, g.strideA, g.strideB, g.strideC, g.batch,
                align_a, align_b, align_c};
  auto& slot = plans[key];
  if (slot) return *slot;
  auto p = std::make_unique<LtPlan>();

  // C^T[N,M] = op(B)^T op(A)^T in column-major terms. Our B stored row-major [K,N] (or [N,K] when
  // transB) is column-major [N,K] (or [K,N]) with the same leading dimension: op N (or T) gives
  // op(B)^T. Likewise our A stored [M,K] (or [K,M]) is column-major [K,M] (or [M,K]).
  const cublasOperation_t op_a = g.transB ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.transA ? CUBLAS_OP_T : CUBLAS_OP_N;
  DISTRO_LT_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  DISTRO_LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  DISTRO_LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  DISTRO_LT_CHECK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, g.transB ? g.K : g.N, g.transB ? g.N : g.K, g.ldb));
  DISTRO_LT_CHECK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, g.transA ? g.M : g.K, g.transA ? g.K : g.M, g.lda));
  DISTRO_LT_CHECK(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, g.N, g.M, g.ldc));
  if (g.batch > 1) {
    const int32_t count = int32_t(g.batch);
    const std::array<std::pair<cublasLtMatrixLayout_t, int64_t>, 3> layouts{
        {{p->a, g.strideB}, {p->b, g.strideA}, {p->c, g.strideC}}};
    for (const auto& [layout, stride] : layouts) {
      DISTRO_LT_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                       sizeof(count)));
      DISTRO_LT_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                       sizeof(stride)));
    }
  }

  cublasLtMatmulPreference_t pref = nullptr;
  DISTRO_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  // No in-place split-K: partial sums, if any, are reduced by a separate kernel in a fixed order.
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                              sizeof(schemes));
  // cuBLAS's A is our B and the other way round.
  const std::array<std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t>, 4> aligns{
      {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_b},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_a},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}}};
  for (const auto& [attr, value] : aligns)
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(handle, p->desc, p->a, p->b, p->c, p->c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  // No algorithm for this shape (CUBLAS_STATUS_NOT_SUPPORTED, or none returned) is not an error:
  // the fallback kernel takes it. Anything else is.
  if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) lt_fail(ordinal, "cublasLtMatmulAlgoGetHeuristic", st);
  p->found = st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  if (p->found) p->algo = result.algo;
  slot = std::move(p);
  return *slot;
}

void LtGemm::run(const GemmArgs& g, const uint16_t* A, const uint16_t* B, float* C, float alpha, float beta,
                 cudaStream_t stream) {
  const int ordinal = s_->ordinal;
  if (g.M <= 0 || g.N <= 0 || g.batch <= 0) return;
  // K == 0 (C = beta * C) and the forced fallback go to the plain kernel.
  const LtPlan* p = nullptr;
  if (g.K > 0 && !s_->force_fallback) {
    std::lock_guard<std::mutex> lock(s_->mu);
    p = &s_->plan(g, A, B, C);
  }
  if (!p || !p->found) {
    check_error(ordinal, "launch_gemm_bf16_fallback", launch_gemm_bf16_fallback(g, A, B, C, alpha, beta, stream));
    return;
  }
  DISTRO_LT_CHECK(cublasLtMatmul(s_->handle, p->desc, &alpha, B, p->a, A, p->b, &beta, C, p->c, C, p->c, &p->algo,
                                 s_->workspace, kWorkspaceBytes, stream));
}

}  // namespace distro::cuda

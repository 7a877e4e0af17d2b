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

// ---- Batched reductions over many tensors (kernels/hash.cu, kernels/reduce.cu) ----
// One launch covers up to kMaxReduceRuns tensors ("runs"), each cut into units of kReduceUnitQuads
// 16-byte quads: reduce_units(data, n) of them (at least one; unit 0 also takes the 0..3 elements
// before the first 16-byte boundary and the 0..3 after the last whole quad), numbered from `begin`
// in the launch, runs in order and contiguous from 0. A persistent grid of at most max_blocks
// blocks loops over the units. data must be 4-byte aligned. The table travels in the kernel
// parameters (under the 4 KiB every CUDA version takes).
inline constexpr unsigned kMaxReduceRuns = 64;
inline constexpr uint64_t kReduceUnitQuads = 2048;
struct ReduceRun {
  const float* data = nullptr;
  uint64_t n = 0;
  uint64_t begin = 0;
  uint64_t salt = 0;    // hash only
  void* out = nullptr;  // the run's result: unsigned long long (hash) or double (sum of squares)
};
struct ReduceLaunch {
  uint64_t units = 0;          // over all runs
  uint32_t runs = 0;           // 1..kMaxReduceRuns
  double* partial = nullptr;   // sum of squares only: one per unit (the caller's scratch)
  ReduceRun run[kMaxReduceRuns];
};
static_assert(sizeof(ReduceLaunch) <= 4000, "the run table must fit the kernel parameters");
uint64_t reduce_units(const float* data, uint64_t n);

// Adds, for each run, sum over i < n of hash_term(bits(data[i]), i, salt) (optim/hash_mix.hpp) to
// its word, modulo 2^64 (the caller zeroes the words first): the CPU's bits in any order.
cudaError_t launch_hash_many(const ReduceLaunch& L, unsigned max_blocks, cudaStream_t stream);

// cudaSuccess when this build holds code that runs on the current device (cudaFuncGetAttributes on
// a kernel), else the error that a launch would give (e.g. cudaErrorNoKernelImageForDevice).
cudaError_t kernels_loadable();

// ---- DisTrO optimizer ops (kernels/distro_compress.cu, kernels/distro_apply.cu) ----

// A compress or apply launch covers one or more tensors ("runs") of the same chunk edges n1 x n2,
// up to kMaxRuns of them: its chunks are numbered 0 .. chunks - 1 across the runs, run after run, and
// a persistent grid loops over that sequence, so one launch has one tail instead of one per tensor.
// The run table travels in the kernel's parameters (under the 4 KiB every CUDA version takes).
inline constexpr unsigned kMaxRuns = 48;

// Where one tensor's chunks lie: the tensor seen as [batch, rows, cols] cut into n1 x n2 chunks
// (optim/manifest.hpp TensorPlan); its chunk c = (batch entry, row block, column block), batch-major.
struct ChunkRun {
  uint64_t begin = 0;          // launch-wide number of its chunk 0 (runs in order, contiguous from 0)
  uint64_t cols = 1;           // elements per row; cols % n2 == 0
  uint32_t chunks = 0;         // >= 1
  uint32_t col_blocks = 1;     // cols / n2
  // fast_division's constants for col_blocks: a kernel finds a chunk's row of blocks without a
  // division (about 20 dependent instructions).
  uint32_t div_mul = 1u << 31, div_shift = 31;

  // c / col_blocks, the row of blocks of chunk c < 2^31 counted over all batch entries.
#if defined(__CUDACC__)
  __host__ __device__
#endif
  uint32_t block_row(uint32_t c) const { return uint32_t((uint64_t(c) * div_mul) >> div_shift); }
};

// The multiplier and shift of ChunkRun::block_row for divisor d >= 1: shift = 31 + ceil(log2 d),
// mul = ceil(2^shift / d) < 2^32. With e = mul d - 2^shift in [0, d) and c < 2^31,
// c mul / 2^shift = c / d + c e / (d 2^shift) and c e < 2^shift, so the floor is exactly c / d.
inline void fast_division(uint32_t d, uint32_t& mul, uint32_t& shift) {
  uint32_t l = 0;
  while ((uint64_t(1) << l) < d) ++l;
  shift = 31 + l;
  mul = uint32_t(((uint64_t(1) << shift) + d - 1) / d);
}

// One tensor of a compress (CompressArgs in backend/device.hpp).
struct CompressRun {
  ChunkRun at;
  const float* grad = nullptr;
  float* delta = nullptr;
  uint16_t* count = nullptr;  // chunks
  uint16_t* index = nullptr;  // chunks * k
  int8_t* value = nullptr;    // chunks * k
};

// The compress of the runs: momentum, block DCT with float32 accumulation, per-chunk top-k of |Y|
// (ties to the lowest index, indices ascending), quantised values, and error feedback of the
// selected full-precision coefficients. Bases are float32 tables in device memory, row-major
// B[i * n + f] and transposed Bt[f * n + i] (16-byte aligned).
struct CompressLaunch {
  uint32_t n1 = 1, n2 = 1;  // chunk edges, 1..256
  uint32_t k = 1;           // slots per chunk, 1..min(n1 * n2, 65535)
  float beta = 0.0f, lr = 0.0f;
  int value_mode = 1;       // 1: sign, 2: int8 (ValueMode)
  const float* b1 = nullptr;   // n1 x n1
  const float* b1t = nullptr;
  const float* b2 = nullptr;   // n2 x n2
  const float* b2t = nullptr;
  float* workspace = nullptr;  // global scratch, CompressPlan::workspace_floats floats (may be null when 0)
  uint64_t chunks = 0;         // over all runs
  uint32_t runs = 0;           // 1..kMaxRuns
  CompressRun run[kMaxRuns];
};

// Which kernel runs and how: filled by plan_compress for the current device.
struct CompressPlan {
  // 1: the plain 64x64 kernel, 2: the generic one, 3/4: the folded 64x64 one (4: momentum kept),
  // 5/6: the folded one with its transforms on tensor cores (sm_80 and newer; 6: momentum kept,
  // the default there)
  int kernel = 0;
  unsigned grid = 1;              // persistent blocks, each loops over chunks
  size_t smem = 0;                // dynamic shared memory per block
  uint64_t workspace_floats = 0;  // global scratch the generic kernel needs (0: it works in shared memory)
};

// Plans the compress of L on the current device (sm_count multiprocessors). The 64x64 kernels need
// every run's grad and delta 16-byte aligned; otherwise the generic kernel runs.
cudaError_t plan_compress(const CompressLaunch& L, unsigned sm_count, CompressPlan* plan);
cudaError_t launch_compress(const CompressLaunch& L, const CompressPlan& plan, cudaStream_t stream);

// Sets *out (a device word the caller set to UINT64_MAX) to the lowest i < n where grad[i] or
// beta * delta[i] + lr * grad[i] (float32, two roundings and an add, as on the CPU) is not finite.
cudaError_t launch_first_nonfinite(const float* delta, const float* grad, float beta, float lr, uint64_t n,
                                   unsigned long long* out, unsigned max_blocks, cudaStream_t stream);

// One tensor of an apply (ApplyArgs): its merged entries, chunk c owning [offset[c], offset[c+1]).
struct ApplyRun {
  ChunkRun at;
  const uint32_t* offset = nullptr;  // chunks + 1
  const uint16_t* index = nullptr;
  const int32_t* value = nullptr;
  float* params = nullptr;
};

// The exact apply of the runs: per chunk the integer inverse DCT of the merged entries over the
// i14 tables (int64, exact), its sign, then per element theta = ftz(ftz(theta) * decay),
// theta = ftz(theta -/+ lr): the CPU's bits on every input. Entries whose index is >= n1 * n2 are
// skipped (the caller validated the update).
struct ApplyLaunch {
  uint32_t n1 = 1, n2 = 1;
  float lr = 0.0f, decay = 1.0f;
  const int32_t* bi1 = nullptr;   // round(B1 * 2^14), row-major [i * n1 + f]
  const int32_t* bi1t = nullptr;  // transposed [f * n1 + i]
  const int32_t* bi2 = nullptr;
  const int32_t* bi2t = nullptr;
  uint64_t chunks = 0;  // over all runs
  uint32_t runs = 0;    // 1..kMaxRuns
  ApplyRun run[kMaxRuns];
};

// Grid and kernel choice are made inside (sm_count multiprocessors on the current device); the
// 64x64 kernels need every run's params 16-byte aligned.
cudaError_t launch_apply(const ApplyLaunch& L, unsigned sm_count, cudaStream_t stream);

// ---- Model ops (kernels/elementwise.cu, embedding.cu, rmsnorm.cu, rope.cu, swiglu.cu,
// cross_entropy.cu, attention.cu, matmul.cu) and AdamW (kernels/adamw.cu) ----
// The contracts are the Device ops' (backend/device.hpp); here every pointer is device memory the
// caller checked, sizes are element counts, and bf16 buffers are uint16_t bit patterns (bfloat16,
// rounded to nearest even). max_blocks bounds grid-stride grids. Each kernel computes an output
// element in one thread (or a row in one warp or block) with reductions in a fixed order, so
// results are the same on every run; no kernel uses floating-point atomics.

// dst[i] = bf16(src[i]): the inputs of the tensor-core matmuls.
cudaError_t launch_to_bf16(uint16_t* dst, const float* src, uint64_t n, unsigned max_blocks, cudaStream_t stream);
// out = a + b (out may be a or b); y += alpha * x; x *= alpha.
cudaError_t launch_add(float* out, const float* a, const float* b, uint64_t n, unsigned max_blocks,
                       cudaStream_t stream);
cudaError_t launch_axpy(float* y, const float* x, float alpha, uint64_t n, unsigned max_blocks, cudaStream_t stream);
cudaError_t launch_scale(float* x, float alpha, uint64_t n, unsigned max_blocks, cudaStream_t stream);

// out[i, :] = table[ids[i], :]. Rows whose id lies outside [0, vocab) are left untouched (the
// caller checked the ids; the kernel never reads outside the table whatever it is given).
cudaError_t launch_embedding_forward(float* out, const float* table, const int32_t* ids, uint64_t n,
                                     uint64_t vocab, uint64_t dim, unsigned max_blocks, cudaStream_t stream);
// For each group g < groups: dtable[uniq[g], :] += sum of dout[order[s], :] over s in
// [seg[g], seg[g + 1]), summed in that order starting from the first term (the CPU's order when
// order lists each id's positions ascending).
cudaError_t launch_embedding_backward(float* dtable, const float* dout, const int32_t* uniq, const int32_t* seg,
                                      const int32_t* order, uint64_t groups, uint64_t vocab, uint64_t dim,
                                      unsigned max_blocks, cudaStream_t stream);

// RMSNorm per row of [rows, dim] (one block per row).
cudaError_t launch_rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, uint64_t rows,
                                   uint64_t dim, float eps, unsigned max_blocks, cudaStream_t stream);
// dx += dL/dx per row.
cudaError_t launch_rmsnorm_backward_input(float* dx, const float* dy, const float* x, const float* w,
                                          const float* rstd, uint64_t rows, uint64_t dim, unsigned max_blocks,
                                          cudaStream_t stream);
// dw += sum over rows of dy * x * rstd: partial sums over fixed blocks of rows into `workspace`
// (rmsnorm_weight_workspace(rows, dim) floats), then one ordered sum per column.
uint64_t rmsnorm_weight_workspace(uint64_t rows, uint64_t dim);
cudaError_t launch_rmsnorm_backward_weight(float* dw, const float* dy, const float* x, const float* rstd,
                                           uint64_t rows, uint64_t dim, float* workspace, cudaStream_t stream);

// Rotary embedding in place on x [batch, seq, heads, head_dim] (inverse: the backward).
cudaError_t launch_rope(float* x, const float* cos, const float* sin, uint64_t batch, uint64_t seq, uint64_t heads,
                        uint64_t head_dim, bool inverse, unsigned max_blocks, cudaStream_t stream);

cudaError_t launch_swiglu_forward(float* h, const float* g, const float* u, uint64_t n, unsigned max_blocks,
                                  cudaStream_t stream);
cudaError_t launch_swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u,
                                   uint64_t n, unsigned max_blocks, cudaStream_t stream);

// One block per row; dlogits may be null or logits itself. A target outside [0, vocab) gives a NaN
// loss and no one-hot term (the caller checked the targets).
cudaError_t launch_cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets,
                                 uint64_t rows, uint64_t vocab, float scale, unsigned max_blocks, cudaStream_t stream);

// Attention's row-wise parts; the products around them are GEMMs. S and dP are [bh, seq, seq]
// float32 (bh = batch entries x heads of one slice of the batch, batch-major), P and dS the same in
// bf16; only columns j <= t of row t are read, and columns j > t are written as zeros so the
// following GEMMs see the causal mask. lse is [bh, seq].
// Forward: lse = logsumexp_{j<=t} S[t, j]; P[t, j] = exp(S[t, j] - lse).
cudaError_t launch_attention_softmax(uint16_t* P, float* lse, const float* S, uint64_t bh, uint64_t seq,
                                     unsigned max_blocks, cudaStream_t stream);
// Backward: P = exp(S - lse), Dt = sum_j P_j dP_j (which is dout_t . out_t in exact arithmetic),
// dS = P * (dP - Dt).
cudaError_t launch_attention_softmax_backward(uint16_t* P, uint16_t* dS, const float* S, const float* dP,
                                              const float* lse, uint64_t bh, uint64_t seq, unsigned max_blocks,
                                              cudaStream_t stream);

// A row-major batched GEMM: for each batch entry e < batch,
//   C_e[M,N] = alpha * op(A_e) op(B_e) + beta * C_e (beta == 0: C is not read),
// op(A) [M,K] (A stored [K,M] when transA), op(B) [K,N] (B stored [N,K] when transB); ld* are the
// row strides of the matrices as stored, stride* the distance between batch entries (elements).
struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  bool transA = false, transB = false;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t strideA = 0, strideB = 0, strideC = 0;
  int64_t batch = 1;
};
// The plain fallback of cublaslt_gemm.cpp for shapes cuBLASLt offers no algorithm for (and the
// DISTRO_CUDA_GEMM=fallback switch): bf16 inputs, float32 accumulation in k order, float32 C.
cudaError_t launch_gemm_bf16_fallback(const GemmArgs& g, const uint16_t* A, const uint16_t* B, float* C,
                                      float alpha, float beta, cudaStream_t stream);

// AdamW over n elements with the CPU's float32 expression order (bc1, bc2: the bias corrections
// 1 - beta^t, computed by the caller as the CPU does).
struct AdamWLaunch {
  float* params = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  uint64_t n = 0;
  float lr = 0.0f, beta1 = 0.0f, beta2 = 0.0f, eps = 0.0f, weight_decay = 0.0f, bc1 = 1.0f, bc2 = 1.0f;
};
cudaError_t launch_adamw(const AdamWLaunch& L, unsigned max_blocks, cudaStream_t stream);

// ---- Reductions (kernels/reduce.cu) ----

// For each run, its double = sum over i < n of double(data[i])^2, the same bits whatever the grid
// and whatever else is in the launch: each unit is summed into partial[unit] in a fixed order and
// tree, then each run's partials in order.
cudaError_t launch_sum_squares_many(const ReduceLaunch& L, unsigned max_blocks, cudaStream_t stream);

}  // namespace distro::cuda

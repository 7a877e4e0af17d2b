// The CUDA device's model ops and AdamW: the CPU's argument checks, then a check of every pointer
// (memory of this device, large enough when it was allocated here, 4-byte aligned), then kernels of
// kernels/*.cu and cuBLASLt GEMMs queued on the device's stream. Nothing here waits for the GPU
// except the ops that read ids or targets back to check them (docs/cuda.md).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>

#include "cuda/cublaslt_gemm.hpp"
#include "cuda/cuda_device.hpp"
#include "cuda/op_timer.hpp"
#include "cuda/cuda_error.hpp"
#include "cuda/flash_attention.hpp"
#include "cuda/kernels.hpp"

namespace distro {
namespace {

#define DISTRO_CUDA_CHECK(expr) cuda::check_error(ordinal_, #expr, (expr))

// Attention's scratch (bf16 copies of the inputs, the score and probability matrices) is bounded by
// processing this many bytes' worth of batch entries at a time (at least one entry).
// DISTRO_CUDA_ATTENTION_SCRATCH=<bytes> overrides it (the tests force several slices).
constexpr uint64_t kAttentionScratchBytes = uint64_t(512) << 20;

uint64_t attention_budget() {
  if (const char* env = std::getenv("DISTRO_CUDA_ATTENTION_SCRATCH")) {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (end != env && *end == '\0') return uint64_t(v);
  }
  return kAttentionScratchBytes;
}

// Offsets of several buffers in one scratch allocation, each 256-byte aligned.
struct Carve {
  uint64_t total = 0;
  uint64_t take(uint64_t bytes) {
    const uint64_t at = total;
    total += (bytes + 255) / 256 * 256;
    return at;
  }
};

std::string where(const std::string& dev, const char* op) { return dev + ": op '" + op + "': "; }

void check_size(const std::string& dev, const char* op, const char* what, int64_t v) {
  if (v < 0) fail(Code::invalid_argument, where(dev, op) + what + " is " + std::to_string(v) + "; expected >= 0");
}

void check_heads(const std::string& dev, const char* op, const HeadShape& s, bool even) {
  check_size(dev, op, "batch", s.batch);
  check_size(dev, op, "seq", s.seq);
  if (s.heads <= 0 || s.head_dim <= 0 || (even && s.head_dim % 2 != 0))
    fail(Code::invalid_argument, where(dev, op) + "heads " + std::to_string(s.heads) + " and head_dim " +
                                     std::to_string(s.head_dim) + " must be positive" +
                                     (even ? " and head_dim even" : ""));
}

// A float or int32 buffer that is not 4-byte aligned would fault in a kernel (a sticky error).
void check_aligned4(const std::string& dev, const char* op, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 4 != 0)
      fail(Code::invalid_argument, where(dev, op) + "a buffer is not aligned to 4 bytes");
}

uint64_t u(int64_t v) { return uint64_t(v); }

// The fused kernels (kernels/flash_attention.cu) take head sizes 32, 64, 128 and 256 on sm_80+ with
// 16-byte aligned activations and sizes inside their grid; anything else, or
// DISTRO_CUDA_ATTENTION=gemm (A/B timing, tests), runs the cuBLASLt GEMMs around the softmax kernels.
bool use_flash(const HeadShape& s, std::initializer_list<const void*> ptrs) {
  if (const char* env = std::getenv("DISTRO_CUDA_ATTENTION"); env && std::string(env) == "gemm") return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % cuda::kFlashAttentionAlignment != 0) return false;
  return cuda::flash_attention_supported(s.batch, s.seq, s.heads, s.head_dim);
}

// The op timer's row for one GEMM shape: "matmul 16384x2048x2048 tB +C".
std::string matmul_name(int64_t M, int64_t N, int64_t K, bool transA, bool transB, float beta) {
  return "matmul " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + (transA ? " tA" : "") +
         (transB ? " tB" : "") + (beta != 0.0f ? " +C" : "");
}

}  // namespace

uint8_t* CudaDevice::model_scratch(uint64_t bytes) {
  // Called with model_mu_ held. Work already queued may still use the old buffer: wait first.
  if (model_scratch_.bytes() < bytes) {
    synchronize();
    model_scratch_ = DeviceMemory();
    const uint64_t grain = uint64_t(2) << 20;
    model_scratch_ = alloc((bytes + grain - 1) / grain * grain);
  }
  return model_scratch_.as<uint8_t>();
}

cuda::LtGemm& CudaDevice::gemm() {
  if (!gemm_) gemm_ = std::make_unique<cuda::LtGemm>(ordinal_);
  return *gemm_;
}

void CudaDevice::model_ids(const int32_t* ids, int64_t n, int64_t vocab, const char* what, const char* op) {
  host_ids_.resize(size_t(n));
  download(host_ids_.data(), ids, size_t(n) * sizeof(int32_t));
  for (int64_t i = 0; i < n; ++i)
    if (host_ids_[size_t(i)] < 0 || host_ids_[size_t(i)] >= vocab)
      fail(Code::invalid_argument, where(info_.name, op) + what + "[" + std::to_string(i) + "] = " +
                                       std::to_string(host_ids_[size_t(i)]) + " is outside [0, " +
                                       std::to_string(vocab) + ")");
}

void CudaDevice::adamw(const AdamWArgs& a) {
  cuda::OpTimer::Scope timed(*timer_, "adamw");
  if (a.n == 0) return;
  const char* op = "adamw";
  activate();
  check_range(a.params, a.n * 4, "params", op), check_range(a.grad, a.n * 4, "grad", op);
  check_range(a.m, a.n * 4, "m", op), check_range(a.v, a.n * 4, "v", op);
  check_aligned4(info_.name, op, {a.params, a.grad, a.m, a.v});
  cuda::AdamWLaunch L;
  L.params = a.params, L.grad = a.grad, L.m = a.m, L.v = a.v, L.n = a.n;
  L.lr = a.lr, L.beta1 = a.beta1, L.beta2 = a.beta2, L.eps = a.eps, L.weight_decay = a.weight_decay;
  // The CPU's expressions (CpuDevice::adamw), so both devices divide by the same float32 values.
  L.bc1 = 1.0f - std::pow(a.beta1, float(a.t));
  L.bc2 = 1.0f - std::pow(a.beta2, float(a.t));
  DISTRO_CUDA_CHECK(cuda::launch_adamw(L, max_blocks_, stream_));
}

void CudaDevice::matmul(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, bool transA,
                        bool transB, float alpha, float beta) {
  cuda::OpTimer::Scope timed(*timer_, timer_->enabled() ? matmul_name(M, N, K, transA, transB, beta) : std::string());
  const char* op = "matmul";
  check_size(info_.name, op, "M", M), check_size(info_.name, op, "N", N), check_size(info_.name, op, "K", K);
  if (M == 0 || N == 0) return;
  activate();
  check_range(C, u(M) * u(N) * 4, "C", op);
  if (K > 0) check_range(A, u(M) * u(K) * 4, "A", op), check_range(B, u(K) * u(N) * 4, "B", op);
  check_aligned4(info_.name, op, {C, A, B});
  if (K == 0) {  // C = alpha * 0 + beta * C
    if (beta == 0.0f)
      DISTRO_CUDA_CHECK(cudaMemsetAsync(C, 0, u(M) * u(N) * 4, stream_));
    else
      DISTRO_CUDA_CHECK(cuda::launch_scale(C, beta, u(M) * u(N), max_blocks_, stream_));
    return;
  }
  std::lock_guard<std::mutex> lock(model_mu_);
  Carve c;
  const uint64_t a_at = c.take(u(M) * u(K) * 2), b_at = c.take(u(K) * u(N) * 2);
  uint8_t* ws = model_scratch(c.total);
  auto* a16 = reinterpret_cast<uint16_t*>(ws + a_at);
  auto* b16 = reinterpret_cast<uint16_t*>(ws + b_at);
  DISTRO_CUDA_CHECK(cuda::launch_to_bf16(a16, A, u(M) * u(K), max_blocks_, stream_));
  DISTRO_CUDA_CHECK(cuda::launch_to_bf16(b16, B, u(K) * u(N), max_blocks_, stream_));
  cuda::GemmArgs g;
  g.M = M, g.N = N, g.K = K, g.transA = transA, g.transB = transB;
  g.lda = transA ? M : K, g.ldb = transB ? K : N, g.ldc = N;
  gemm().run(g, a16, b16, C, alpha, beta, stream_);
}

void CudaDevice::embedding_forward(float* out, const float* table, const int32_t* ids, int64_t n, int64_t vocab,
                                   int64_t dim) {
  cuda::OpTimer::Scope timed(*timer_, "embedding_forward");
  const char* op = "embedding_forward";
  check_size(info_.name, op, "n", n), check_size(info_.name, op, "dim", dim);
  if (n == 0 || dim == 0) return;
  activate();
  check_range(out, u(n) * u(dim) * 4, "out", op), check_range(ids, u(n) * 4, "ids", op);
  check_aligned4(info_.name, op, {out, table, ids});
  std::lock_guard<std::mutex> lock(model_mu_);
  model_ids(ids, n, vocab, "ids", op);  // vocab > 0 from here on
  check_range(table, u(vocab) * u(dim) * 4, "table", op);
  DISTRO_CUDA_CHECK(cuda::launch_embedding_forward(out, table, ids, u(n), u(vocab), u(dim), max_blocks_, stream_));
}

void CudaDevice::embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n, int64_t vocab,
                                    int64_t dim) {
  cuda::OpTimer::Scope timed(*timer_, "embedding_backward");
  const char* op = "embedding_backward";
  check_size(info_.name, op, "n", n), check_size(info_.name, op, "dim", dim);
  if (n == 0 || dim == 0) return;
  if (n > std::numeric_limits<int32_t>::max())
    fail(Code::size, where(info_.name, op) + "n = " + std::to_string(n) + " positions; at most 2^31 - 1 are supported");
  activate();
  check_range(dout, u(n) * u(dim) * 4, "dout", op), check_range(ids, u(n) * 4, "ids", op);
  check_aligned4(info_.name, op, {dtable, dout, ids});
  std::lock_guard<std::mutex> lock(model_mu_);
  model_ids(ids, n, vocab, "ids", op);
  check_range(dtable, u(vocab) * u(dim) * 4, "dtable", op);

  // Positions grouped by id, ascending within each id (a stable sort): groups_ holds
  // [uniq: U ids][seg: U + 1 starts][order: n positions].
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const int32_t* id = host_ids_.data();
  std::stable_sort(order.begin(), order.end(), [id](int32_t a, int32_t b) { return id[a] < id[b]; });
  std::vector<int32_t> uniq, seg;
  for (int64_t s = 0; s < n; ++s)
    if (s == 0 || id[order[size_t(s)]] != id[order[size_t(s - 1)]]) {
      uniq.push_back(id[order[size_t(s)]]);
      seg.push_back(int32_t(s));
    }
  seg.push_back(int32_t(n));
  const uint64_t U = uniq.size();
  groups_.clear();
  groups_.insert(groups_.end(), uniq.begin(), uniq.end());
  groups_.insert(groups_.end(), seg.begin(), seg.end());
  groups_.insert(groups_.end(), order.begin(), order.end());
  auto* dev_groups = reinterpret_cast<int32_t*>(model_scratch(groups_.size() * sizeof(int32_t)));
  upload(dev_groups, groups_.data(), groups_.size() * sizeof(int32_t));
  DISTRO_CUDA_CHECK(cuda::launch_embedding_backward(dtable, dout, dev_groups, dev_groups + U, dev_groups + 2 * U + 1,
                                                    U, u(vocab), u(dim), max_blocks_, stream_));
}

void CudaDevice::rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t dim,
                                 float eps) {
  cuda::OpTimer::Scope timed(*timer_, "rmsnorm_forward");
  const char* op = "rmsnorm_forward";
  check_size(info_.name, op, "rows", rows);
  if (dim <= 0) fail(Code::invalid_argument, where(info_.name, op) + "dim must be positive");
  if (rows == 0) return;
  activate();
  check_range(y, u(rows) * u(dim) * 4, "y", op), check_range(rstd, u(rows) * 4, "rstd", op);
  check_range(x, u(rows) * u(dim) * 4, "x", op), check_range(w, u(dim) * 4, "w", op);
  check_aligned4(info_.name, op, {y, rstd, x, w});
  DISTRO_CUDA_CHECK(cuda::launch_rmsnorm_forward(y, rstd, x, w, u(rows), u(dim), eps, max_blocks_, stream_));
}

void CudaDevice::rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                                  const float* rstd, int64_t rows, int64_t dim) {
  cuda::OpTimer::Scope timed(*timer_, "rmsnorm_backward");
  const char* op = "rmsnorm_backward";
  check_size(info_.name, op, "rows", rows);
  if (dim <= 0) fail(Code::invalid_argument, where(info_.name, op) + "dim must be positive");
  if (rows == 0) return;
  activate();
  const uint64_t bytes = u(rows) * u(dim) * 4;
  check_range(dx, bytes, "dx", op), check_range(dw, u(dim) * 4, "dw", op), check_range(dy, bytes, "dy", op);
  check_range(x, bytes, "x", op), check_range(w, u(dim) * 4, "w", op), check_range(rstd, u(rows) * 4, "rstd", op);
  check_aligned4(info_.name, op, {dx, dw, dy, x, w, rstd});
  std::lock_guard<std::mutex> lock(model_mu_);
  auto* partial = reinterpret_cast<float*>(model_scratch(cuda::rmsnorm_weight_workspace(u(rows), u(dim)) * 4));
  DISTRO_CUDA_CHECK(cuda::launch_rmsnorm_backward_input(dx, dy, x, w, rstd, u(rows), u(dim), max_blocks_, stream_));
  DISTRO_CUDA_CHECK(cuda::launch_rmsnorm_backward_weight(dw, dy, x, rstd, u(rows), u(dim), partial, stream_));
}

void CudaDevice::rope_forward(float* x, const float* cos, const float* sin, const HeadShape& s) {
  cuda::OpTimer::Scope timed(*timer_, "rope_forward");
  const char* op = "rope_forward";
  check_heads(info_.name, op, s, true);
  if (s.batch == 0 || s.seq == 0) return;
  activate();
  check_range(x, u(s.batch) * u(s.seq) * u(s.heads) * u(s.head_dim) * 4, "x", op);
  check_range(cos, u(s.seq) * u(s.head_dim / 2) * 4, "cos", op);
  check_range(sin, u(s.seq) * u(s.head_dim / 2) * 4, "sin", op);
  check_aligned4(info_.name, op, {x, cos, sin});
  DISTRO_CUDA_CHECK(cuda::launch_rope(x, cos, sin, u(s.batch), u(s.seq), u(s.heads), u(s.head_dim), false,
                                      max_blocks_, stream_));
}

void CudaDevice::rope_backward(float* dx, const float* cos, const float* sin, const HeadShape& s) {
  cuda::OpTimer::Scope timed(*timer_, "rope_backward");
  const char* op = "rope_backward";
  check_heads(info_.name, op, s, true);
  if (s.batch == 0 || s.seq == 0) return;
  activate();
  check_range(dx, u(s.batch) * u(s.seq) * u(s.heads) * u(s.head_dim) * 4, "dx", op);
  check_range(cos, u(s.seq) * u(s.head_dim / 2) * 4, "cos", op);
  check_range(sin, u(s.seq) * u(s.head_dim / 2) * 4, "sin", op);
  check_aligned4(info_.name, op, {dx, cos, sin});
  DISTRO_CUDA_CHECK(cuda::launch_rope(dx, cos, sin, u(s.batch), u(s.seq), u(s.heads), u(s.head_dim), true,
                                      max_blocks_, stream_));
}

// Attention as GEMMs around row kernels (docs/cuda.md): per slice of batch entries, bf16 copies of
// the inputs, S = scale Q K^T (one strided-batched GEMM over the heads of a batch entry: head h of
// [seq, heads, head_dim] is a seq x head_dim matrix at offset h * head_dim with row stride
// heads * head_dim), a causal softmax that writes P (bf16, zero above the diagonal) and lse, then
// out = P V written straight into out's layout.
void CudaDevice::attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                   const HeadShape& s) {
  cuda::OpTimer::Scope timed(*timer_, "attention_forward");
  const char* op = "attention_forward";
  check_heads(info_.name, op, s, false);
  if (s.batch == 0 || s.seq == 0) return;
  activate();
  const int64_t T = s.seq, H = s.heads, D = s.head_dim, HD = H * D, THD = T * HD, TT = T * T;
  const uint64_t bytes = u(s.batch) * u(THD) * 4;
  check_range(out, bytes, "out", op), check_range(lse, u(s.batch) * u(H) * u(T) * 4, "lse", op);
  check_range(q, bytes, "q", op), check_range(k, bytes, "k", op), check_range(v, bytes, "v", op);
  check_aligned4(info_.name, op, {out, lse, q, k, v});
  const float scale = 1.0f / std::sqrt(float(D));  // the CPU's attention_scale<float>
  if (use_flash(s, {out, q, k, v})) {
    DISTRO_CUDA_CHECK(cuda::launch_flash_attention_forward(out, lse, q, k, v, s.batch, T, H, D, scale, stream_));
    return;
  }

  const uint64_t per_entry = 3 * u(THD) * 2 + u(H) * u(TT) * (4 + 2);
  const int64_t nb = int64_t(std::clamp<uint64_t>(attention_budget() / per_entry, 1, u(s.batch)));
  Carve c;
  const uint64_t q_at = c.take(u(nb * THD) * 2), k_at = c.take(u(nb * THD) * 2), v_at = c.take(u(nb * THD) * 2);
  const uint64_t s_at = c.take(u(nb * H * TT) * 4), p_at = c.take(u(nb * H * TT) * 2);

  std::lock_guard<std::mutex> lock(model_mu_);
  uint8_t* ws = model_scratch(c.total);
  auto* q16 = reinterpret_cast<uint16_t*>(ws + q_at);
  auto* k16 = reinterpret_cast<uint16_t*>(ws + k_at);
  auto* v16 = reinterpret_cast<uint16_t*>(ws + v_at);
  auto* S = reinterpret_cast<float*>(ws + s_at);
  auto* P = reinterpret_cast<uint16_t*>(ws + p_at);
  cuda::LtGemm& lt = gemm();

  // Per batch entry, batched over heads: scores [T, T] = Q_h K_h^T and out_h = P_h V_h.
  cuda::GemmArgs qk;
  qk.M = T, qk.N = T, qk.K = D, qk.transB = true;
  qk.lda = HD, qk.ldb = HD, qk.ldc = T, qk.strideA = D, qk.strideB = D, qk.strideC = TT, qk.batch = H;
  cuda::GemmArgs pv;
  pv.M = T, pv.N = D, pv.K = T;
  pv.lda = T, pv.ldb = HD, pv.ldc = HD, pv.strideA = TT, pv.strideB = D, pv.strideC = D, pv.batch = H;

  for (int64_t b0 = 0; b0 < s.batch; b0 += nb) {
    const int64_t cnt = std::min(nb, s.batch - b0);
    DISTRO_CUDA_CHECK(cuda::launch_to_bf16(q16, q + b0 * THD, u(cnt * THD), max_blocks_, stream_));
    DISTRO_CUDA_CHECK(cuda::launch_to_bf16(k16, k + b0 * THD, u(cnt * THD), max_blocks_, stream_));
    DISTRO_CUDA_CHECK(cuda::launch_to_bf16(v16, v + b0 * THD, u(cnt * THD), max_blocks_, stream_));
    for (int64_t e = 0; e < cnt; ++e)
      lt.run(qk, q16 + e * THD, k16 + e * THD, S + e * H * TT, scale, 0.0f, stream_);
    DISTRO_CUDA_CHECK(cuda::launch_attention_softmax(P, lse + b0 * H * T, S, u(cnt * H), u(T), max_blocks_, stream_));
    for (int64_t e = 0; e < cnt; ++e)
      lt.run(pv, P + e * H * TT, v16 + e * THD, out + (b0 + e) * THD, 1.0f, 0.0f, stream_);
  }
}

// The backward recomputes S from q and k, P from S and lse, and with dP = dO V^T and
// Dt = rowsum(P * dP): dS = P (dP - Dt); then dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q.
// Dt equals rowsum(dO * out) in exact arithmetic; taken from the same P and dP as the row's dS,
// each row of dS sums to zero up to rounding (a softmax's gradient ignores a shift of its scores),
// so the bf16 rounding of dO and V in dP cannot leak into dQ and dK through a mismatched Dt (a
// one-key row gets exactly zero). out is therefore not read (it is still checked).
void CudaDevice::attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                    const float* k, const float* v, const float* out, const float* lse,
                                    const HeadShape& s) {
  cuda::OpTimer::Scope timed(*timer_, "attention_backward");
  const char* op = "attention_backward";
  check_heads(info_.name, op, s, false);
  if (s.batch == 0 || s.seq == 0) return;
  activate();
  const int64_t T = s.seq, H = s.heads, D = s.head_dim, HD = H * D, THD = T * HD, TT = T * T;
  const uint64_t bytes = u(s.batch) * u(THD) * 4;
  check_range(dq, bytes, "dq", op), check_range(dk, bytes, "dk", op), check_range(dv, bytes, "dv", op);
  check_range(dout, bytes, "dout", op), check_range(q, bytes, "q", op), check_range(k, bytes, "k", op);
  check_range(v, bytes, "v", op), check_range(out, bytes, "out", op);
  check_range(lse, u(s.batch) * u(H) * u(T) * 4, "lse", op);
  check_aligned4(info_.name, op, {dq, dk, dv, dout, q, k, v, out, lse});
  const float scale = 1.0f / std::sqrt(float(D));
  if (use_flash(s, {dq, dk, dv, dout, q, k, v, out})) {
    std::lock_guard<std::mutex> lock(model_mu_);
    // dS kept for the dq product within the attention budget (the GEMM path's), unless
    // DISTRO_CUDA_FLASH_DQ=recompute (A/B timing, tests).
    const char* dq_env = std::getenv("DISTRO_CUDA_FLASH_DQ");
    const uint64_t ds_budget = dq_env && std::string(dq_env) == "recompute" ? 0 : attention_budget();
    const uint64_t bytes = cuda::flash_attention_backward_scratch_bytes(s.batch, T, H, D, ds_budget);
    void* scratch = model_scratch(bytes);
    DISTRO_CUDA_CHECK(cuda::launch_flash_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scratch, bytes,
                                                            s.batch, T, H, D, scale, stream_));
    return;
  }

  const uint64_t per_entry = 4 * u(THD) * 2 + u(H) * u(TT) * (2 * 4 + 2 * 2);
  const int64_t nb = int64_t(std::clamp<uint64_t>(attention_budget() / per_entry, 1, u(s.batch)));
  Carve c;
  const uint64_t q_at = c.take(u(nb * THD) * 2), k_at = c.take(u(nb * THD) * 2), v_at = c.take(u(nb * THD) * 2);
  const uint64_t do_at = c.take(u(nb * THD) * 2);
  const uint64_t s_at = c.take(u(nb * H * TT) * 4), dp_at = c.take(u(nb * H * TT) * 4);
  const uint64_t p_at = c.take(u(nb * H * TT) * 2), ds_at = c.take(u(nb * H * TT) * 2);

  std::lock_guard<std::mutex> lock(model_mu_);
  uint8_t* ws = model_scratch(c.total);
  auto* q16 = reinterpret_cast<uint16_t*>(ws + q_at);
  auto* k16 = reinterpret_cast<uint16_t*>(ws + k_at);
  auto* v16 = reinterpret_cast<uint16_t*>(ws + v_at);
  auto* do16 = reinterpret_cast<uint16_t*>(ws + do_at);
  auto* S = reinterpret_cast<float*>(ws + s_at);
  auto* dP = reinterpret_cast<float*>(ws + dp_at);
  auto* P = reinterpret_cast<uint16_t*>(ws + p_at);
  auto* dS = reinterpret_cast<uint16_t*>(ws + ds_at);
  cuda::LtGemm& lt = gemm();

  // [T, T] = X_h Y_h^T for S = Q K^T and dP = dO V^T.
  cuda::GemmArgs xyt;
  xyt.M = T, xyt.N = T, xyt.K = D, xyt.transB = true;
  xyt.lda = HD, xyt.ldb = HD, xyt.ldc = T, xyt.strideA = D, xyt.strideB = D, xyt.strideC = TT, xyt.batch = H;
  // [T, D] = W_h Z_h for dQ = dS K (trans false) and dV = P^T dO, dK = dS^T Q (trans true).
  cuda::GemmArgs wz;
  wz.M = T, wz.N = D, wz.K = T;
  wz.lda = T, wz.ldb = HD, wz.ldc = HD, wz.strideA = TT, wz.strideB = D, wz.strideC = D, wz.batch = H;
  cuda::GemmArgs wtz = wz;
  wtz.transA = true;

  for (int64_t b0 = 0; b0 < s.batch; b0 += nb) {
    const int64_t cnt = std::min(nb, s.batch - b0);
    DISTRO_CUDA_CHECK(cuda::launch_to_bf16(q16, q + b0 * THD, u(cnt * THD), max_blocks_, stream_));
    DISTRO_CUDA_CHECK(cuda::launch_to_bf16(k16, k + b0 * THD, u(cnt * THD), max_blocks_, stream_));
    DISTRO_CUDA_CHECK(cuda::launch_to_bf16(v16, v + b0 * THD, u(cnt * THD), max_blocks_, stream_));
    DISTRO_CUDA_CHECK(cuda::launch_to_bf16(do16, dout + b0 * THD, u(cnt * THD), max_blocks_, stream_));
    for (int64_t e = 0; e < cnt; ++e) {
      lt.run(xyt, q16 + e * THD, k16 + e * THD, S + e * H * TT, scale, 0.0f, stream_);
      lt.run(xyt, do16 + e * THD, v16 + e * THD, dP + e * H * TT, 1.0f, 0.0f, stream_);
    }
    DISTRO_CUDA_CHECK(
        cuda::launch_attention_softmax_backward(P, dS, S, dP, lse + b0 * H * T, u(cnt * H), u(T), max_blocks_, stream_));
    for (int64_t e = 0; e < cnt; ++e) {
      const int64_t at = (b0 + e) * THD;
      lt.run(wtz, P + e * H * TT, do16 + e * THD, dv + at, 1.0f, 0.0f, stream_);
      lt.run(wz, dS + e * H * TT, k16 + e * THD, dq + at, scale, 0.0f, stream_);
      lt.run(wtz, dS + e * H * TT, q16 + e * THD, dk + at, scale, 0.0f, stream_);
    }
  }
}

void CudaDevice::swiglu_forward(float* h, const float* g, const float* u_, int64_t n) {
  cuda::OpTimer::Scope timed(*timer_, "swiglu_forward");
  const char* op = "swiglu_forward";
  check_size(info_.name, op, "n", n);
  if (n == 0) return;
  activate();
  check_range(h, u(n) * 4, "h", op), check_range(g, u(n) * 4, "g", op), check_range(u_, u(n) * 4, "u", op);
  check_aligned4(info_.name, op, {h, g, u_});
  DISTRO_CUDA_CHECK(cuda::launch_swiglu_forward(h, g, u_, u(n), max_blocks_, stream_));
}

void CudaDevice::swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u_, int64_t n) {
  cuda::OpTimer::Scope timed(*timer_, "swiglu_backward");
  const char* op = "swiglu_backward";
  check_size(info_.name, op, "n", n);
  if (n == 0) return;
  activate();
  check_range(dg, u(n) * 4, "dg", op), check_range(du, u(n) * 4, "du", op), check_range(dh, u(n) * 4, "dh", op);
  check_range(g, u(n) * 4, "g", op), check_range(u_, u(n) * 4, "u", op);
  check_aligned4(info_.name, op, {dg, du, dh, g, u_});
  DISTRO_CUDA_CHECK(cuda::launch_swiglu_backward(dg, du, dh, g, u_, u(n), max_blocks_, stream_));
}

void CudaDevice::cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets,
                               int64_t rows, int64_t vocab, float scale) {
  cuda::OpTimer::Scope timed(*timer_, "cross_entropy");
  const char* op = "cross_entropy";
  check_size(info_.name, op, "rows", rows);
  if (vocab <= 0) fail(Code::invalid_argument, where(info_.name, op) + "vocab must be positive");
  if (rows == 0) return;
  activate();
  check_range(loss, u(rows) * 4, "loss", op), check_range(logits, u(rows) * u(vocab) * 4, "logits", op);
  if (dlogits) check_range(dlogits, u(rows) * u(vocab) * 4, "dlogits", op);
  check_range(targets, u(rows) * 4, "targets", op);
  check_aligned4(info_.name, op, {loss, dlogits, logits, targets});
  std::lock_guard<std::mutex> lock(model_mu_);
  model_ids(targets, rows, vocab, "targets", op);
  DISTRO_CUDA_CHECK(
      cuda::launch_cross_entropy(loss, dlogits, logits, targets, u(rows), u(vocab), scale, max_blocks_, stream_));
}

void CudaDevice::add(float* out, const float* a, const float* b, int64_t n) {
  cuda::OpTimer::Scope timed(*timer_, "add");
  const char* op = "add";
  check_size(info_.name, op, "n", n);
  if (n == 0) return;
  activate();
  check_range(out, u(n) * 4, "out", op), check_range(a, u(n) * 4, "a", op), check_range(b, u(n) * 4, "b", op);
  check_aligned4(info_.name, op, {out, a, b});
  DISTRO_CUDA_CHECK(cuda::launch_add(out, a, b, u(n), max_blocks_, stream_));
}

void CudaDevice::axpy(float* y, const float* x, float alpha, int64_t n) {
  cuda::OpTimer::Scope timed(*timer_, "axpy");
  const char* op = "axpy";
  check_size(info_.name, op, "n", n);
  if (n == 0) return;
  activate();
  check_range(y, u(n) * 4, "y", op), check_range(x, u(n) * 4, "x", op);
  check_aligned4(info_.name, op, {y, x});
  DISTRO_CUDA_CHECK(cuda::launch_axpy(y, x, alpha, u(n), max_blocks_, stream_));
}

void CudaDevice::scale(float* x, float alpha, int64_t n) {
  cuda::OpTimer::Scope timed(*timer_, "scale");
  const char* op = "scale";
  check_size(info_.name, op, "n", n);
  if (n == 0) return;
  activate();
  check_range(x, u(n) * 4, "x", op);
  check_aligned4(info_.name, op, {x});
  DISTRO_CUDA_CHECK(cuda::launch_scale(x, alpha, u(n), max_blocks_, stream_));
}

}  // namespace distro

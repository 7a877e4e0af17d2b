// The CPU device's model ops: argument checks, then the kernels of cpu_kernels.hpp in float32 over
// independent slices (rows, columns, heads, matmul tasks) spread across the thread pool. A slice's
// result never depends on which worker computes it or where the slices are cut.
#include <algorithm>
#include <string>
#include <vector>

#include "backend/cpu_device.hpp"
#include "backend/cpu_kernels.hpp"

namespace distro {

namespace {

namespace k = kernels;

// Below about this many elements of work per slice, waking the pool costs more than it saves.
constexpr int64_t kGrainElems = 1 << 14;

// fn(begin, end) over [0, n) in blocks of `grain` items; one block runs inline without the pool.
template <class F>
void for_blocks(ThreadPool& pool, int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t blocks = (n + grain - 1) / grain;
  pool.parallel_for(uint64_t(blocks), [&](uint64_t b, uint64_t e, unsigned) {
    fn(int64_t(b) * grain, std::min(n, int64_t(e) * grain));
  });
}

// Rows per block so that a block holds about kGrainElems elements.
int64_t row_grain(int64_t elems_per_row) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(elems_per_row, 1)); }

void check_size(const char* op, const char* what, int64_t v) {
  if (v < 0)
    fail(Code::invalid_argument, std::string("op '") + op + "': " + what + " is " + std::to_string(v) +
                                     "; expected >= 0");
}

void check_ptr(const char* op, const char* what, const void* p) {
  if (!p) fail(Code::invalid_argument, std::string("op '") + op + "': " + what + " is null");
}

void check_ids(const char* op, const char* what, const int32_t* ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      fail(Code::invalid_argument, std::string("op '") + op + "': " + what + "[" + std::to_string(i) + "] = " +
                                       std::to_string(ids[i]) + " is outside [0, " + std::to_string(vocab) + ")");
}

void check_heads(const char* op, const HeadShape& s, bool even) {
  check_size(op, "batch", s.batch);
  check_size(op, "seq", s.seq);
  if (s.heads <= 0 || s.head_dim <= 0 || (even && s.head_dim % 2 != 0))
    fail(Code::invalid_argument, std::string("op '") + op + "': heads " + std::to_string(s.heads) +
                                     " and head_dim " + std::to_string(s.head_dim) + " must be positive" +
                                     (even ? " and head_dim even" : ""));
}

}  // namespace

void CpuDevice::matmul(float* C, const float* A, const float* B, int64_t M, int64_t N, int64_t K, bool transA,
                       bool transB, float alpha, float beta) {
  check_size("matmul", "M", M), check_size("matmul", "N", N), check_size("matmul", "K", K);
  if (M == 0 || N == 0) return;
  check_ptr("matmul", "C", C);
  if (K > 0) check_ptr("matmul", "A", A), check_ptr("matmul", "B", B);
  for_blocks(pool_, k::matmul_tasks(M, N), 1, [&](int64_t t0, int64_t t1) {
    // One packed panel per worker, kept between calls so steady-state steps do not allocate.
    thread_local std::vector<float> panel;
    k::matmul_tasks_range(C, A, B, M, N, K, transA, transB, alpha, beta, t0, t1, panel);
  });
}

void CpuDevice::embedding_forward(float* out, const float* table, const int32_t* ids, int64_t n, int64_t vocab,
                                  int64_t dim) {
  check_size("embedding_forward", "n", n), check_size("embedding_forward", "dim", dim);
  if (n == 0 || dim == 0) return;
  check_ptr("embedding_forward", "out", out), check_ptr("embedding_forward", "table", table);
  check_ptr("embedding_forward", "ids", ids);
  check_ids("embedding_forward", "ids", ids, n, vocab);
  for_blocks(pool_, n, row_grain(dim), [&](int64_t b, int64_t e) { k::embedding_forward(out, table, ids, dim, b, e); });
}

void CpuDevice::embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n, int64_t vocab,
                                   int64_t dim) {
  check_size("embedding_backward", "n", n), check_size("embedding_backward", "dim", dim);
  if (n == 0 || dim == 0) return;
  check_ptr("embedding_backward", "dtable", dtable), check_ptr("embedding_backward", "dout", dout);
  check_ptr("embedding_backward", "ids", ids);
  check_ids("embedding_backward", "ids", ids, n, vocab);
  // Group positions by id once, then table rows are independent work.
  // (A thread_local named inside the lambda would be the worker's own, so pass pointers.)
  thread_local std::vector<int64_t> starts, order;
  k::embedding_group(ids, n, vocab, starts, order);
  const int64_t *st = starts.data(), *ord = order.data();
  const int64_t grain = std::max<int64_t>(1, kGrainElems * vocab / std::max<int64_t>(1, (n + vocab) * dim));
  for_blocks(pool_, vocab, grain, [&](int64_t v0, int64_t v1) {
    thread_local std::vector<float> scratch;
    k::embedding_backward(dtable, dout, st, ord, dim, v0, v1, scratch);
  });
}

void CpuDevice::rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t rows, int64_t dim,
                                float eps) {
  check_size("rmsnorm_forward", "rows", rows);
  if (dim <= 0) fail(Code::invalid_argument, "op 'rmsnorm_forward': dim must be positive");
  if (rows == 0) return;
  check_ptr("rmsnorm_forward", "y", y), check_ptr("rmsnorm_forward", "rstd", rstd);
  check_ptr("rmsnorm_forward", "x", x), check_ptr("rmsnorm_forward", "w", w);
  for_blocks(pool_, rows, row_grain(dim), [&](int64_t b, int64_t e) {
    k::rmsnorm_forward(y, rstd, x, w, dim, eps, b, e);
  });
}

void CpuDevice::rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w,
                                 const float* rstd, int64_t rows, int64_t dim) {
  check_size("rmsnorm_backward", "rows", rows);
  if (dim <= 0) fail(Code::invalid_argument, "op 'rmsnorm_backward': dim must be positive");
  if (rows == 0) return;
  check_ptr("rmsnorm_backward", "dx", dx), check_ptr("rmsnorm_backward", "dw", dw);
  check_ptr("rmsnorm_backward", "dy", dy), check_ptr("rmsnorm_backward", "x", x);
  check_ptr("rmsnorm_backward", "w", w), check_ptr("rmsnorm_backward", "rstd", rstd);
  // Two passes: dx is independent per row; dw reduces over rows, so it is split by columns instead.
  for_blocks(pool_, rows, row_grain(dim), [&](int64_t b, int64_t e) {
    k::rmsnorm_backward_input(dx, dy, x, w, rstd, dim, b, e);
  });
  for_blocks(pool_, dim, row_grain(rows), [&](int64_t c0, int64_t c1) {
    thread_local std::vector<float> scratch;
    k::rmsnorm_backward_weight(dw, dy, x, rstd, rows, dim, c0, c1, scratch);
  });
}

void CpuDevice::rope_forward(float* x, const float* cos, const float* sin, const HeadShape& s) {
  check_heads("rope_forward", s, true);
  if (s.batch == 0 || s.seq == 0) return;
  check_ptr("rope_forward", "x", x), check_ptr("rope_forward", "cos", cos), check_ptr("rope_forward", "sin", sin);
  for_blocks(pool_, s.batch * s.seq, row_grain(s.heads * s.head_dim), [&](int64_t b, int64_t e) {
    k::rope(x, cos, sin, s.seq, s.heads, s.head_dim, false, b, e);
  });
}

void CpuDevice::rope_backward(float* dx, const float* cos, const float* sin, const HeadShape& s) {
  check_heads("rope_backward", s, true);
  if (s.batch == 0 || s.seq == 0) return;
  check_ptr("rope_backward", "dx", dx), check_ptr("rope_backward", "cos", cos);
  check_ptr("rope_backward", "sin", sin);
  for_blocks(pool_, s.batch * s.seq, row_grain(s.heads * s.head_dim), [&](int64_t b, int64_t e) {
    k::rope(dx, cos, sin, s.seq, s.heads, s.head_dim, true, b, e);
  });
}

void CpuDevice::attention_forward(float* out, float* lse, const float* q, const float* k_, const float* v,
                                  const HeadShape& s) {
  check_heads("attention_forward", s, false);
  if (s.batch == 0 || s.seq == 0) return;
  check_ptr("attention_forward", "out", out), check_ptr("attention_forward", "lse", lse);
  check_ptr("attention_forward", "q", q), check_ptr("attention_forward", "k", k_);
  check_ptr("attention_forward", "v", v);
  const k::AttentionDims d{s.batch, s.seq, s.heads, s.head_dim};
  for_blocks(pool_, s.batch * s.heads, 1, [&](int64_t b, int64_t e) {
    thread_local k::AttentionScratch<float> ws;
    k::attention_forward(out, lse, q, k_, v, d, b, e, ws);
  });
}

void CpuDevice::attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                                   const float* k_, const float* v, const float* out, const float* lse,
                                   const HeadShape& s) {
  check_heads("attention_backward", s, false);
  if (s.batch == 0 || s.seq == 0) return;
  check_ptr("attention_backward", "dq", dq), check_ptr("attention_backward", "dk", dk);
  check_ptr("attention_backward", "dv", dv), check_ptr("attention_backward", "dout", dout);
  check_ptr("attention_backward", "q", q), check_ptr("attention_backward", "k", k_);
  check_ptr("attention_backward", "v", v), check_ptr("attention_backward", "out", out);
  check_ptr("attention_backward", "lse", lse);
  const k::AttentionDims d{s.batch, s.seq, s.heads, s.head_dim};
  for_blocks(pool_, s.batch * s.heads, 1, [&](int64_t b, int64_t e) {
    thread_local k::AttentionScratch<float> ws;
    k::attention_backward(dq, dk, dv, dout, q, k_, v, out, lse, d, b, e, ws);
  });
}

void CpuDevice::swiglu_forward(float* h, const float* g, const float* u, int64_t n) {
  check_size("swiglu_forward", "n", n);
  if (n == 0) return;
  check_ptr("swiglu_forward", "h", h), check_ptr("swiglu_forward", "g", g), check_ptr("swiglu_forward", "u", u);
  for_blocks(pool_, n, kGrainElems, [&](int64_t b, int64_t e) { k::swiglu_forward(h, g, u, b, e); });
}

void CpuDevice::swiglu_backward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n) {
  check_size("swiglu_backward", "n", n);
  if (n == 0) return;
  check_ptr("swiglu_backward", "dg", dg), check_ptr("swiglu_backward", "du", du);
  check_ptr("swiglu_backward", "dh", dh), check_ptr("swiglu_backward", "g", g);
  check_ptr("swiglu_backward", "u", u);
  for_blocks(pool_, n, kGrainElems, [&](int64_t b, int64_t e) { k::swiglu_backward(dg, du, dh, g, u, b, e); });
}

void CpuDevice::cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets,
                              int64_t rows, int64_t vocab, float scale) {
  check_size("cross_entropy", "rows", rows);
  if (vocab <= 0) fail(Code::invalid_argument, "op 'cross_entropy': vocab must be positive");
  if (rows == 0) return;
  check_ptr("cross_entropy", "loss", loss), check_ptr("cross_entropy", "logits", logits);
  check_ptr("cross_entropy", "targets", targets);
  check_ids("cross_entropy", "targets", targets, rows, vocab);
  for_blocks(pool_, rows, row_grain(vocab), [&](int64_t b, int64_t e) {
    k::cross_entropy(loss, dlogits, logits, targets, vocab, scale, b, e);
  });
}

void CpuDevice::add(float* out, const float* a, const float* b, int64_t n) {
  check_size("add", "n", n);
  if (n == 0) return;
  check_ptr("add", "out", out), check_ptr("add", "a", a), check_ptr("add", "b", b);
  for_blocks(pool_, n, kGrainElems, [&](int64_t i0, int64_t i1) { k::add(out, a, b, i0, i1); });
}

void CpuDevice::axpy(float* y, const float* x, float alpha, int64_t n) {
  check_size("axpy", "n", n);
  if (n == 0) return;
  check_ptr("axpy", "y", y), check_ptr("axpy", "x", x);
  for_blocks(pool_, n, kGrainElems, [&](int64_t i0, int64_t i1) { k::axpy(y, x, alpha, i0, i1); });
}

void CpuDevice::scale(float* x, float alpha, int64_t n) {
  check_size("scale", "n", n);
  if (n == 0) return;
  check_ptr("scale", "x", x);
  for_blocks(pool_, n, kGrainElems, [&](int64_t i0, int64_t i1) { k::scale(x, alpha, i0, i1); });
}

}  // namespace distro

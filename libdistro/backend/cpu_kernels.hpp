// The model ops' CPU kernels, templated on the element type: the CPU device runs them in float32 with
// their work split across its thread pool (cpu_model_ops.cpp); the tests run the same code in float64
// as the reference. Each function computes an independent slice [begin, end) of its output (rows,
// columns, heads or tasks, as named), and every reduction runs in a fixed order inside one call, so
// a result never depends on how the work was split. Layouts and conventions: docs/model.md.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace distro::kernels {

// GCC's -O2 vectoriser (the "very cheap" cost model) leaves loops of unknown trip count scalar, so
// elementwise inner loops go through this: fixed blocks of 8 that it does vectorise, then the rest.
// Each index is still computed on its own, so the result is the same as the plain loop's.
template <class F>
inline void for_each_blocked(int64_t n, F&& f) {
  const int64_t nb = n - n % 8;
  for (int64_t i = 0; i < nb; i += 8) {
#pragma GCC unroll 8
    for (int64_t u = 0; u < 8; ++u) f(i + u);
  }
  for (int64_t i = nb; i < n; ++i) f(i);
}

// y[i] += a * x[i], i < n.
template <class T>
inline void axpy_n(T* __restrict y, T a, const T* __restrict x, int64_t n) {
  for_each_blocked(n, [&](int64_t i) { y[i] += a * x[i]; });
}

// ---------------------------------------------------------------------------------------------------
// matmul: C[M,N] = alpha * op(A) op(B) + beta * C, row-major; A stored [K,M] if transA, B stored
// [N,K] if transB. B is packed per panel of kNR columns ([K][kNR], zero padded) so the micro-kernel
// reads it contiguously; a micro-tile of kMR x kNR accumulators stays in registers (GCC vectorises the
// unrolled column loop at -O2). A task is one panel times one block of kMC rows. Each C element is the
// sum over k = 0..K-1 in order, started from zero, so it does not depend on tiling or tasks.
inline constexpr int64_t kMR = 4;
inline constexpr int64_t kNR = 8;
inline constexpr int64_t kMC = 64;

inline int64_t matmul_panels(int64_t N) { return (N + kNR - 1) / kNR; }
inline int64_t matmul_row_blocks(int64_t M) { return (M + kMC - 1) / kMC; }
inline int64_t matmul_tasks(int64_t M, int64_t N) { return matmul_panels(N) * matmul_row_blocks(M); }

template <class T>
void matmul_pack_panel(T* dst, const T* B, int64_t N, int64_t K, bool transB, int64_t p) {
  const int64_t j0 = p * kNR, nc = std::min(kNR, N - j0);
  if (transB) {
    for (int64_t c = 0; c < kNR; ++c) {
      const T* src = B + (j0 + c) * K;
      for (int64_t k = 0; k < K; ++k) dst[k * kNR + c] = c < nc ? src[k] : T(0);
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const T* src = B + k * N + j0;
      for (int64_t c = 0; c < kNR; ++c) dst[k * kNR + c] = c < nc ? src[c] : T(0);
    }
  }
}

// Rows [i, i + rows) (rows <= kMR) times one packed panel. Missing rows of a short tile repeat the last
// row (the result is not stored), which keeps the inner loop free of branches.
template <class T, bool TransA>
void matmul_micro(T* C, const T* A, const T* panel, int64_t M, int64_t N, int64_t K, T alpha, T beta,
                  int64_t i, int64_t rows, int64_t j0, int64_t nc) {
  T acc[kMR][kNR] = {};
  const T* a[kMR];
  for (int64_t r = 0; r < kMR; ++r) {
    const int64_t ri = i + std::min(r, rows - 1);
    a[r] = TransA ? A + ri : A + ri * K;
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* b = panel + k * kNR;
#pragma GCC unroll 16
    for (int64_t r = 0; r < kMR; ++r) {
      const T av = TransA ? a[r][k * M] : a[r][k];
#pragma GCC unroll 64
      for (int64_t c = 0; c < kNR; ++c) acc[r][c] += av * b[c];
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* crow = C + (i + r) * N + j0;
    if (beta == T(0))
      for (int64_t c = 0; c < nc; ++c) crow[c] = alpha * acc[r][c];
    else
      for (int64_t c = 0; c < nc; ++c) crow[c] = alpha * acc[r][c] + beta * crow[c];
  }
}

// Tasks [t0, t1) (panel-major: task t is panel t / row_blocks, row block t % row_blocks). panel is
// the caller's scratch; it is repacked only when the panel changes.
template <class T>
void matmul_tasks_range(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA,
                        bool transB, T alpha, T beta, int64_t t0, int64_t t1, std::vector<T>& panel) {
  const int64_t rbs = matmul_row_blocks(M);
  panel.resize(size_t(std::max<int64_t>(K, 1) * kNR));
  int64_t packed = -1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t p = t / rbs, rb = t % rbs;
    if (p != packed) matmul_pack_panel(panel.data(), B, N, K, transB, p), packed = p;
    const int64_t j0 = p * kNR, nc = std::min(kNR, N - j0);
    const int64_t i1 = std::min(M, (rb + 1) * kMC);
    for (int64_t i = rb * kMC; i < i1; i += kMR) {
      const int64_t rows = std::min(kMR, i1 - i);
      if (transA)
        matmul_micro<T, true>(C, A, panel.data(), M, N, K, alpha, beta, i, rows, j0, nc);
      else
        matmul_micro<T, false>(C, A, panel.data(), M, N, K, alpha, beta, i, rows, j0, nc);
    }
  }
}

template <class T>
void matmul(T* C, const T* A, const T* B, int64_t M, int64_t N, int64_t K, bool transA, bool transB,
            T alpha, T beta) {
  std::vector<T> panel;
  matmul_tasks_range(C, A, B, M, N, K, transA, transB, alpha, beta, 0, matmul_tasks(M, N), panel);
}

// ---------------------------------------------------------------------------------------------------
// Embedding. Forward: rows [i0, i1) of out; ids are already checked to lie in the table.
template <class T>
void embedding_forward(T* out, const T* table, const int32_t* ids, int64_t dim, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const T* src = table + int64_t(ids[i]) * dim;
    std::copy(src, src + dim, out + i * dim);
  }
}

// Backward, in two steps. embedding_group lists the positions of each id in increasing order
// (a stable counting sort): positions order[starts[v] .. starts[v + 1]) hold id v. Then
// embedding_backward sums, for each table row in [v0, v1), its positions' dout rows in that order
// and adds the sum to the row once, so rows are independent work and each sum has one fixed order.
inline void embedding_group(const int32_t* ids, int64_t n, int64_t vocab, std::vector<int64_t>& starts,
                            std::vector<int64_t>& order) {
  starts.assign(size_t(vocab + 1), 0);
  order.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) ++starts[size_t(ids[i]) + 1];
  for (int64_t v = 0; v < vocab; ++v) starts[size_t(v + 1)] += starts[size_t(v)];
  std::vector<int64_t> next(starts.begin(), starts.end() - 1);
  for (int64_t i = 0; i < n; ++i) order[size_t(next[size_t(ids[i])]++)] = i;
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int64_t* starts, const int64_t* order, int64_t dim,
                        int64_t v0, int64_t v1, std::vector<T>& scratch) {
  scratch.resize(size_t(dim));
  T* acc = scratch.data();
  for (int64_t v = v0; v < v1; ++v) {
    const int64_t s0 = starts[v], s1 = starts[v + 1];
    if (s0 == s1) continue;
    const T* first = dout + order[s0] * dim;
    std::copy(first, first + dim, acc);
    for (int64_t s = s0 + 1; s < s1; ++s) {
      const T* src = dout + order[s] * dim;
      for_each_blocked(dim, [&](int64_t c) { acc[c] += src[c]; });
    }
    T* dst = dtable + v * dim;
    for_each_blocked(dim, [&](int64_t c) { dst[c] += acc[c]; });
  }
}

// ---------------------------------------------------------------------------------------------------
// RMSNorm. Forward, rows [r0, r1): y = (x * rstd) * w, rstd = 1 / sqrt(sum(x^2) / dim + eps).
template <class T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t dim, T eps, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    T ss = 0;
    for (int64_t c = 0; c < dim; ++c) ss += xr[c] * xr[c];
    const T rs = T(1) / std::sqrt(ss / T(dim) + eps);
    rstd[r] = rs;
    for_each_blocked(dim, [&](int64_t c) { yr[c] = (xr[c] * rs) * w[c]; });
  }
}

// Backward of the input, rows [r0, r1), accumulated:
//   dx += rstd * dy * w - x * rstd^3 / dim * sum(dy * w * x).
template <class T>
void rmsnorm_backward_input(T* dx, const T* dy, const T* x, const T* w, const T* rstd, int64_t dim,
                            int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T *xr = x + r * dim, *dyr = dy + r * dim;
    T* dxr = dx + r * dim;
    const T rs = rstd[r];
    T dot = 0;
    for (int64_t c = 0; c < dim; ++c) dot += (dyr[c] * w[c]) * xr[c];
    const T k = dot * (rs * rs * rs) / T(dim);
    for_each_blocked(dim, [&](int64_t c) { dxr[c] += (dyr[c] * w[c]) * rs - xr[c] * k; });
  }
}

// Backward of the weight, columns [c0, c1), accumulated: dw += sum over rows (in row order) of
// dy * x * rstd. scratch holds c1 - c0 partial sums.
template <class T>
void rmsnorm_backward_weight(T* dw, const T* dy, const T* x, const T* rstd, int64_t rows, int64_t dim,
                             int64_t c0, int64_t c1, std::vector<T>& scratch) {
  scratch.assign(size_t(c1 - c0), T(0));
  T* acc = scratch.data();
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * dim + c0, *dyr = dy + r * dim + c0;
    const T rs = rstd[r];
    for_each_blocked(c1 - c0, [&](int64_t c) { acc[c] += (dyr[c] * xr[c]) * rs; });
  }
  for (int64_t c = c0; c < c1; ++c) dw[c] += acc[c - c0];
}

// ---------------------------------------------------------------------------------------------------
// RoPE tables [max_seq, head_dim / 2]: angle(t, i) = t * theta^(-2i / head_dim), computed in double
// and rounded once to T, so every backend and platform starts from the same table bits.
template <class T>
void rope_tables(T* cos_t, T* sin_t, int64_t max_seq, int64_t head_dim, double theta) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(theta, -2.0 * double(i) / double(head_dim));
    for (int64_t t = 0; t < max_seq; ++t) {
      const double a = double(t) * freq;
      cos_t[t * half + i] = T(std::cos(a));
      sin_t[t * half + i] = T(std::sin(a));
    }
  }
}

// Rows [r0, r1) of x viewed as [batch * seq, heads, head_dim] (row = b * seq + t), in place:
// (x0, x1) of pair i -> (x0 cos - x1 sin, x0 sin + x1 cos); inverse rotates by the negative angle.
template <class T>
void rope(T* x, const T* cos_t, const T* sin_t, int64_t seq, int64_t heads, int64_t head_dim, bool inverse,
          int64_t r0, int64_t r1) {
  const int64_t half = head_dim / 2;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t t = r % seq;
    const T *cr = cos_t + t * half, *sr = sin_t + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      T* xh = x + (r * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const T c = cr[i], s = inverse ? -sr[i] : sr[i];
        const T x0 = xh[2 * i], x1 = xh[2 * i + 1];
        xh[2 * i] = x0 * c - x1 * s;
        xh[2 * i + 1] = x0 * s + x1 * c;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Causal attention over (batch, head) pairs [bh0, bh1), bh = b * heads + h. q, k, v, out are
// [batch, seq, heads, head_dim]; lse is [batch, heads, seq]. K (and V in the backward) are transposed
// per head into scratch so the scores of one query are computed for all keys at once, each score
// still summed over the head dimension in order.
struct AttentionDims {
  int64_t batch, seq, heads, head_dim;
};

template <class T>
struct AttentionScratch {
  std::vector<T> kt, vt, s, dp, acc;
};

namespace detail {

// Transposes one head's rows [seq, head_dim] (row stride `stride`) into dst [head_dim, seq].
template <class T>
void transpose_head(T* dst, const T* src, int64_t seq, int64_t head_dim, int64_t stride) {
  for (int64_t j = 0; j < seq; ++j)
    for (int64_t c = 0; c < head_dim; ++c) dst[c * seq + j] = src[j * stride + c];
}

// s[j] = scale * sum_c q[c] * kt[c, j] for j <= t; shared by forward and backward so both see the
// same bits.
// Keys are taken 16 at a time with their partial sums in registers across the whole head dimension.
template <class T>
void attention_scores(T* s, const T* q, const T* kt, int64_t seq, int64_t head_dim, int64_t t, T scale) {
  constexpr int64_t W = 16;
  int64_t j = 0;
  for (; j + W <= t + 1; j += W) {
    T acc[W] = {};
    for (int64_t c = 0; c < head_dim; ++c) {
      const T qc = q[c];
      const T* kc = kt + c * seq + j;
#pragma GCC unroll 16
      for (int64_t u = 0; u < W; ++u) acc[u] += qc * kc[u];
    }
#pragma GCC unroll 16
    for (int64_t u = 0; u < W; ++u) s[j + u] = acc[u] * scale;
  }
  for (; j <= t; ++j) {
    T acc = 0;
    for (int64_t c = 0; c < head_dim; ++c) acc += q[c] * kt[c * seq + j];
    s[j] = acc * scale;
  }
}

}  // namespace detail

template <class T>
T attention_scale(int64_t head_dim) {
  return T(1) / std::sqrt(T(head_dim));
}

template <class T>
void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, const AttentionDims& d,
                       int64_t bh0, int64_t bh1, AttentionScratch<T>& ws) {
  const int64_t S = d.seq, D = d.head_dim, stride = d.heads * D;
  const T scale = attention_scale<T>(D);
  ws.kt.resize(size_t(S * D));
  ws.s.resize(size_t(S));
  ws.acc.resize(size_t(D));
  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t base = (bh / d.heads) * S * stride + (bh % d.heads) * D;
    detail::transpose_head(ws.kt.data(), k + base, S, D, stride);
    for (int64_t t = 0; t < S; ++t) {
      T* s = ws.s.data();
      detail::attention_scores(s, q + base + t * stride, ws.kt.data(), S, D, t, scale);
      T m = s[0];
      for (int64_t j = 1; j <= t; ++j) m = std::max(m, s[j]);
      T sum = 0;
      for (int64_t j = 0; j <= t; ++j) sum += (s[j] = std::exp(s[j] - m));
      T* acc = ws.acc.data();
      std::fill(acc, acc + D, T(0));
      for (int64_t j = 0; j <= t; ++j) axpy_n(acc, s[j], v + base + j * stride, D);
      const T inv = T(1) / sum;
      T* o = out + base + t * stride;
      for_each_blocked(D, [&](int64_t c) { o[c] = acc[c] * inv; });
      lse[bh * S + t] = m + std::log(sum);
    }
  }
}

// With P the recomputed probabilities and dO the output's gradient, per query t:
//   dP_j = dO_t . v_j, Dt = dO_t . out_t, dS_j = P_j (dP_j - Dt),
//   dq_t = scale sum_j dS_j k_j, dk_j += scale dS_j q_t, dv_j += P_j dO_t (in order of t).
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, const AttentionDims& d, int64_t bh0, int64_t bh1,
                        AttentionScratch<T>& ws) {
  const int64_t S = d.seq, D = d.head_dim, stride = d.heads * D;
  const T scale = attention_scale<T>(D);
  ws.kt.resize(size_t(S * D));
  ws.vt.resize(size_t(S * D));
  ws.s.resize(size_t(S));
  ws.dp.resize(size_t(S));
  ws.acc.resize(size_t(D));
  for (int64_t bh = bh0; bh < bh1; ++bh) {
    const int64_t base = (bh / d.heads) * S * stride + (bh % d.heads) * D;
    detail::transpose_head(ws.kt.data(), k + base, S, D, stride);
    detail::transpose_head(ws.vt.data(), v + base, S, D, stride);
    for (int64_t j = 0; j < S; ++j) {
      std::fill(dk + base + j * stride, dk + base + j * stride + D, T(0));
      std::fill(dv + base + j * stride, dv + base + j * stride + D, T(0));
    }
    for (int64_t t = 0; t < S; ++t) {
      const T *qt = q + base + t * stride, *dot = dout + base + t * stride, *ot = out + base + t * stride;
      T *p = ws.s.data(), *dp = ws.dp.data();
      detail::attention_scores(p, qt, ws.kt.data(), S, D, t, scale);
      const T l = lse[bh * S + t];
      for (int64_t j = 0; j <= t; ++j) p[j] = std::exp(p[j] - l);
      detail::attention_scores(dp, dot, ws.vt.data(), S, D, t, T(1));
      T Dt = 0;
      for (int64_t c = 0; c < D; ++c) Dt += dot[c] * ot[c];
      T* acc = ws.acc.data();
      std::fill(acc, acc + D, T(0));
      for (int64_t j = 0; j <= t; ++j) {
        const T ds = p[j] * (dp[j] - Dt);
        axpy_n(acc, ds, k + base + j * stride, D);
        axpy_n(dk + base + j * stride, ds * scale, qt, D);
        axpy_n(dv + base + j * stride, p[j], dot, D);
      }
      T* dqt = dq + base + t * stride;
      for_each_blocked(D, [&](int64_t c) { dqt[c] = acc[c] * scale; });
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// SwiGLU, elements [i0, i1): h = silu(g) * u with silu(g) = g * sigmoid(g).
template <class T>
void swiglu_forward(T* h, const T* g, const T* u, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const T sg = T(1) / (T(1) + std::exp(-g[i]));
    h[i] = (g[i] * sg) * u[i];
  }
}

// dg = dh * u * sigmoid(g) * (1 + g * (1 - sigmoid(g))), du = dh * silu(g).
template <class T>
void swiglu_backward(T* dg, T* du, const T* dh, const T* g, const T* u, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const T gi = g[i], ui = u[i], d = dh[i];
    const T sg = T(1) / (T(1) + std::exp(-gi));
    const T silu = gi * sg;
    dg[i] = (d * ui) * (sg * (T(1) + gi * (T(1) - sg)));
    du[i] = d * silu;
  }
}

// ---------------------------------------------------------------------------------------------------
// Cross-entropy, rows [r0, r1): loss = log(sum exp(l - max)) + max - l[target]; dlogits (if not
// null; may be logits) = (softmax - onehot) * scale. Targets are already checked.
template <class T>
void cross_entropy(T* loss, T* dlogits, const T* logits, const int32_t* targets, int64_t vocab, T scale,
                   int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* l = logits + r * vocab;
    const int64_t tgt = targets[r];
    T m = l[0];
    for (int64_t j = 1; j < vocab; ++j) m = std::max(m, l[j]);
    T sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(l[j] - m);
    loss[r] = std::log(sum) + (m - l[tgt]);
    if (dlogits) {
      T* dl = dlogits + r * vocab;
      const T k = scale / sum;
      for (int64_t j = 0; j < vocab; ++j) dl[j] = std::exp(l[j] - m) * k;
      dl[tgt] -= scale;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Elementwise, [i0, i1).
template <class T>
void add(T* out, const T* a, const T* b, int64_t i0, int64_t i1) {
  T* o = out + i0;
  const T *pa = a + i0, *pb = b + i0;
  for_each_blocked(i1 - i0, [&](int64_t i) { o[i] = pa[i] + pb[i]; });
}
template <class T>
void axpy(T* y, const T* x, T alpha, int64_t i0, int64_t i1) {
  axpy_n(y + i0, alpha, x + i0, i1 - i0);
}
template <class T>
void scale(T* x, T alpha, int64_t i0, int64_t i1) {
  T* p = x + i0;
  for_each_blocked(i1 - i0, [&](int64_t i) { p[i] *= alpha; });
}

}  // namespace distro::kernels

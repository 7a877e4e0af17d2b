// The model ops: each backward against central finite differences of its forward in float64 (the
// templated kernels), each float32 CpuDevice op against the float64 kernel with guard zones around
// its outputs, and bit-identical results for 1, 2 and 3 threads.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "backend/cpu_device.hpp"
#include "backend/cpu_kernels.hpp"

using namespace distro;
namespace k = distro::kernels;

namespace {

using Vec = std::vector<double>;

Vec randn(size_t n, uint64_t seed, double sd = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, sd);
  Vec v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

std::vector<int32_t> randint(size_t n, int32_t hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = int32_t(rng() % uint64_t(hi));
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of loss() with respect to every element of x, against the analytic gradient.
void check_grad(const char* what, Vec& x, const Vec& analytic, const std::function<double()>& loss,
                double h = 1e-5, double tol = 1e-6) {
  REQUIRE(analytic.size() == x.size());
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double lp = loss();
    x[i] = keep - h;
    const double lm = loss();
    x[i] = keep;
    const double num = (lp - lm) / (2 * h);
    worst = std::max(worst, std::abs(num - analytic[i]) / (1.0 + std::abs(num)));
  }
  INFO(what << ": worst error " << worst);
  CHECK(worst < tol);
}

// ---- float32 device runs: guard zones and thread-count independence ----

constexpr size_t kGuard = 67;
constexpr uint32_t kGuardBits = 0x7fc0dead;  // a NaN payload no op writes

// A float buffer with guard zones on both sides, filled with a sentinel.
struct Guarded {
  std::vector<float> buf;
  size_t n;
  explicit Guarded(size_t count) : buf(count + 2 * kGuard), n(count) {
    float g;
    std::memcpy(&g, &kGuardBits, 4);
    std::fill(buf.begin(), buf.end(), g);
  }
  Guarded(size_t count, const Vec& init) : Guarded(count) {
    for (size_t i = 0; i < count; ++i) data()[i] = float(init[i]);
  }
  float* data() { return buf.data() + kGuard; }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i) {
      uint32_t a, b;
      std::memcpy(&a, &buf[i], 4);
      std::memcpy(&b, &buf[kGuard + n + i], 4);
      if (a != kGuardBits || b != kGuardBits) return false;
    }
    return true;
  }
  std::vector<float> values() const { return {buf.begin() + kGuard, buf.begin() + kGuard + long(n)}; }
};

std::vector<float> to_f(const Vec& v) { return {v.begin(), v.end()}; }
Vec to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Rounds v to float and back, so the float64 reference sees exactly the float32 op's inputs.
Vec f32(Vec v) {
  for (auto& x : v) x = double(float(x));
  return v;
}

void check_close(const char* what, const std::vector<float>& got, const Vec& want, double rel) {
  REQUIRE(got.size() == want.size());
  double scale = 0, worst = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  INFO(what << ": max |float32 - float64| = " << worst << ", max |float64| = " << scale);
  CHECK(worst <= rel * std::max(scale, 1e-30));
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// Runs op on CpuDevice(1), (2) and (3); returns the 2-thread outputs after checking guards and that
// the other thread counts give the same bits.
std::vector<std::vector<float>> on_devices(const std::function<std::vector<std::vector<float>>(CpuDevice&)>& op) {
  std::vector<std::vector<float>> ref;
  for (unsigned t : {2u, 1u, 3u}) {
    CpuDevice dev(t);
    auto out = op(dev);
    if (ref.empty()) {
      ref = out;
    } else {
      REQUIRE(out.size() == ref.size());
      for (size_t i = 0; i < out.size(); ++i) {
        INFO("output " << i << " with " << t << " threads");
        CHECK(bit_equal(out[i], ref[i]));
      }
    }
  }
  return ref;
}

#define GUARDS_OK(...)                                  \
  do {                                                  \
    for (const Guarded* g_ : {__VA_ARGS__}) CHECK(g_->guards_intact()); \
  } while (0)

}  // namespace

// ===================================================================================================
// Backward against finite differences, float64.

TEST_CASE("matmul: all transpose cases and their gradients, float64", "[model]") {
  const int64_t M = 13, N = 19, K = 7;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      INFO("transA " << ta << " transB " << tb);
      Vec A = randn(static_cast<size_t>(M * K), 1), B = randn(static_cast<size_t>(K * N), 2), C0 = randn(static_cast<size_t>(M * N), 3);
      const Vec R = randn(static_cast<size_t>(M * N), 4);
      const double alpha = 0.7, beta = -1.3;
      auto at = [&](int64_t i, int64_t kk) { return ta ? A[size_t(kk * M + i)] : A[size_t(i * K + kk)]; };
      auto bt = [&](int64_t kk, int64_t j) { return tb ? B[size_t(j * K + kk)] : B[size_t(kk * N + j)]; };
      // Forward against the naive triple loop.
      Vec C = C0;
      k::matmul(C.data(), A.data(), B.data(), M, N, K, bool(ta), bool(tb), alpha, beta);
      double worst = 0;
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          double s = 0;
          for (int64_t kk = 0; kk < K; ++kk) s += at(i, kk) * bt(kk, j);
          worst = std::max(worst, std::abs(alpha * s + beta * C0[size_t(i * N + j)] - C[size_t(i * N + j)]));
        }
      CHECK(worst < 1e-12);
      // beta == 0 must not read C: NaN in C does not survive.
      Vec Cn(static_cast<size_t>(M * N), std::nan(""));
      k::matmul(Cn.data(), A.data(), B.data(), M, N, K, bool(ta), bool(tb), 1.0, 0.0);
      for (double v : Cn) REQUIRE(std::isfinite(v));

      // Gradients of L = sum(R * C) through matmul calls, as the model uses them:
      // d op(A) = alpha R op(B)^T, d op(B) = alpha op(A)^T R.
      auto loss = [&] {
        Vec c = C0;
        k::matmul(c.data(), A.data(), B.data(), M, N, K, bool(ta), bool(tb), alpha, beta);
        return dot(c, R);
      };
      Vec dA(A.size()), dB(B.size());
      if (!ta)  // dA [M,K] = R [M,N] . op(B)^T
        k::matmul(dA.data(), R.data(), B.data(), M, K, N, false, !tb, alpha, 0.0);
      else  // dA stored [K,M] = op(B) [K,N] . R^T
        k::matmul(dA.data(), B.data(), R.data(), K, M, N, bool(tb), true, alpha, 0.0);
      if (!tb)  // dB [K,N] = op(A)^T . R
        k::matmul(dB.data(), A.data(), R.data(), K, N, M, !ta, false, alpha, 0.0);
      else  // dB stored [N,K] = R^T . op(A)
        k::matmul(dB.data(), R.data(), A.data(), N, K, M, true, bool(ta), alpha, 0.0);
      check_grad("dA", A, dA, loss);
      check_grad("dB", B, dB, loss);
    }
}

TEST_CASE("matmul: tiles, panels and row blocks at their edges, float64", "[model]") {
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {5, 9, 3}, {130, 17, 33}, {64, 8, 0},
                        {3, 70, 129}}) {
    INFO("M " << M << " N " << N << " K " << K);
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        Vec A = randn(static_cast<size_t>(M * K), 10), B = randn(static_cast<size_t>(K * N), 11), C = randn(static_cast<size_t>(M * N), 12);
        Vec want = C;
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double s = 0;
            for (int64_t kk = 0; kk < K; ++kk)
              s += (ta ? A[size_t(kk * M + i)] : A[size_t(i * K + kk)]) *
                   (tb ? B[size_t(j * K + kk)] : B[size_t(kk * N + j)]);
            want[size_t(i * N + j)] = 2.0 * s + 0.5 * C[size_t(i * N + j)];
          }
        k::matmul(C.data(), A.data(), B.data(), M, N, K, bool(ta), bool(tb), 2.0, 0.5);
        double worst = 0;
        for (size_t i = 0; i < C.size(); ++i) worst = std::max(worst, std::abs(C[i] - want[i]));
        CHECK(worst < 1e-11);
      }
  }
}

TEST_CASE("embedding: backward scatter-adds repeated ids, float64", "[model]") {
  const int64_t n = 11, vocab = 5, dim = 6;
  Vec table = randn(static_cast<size_t>(vocab * dim), 20);
  const Vec R = randn(static_cast<size_t>(n * dim), 21);
  auto ids = randint(size_t(n), int32_t(vocab), 22);
  ids[3] = ids[7] = ids[9] = 2;  // repeats
  auto loss = [&] {
    Vec out(static_cast<size_t>(n * dim));
    k::embedding_forward(out.data(), table.data(), ids.data(), dim, 0, n);
    return dot(out, R);
  };
  std::vector<int64_t> starts, order;
  k::embedding_group(ids.data(), n, vocab, starts, order);
  CHECK(starts[2 + 1] - starts[2] >= 3);
  for (int64_t v = 0; v < vocab; ++v)
    for (int64_t s = starts[size_t(v)]; s < starts[size_t(v) + 1]; ++s) {
      CHECK(ids[size_t(order[size_t(s)])] == v);
      if (s > starts[size_t(v)]) CHECK(order[size_t(s)] > order[size_t(s) - 1]);  // increasing positions
    }
  Vec dt(table.size(), 0.0), scratch;
  k::embedding_backward(dt.data(), R.data(), starts.data(), order.data(), dim, 0, vocab, scratch);
  check_grad("dtable", table, dt, loss);
}

TEST_CASE("rmsnorm: backward of input and weight, accumulating, float64", "[model]") {
  const int64_t rows = 5, dim = 9;
  const double eps = 1e-5;
  Vec x = randn(static_cast<size_t>(rows * dim), 30), w = randn(static_cast<size_t>(dim), 31, 0.5);
  for (auto& v : w) v += 1.0;
  const Vec R = randn(static_cast<size_t>(rows * dim), 32);
  Vec y(x.size()), rstd(static_cast<size_t>(rows));
  auto loss = [&] {
    k::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), dim, eps, 0, rows);
    return dot(y, R);
  };
  loss();
  // Start from nonzero gradients to check that both outputs accumulate.
  const Vec dx0 = randn(x.size(), 33), dw0 = randn(w.size(), 34);
  Vec dx = dx0, dw = dw0;
  k::rmsnorm_backward_input(dx.data(), R.data(), x.data(), w.data(), rstd.data(), dim, 0, rows);
  std::vector<double> scratch;
  k::rmsnorm_backward_weight(dw.data(), R.data(), x.data(), rstd.data(), rows, dim, 0, dim, scratch);
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= dx0[i];
  for (size_t i = 0; i < dw.size(); ++i) dw[i] -= dw0[i];
  check_grad("dx", x, dx, loss, 1e-5, 1e-6);
  check_grad("dw", w, dw, loss, 1e-5, 1e-6);
  // Forward: each row has unit mean square before the weight (eps aside).
  Vec ones(static_cast<size_t>(dim), 1.0);
  k::rmsnorm_forward(y.data(), rstd.data(), x.data(), ones.data(), dim, 0.0, 0, rows);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t c = 0; c < dim; ++c) ms += y[size_t(r * dim + c)] * y[size_t(r * dim + c)];
    CHECK(ms / double(dim) == Approx(1.0).epsilon(1e-12));
  }
}

TEST_CASE("rope: interleaved pairs, inverse, and backward, float64", "[model]") {
  const int64_t B = 2, T = 5, H = 3, D = 8, half = D / 2;
  Vec cs(static_cast<size_t>(T * half)), sn(cs.size());
  k::rope_tables(cs.data(), sn.data(), T, D, 10000.0);
  // Table values: angle(t, i) = t * 10000^(-2i/D).
  CHECK(cs[size_t(3 * half + 1)] == Approx(std::cos(3.0 * std::pow(10000.0, -2.0 / 8))).epsilon(1e-15));
  CHECK(sn[size_t(2 * half + 0)] == Approx(std::sin(2.0)).epsilon(1e-15));
  Vec x = randn(static_cast<size_t>(B * T * H * D), 40);
  const Vec R = randn(x.size(), 41);
  // The pair (2i, 2i+1) at position t is rotated by angle(t, i): check one element by hand.
  Vec y = x;
  k::rope(y.data(), cs.data(), sn.data(), T, H, D, false, 0, B * T);
  const size_t base = size_t(((1 * T + 3) * H + 2) * D);  // b 1, t 3, head 2
  const double c = cs[size_t(3 * half + 1)], s = sn[size_t(3 * half + 1)];
  CHECK(y[base + 2] == Approx(x[base + 2] * c - x[base + 3] * s).epsilon(1e-14));
  CHECK(y[base + 3] == Approx(x[base + 2] * s + x[base + 3] * c).epsilon(1e-14));
  // Position 0 is the identity.
  for (int64_t i = 0; i < H * D; ++i) CHECK(y[size_t(i)] == x[size_t(i)]);
  // Inverse undoes forward.
  Vec z = y;
  k::rope(z.data(), cs.data(), sn.data(), T, H, D, true, 0, B * T);
  for (size_t i = 0; i < x.size(); ++i) CHECK(z[i] == Approx(x[i]).margin(1e-14));
  auto loss = [&] {
    Vec t = x;
    k::rope(t.data(), cs.data(), sn.data(), T, H, D, false, 0, B * T);
    return dot(t, R);
  };
  Vec dx = R;
  k::rope(dx.data(), cs.data(), sn.data(), T, H, D, true, 0, B * T);
  check_grad("dx", x, dx, loss);
}

TEST_CASE("attention: causal forward and backward, float64", "[model]") {
  const k::AttentionDims d{2, 6, 2, 4};
  const size_t n = size_t(d.batch * d.seq * d.heads * d.head_dim);
  Vec q = randn(n, 50), kk = randn(n, 51), v = randn(n, 52);
  const Vec R = randn(n, 53);
  k::AttentionScratch<double> ws;
  Vec out(n), lse(static_cast<size_t>(d.batch * d.heads * d.seq));
  auto loss = [&] {
    k::attention_forward(out.data(), lse.data(), q.data(), kk.data(), v.data(), d, 0, d.batch * d.heads, ws);
    return dot(out, R);
  };
  loss();
  // Forward against the textbook formula for one (b, h, t).
  {
    const int64_t b = 1, h = 1, t = 4, stride = d.heads * d.head_dim;
    auto at = [&](const Vec& a, int64_t j, int64_t c) { return a[size_t((b * d.seq + j) * stride + h * d.head_dim + c)]; };
    std::vector<double> sc;
    double m = -1e300, sum = 0;
    for (int64_t j = 0; j <= t; ++j) {
      double s = 0;
      for (int64_t c = 0; c < d.head_dim; ++c) s += at(q, t, c) * at(kk, j, c);
      sc.push_back(s / std::sqrt(double(d.head_dim)));
      m = std::max(m, sc.back());
    }
    for (double s : sc) sum += std::exp(s - m);
    for (int64_t c = 0; c < d.head_dim; ++c) {
      double o = 0;
      for (int64_t j = 0; j <= t; ++j) o += std::exp(sc[size_t(j)] - m) / sum * at(v, j, c);
      CHECK(at(out, t, c) == Approx(o).epsilon(1e-12));
    }
    CHECK(lse[size_t((b * d.heads + h) * d.seq + t)] == Approx(m + std::log(sum)).epsilon(1e-12));
    // Causality: the first query attends only to itself.
    for (int64_t c = 0; c < d.head_dim; ++c) CHECK(at(out, 0, c) == Approx(at(v, 0, c)).epsilon(1e-12));
  }
  Vec dq(n), dk(n), dv(n);
  k::attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), kk.data(), v.data(), out.data(),
                        lse.data(), d, 0, d.batch * d.heads, ws);
  check_grad("dq", q, dq, loss);
  check_grad("dk", kk, dk, loss);
  check_grad("dv", v, dv, loss);
}

TEST_CASE("swiglu: forward and backward, float64", "[model]") {
  const int64_t n = 40;
  Vec g = randn(static_cast<size_t>(n), 60, 3.0), u = randn(static_cast<size_t>(n), 61);
  const Vec R = randn(static_cast<size_t>(n), 62);
  Vec h(static_cast<size_t>(n));
  k::swiglu_forward(h.data(), g.data(), u.data(), 0, n);
  for (int64_t i = 0; i < n; ++i)
    CHECK(h[size_t(i)] == Approx(g[size_t(i)] / (1 + std::exp(-g[size_t(i)])) * u[size_t(i)]).epsilon(1e-14));
  auto loss = [&] {
    k::swiglu_forward(h.data(), g.data(), u.data(), 0, n);
    return dot(h, R);
  };
  Vec dg(static_cast<size_t>(n)), du(static_cast<size_t>(n));
  k::swiglu_backward(dg.data(), du.data(), R.data(), g.data(), u.data(), 0, n);
  check_grad("dg", g, dg, loss);
  check_grad("du", u, du, loss);
}

TEST_CASE("cross-entropy: loss, gradient, in place, float64", "[model]") {
  const int64_t rows = 4, V = 7;
  Vec logits = randn(static_cast<size_t>(rows * V), 70, 2.0);
  const auto tg = randint(size_t(rows), int32_t(V), 71);
  const double scale = 1.0 / double(rows);
  Vec loss_rows(static_cast<size_t>(rows));
  auto loss = [&] {
    k::cross_entropy(loss_rows.data(), static_cast<double*>(nullptr), logits.data(), tg.data(), V, scale, 0, rows);
    double s = 0;
    for (double l : loss_rows) s += l;
    return s * scale;
  };
  loss();
  for (int64_t r = 0; r < rows; ++r) {
    double z = 0;
    for (int64_t j = 0; j < V; ++j) z += std::exp(logits[size_t(r * V + j)]);
    CHECK(loss_rows[size_t(r)] == Approx(std::log(z) - logits[size_t(r * V + tg[size_t(r)])]).epsilon(1e-13));
  }
  Vec dl(logits.size());
  k::cross_entropy(loss_rows.data(), dl.data(), logits.data(), tg.data(), V, scale, 0, rows);
  check_grad("dlogits", logits, dl, loss);
  // In place gives the same.
  Vec inplace = logits;
  k::cross_entropy(loss_rows.data(), inplace.data(), inplace.data(), tg.data(), V, scale, 0, rows);
  for (size_t i = 0; i < dl.size(); ++i) CHECK(inplace[i] == dl[i]);
}

// ===================================================================================================
// float32 CpuDevice ops against the float64 kernels; guards; 1, 2, 3 threads give the same bits.

TEST_CASE("device matmul matches float64 and does not depend on threads", "[model]") {
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{130, 45, 67}, {7, 300, 20}, {200, 3, 150}})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        INFO("M " << M << " N " << N << " K " << K << " transA " << ta << " transB " << tb);
        const Vec A = f32(randn(static_cast<size_t>(M * K), 100)), B = f32(randn(static_cast<size_t>(K * N), 101));
        const Vec C0 = f32(randn(static_cast<size_t>(M * N), 102));
        for (float beta : {0.0f, 1.0f, -0.5f}) {
          auto out = on_devices([&](CpuDevice& dev) {
            Guarded C(static_cast<size_t>(M * N), C0);
            auto a = to_f(A), b = to_f(B);
            dev.matmul(C.data(), a.data(), b.data(), M, N, K, bool(ta), bool(tb), 1.5f, beta);
            GUARDS_OK(&C);
            return std::vector<std::vector<float>>{C.values()};
          });
          Vec want = C0;
          k::matmul(want.data(), A.data(), B.data(), M, N, K, bool(ta), bool(tb), 1.5, double(beta));
          check_close("C", out[0], want, 2e-6);
        }
      }
}

TEST_CASE("device embedding forward and backward", "[model]") {
  const int64_t n = 300, vocab = 23, dim = 130;
  const Vec table = f32(randn(static_cast<size_t>(vocab * dim), 110)), dout = f32(randn(static_cast<size_t>(n * dim), 111));
  const Vec dt0 = f32(randn(static_cast<size_t>(vocab * dim), 112));
  const auto ids = randint(size_t(n), int32_t(vocab), 113);
  auto out = on_devices([&](CpuDevice& dev) {
    Guarded o(static_cast<size_t>(n * dim)), dt(static_cast<size_t>(vocab * dim), dt0);
    auto t = to_f(table), d = to_f(dout);
    dev.embedding_forward(o.data(), t.data(), ids.data(), n, vocab, dim);
    dev.embedding_backward(dt.data(), d.data(), ids.data(), n, vocab, dim);
    GUARDS_OK(&o, &dt);
    return std::vector<std::vector<float>>{o.values(), dt.values()};
  });
  Vec o(static_cast<size_t>(n * dim)), dt = dt0;
  k::embedding_forward(o.data(), table.data(), ids.data(), dim, 0, n);
  std::vector<int64_t> starts, order;
  Vec scratch;
  k::embedding_group(ids.data(), n, vocab, starts, order);
  k::embedding_backward(dt.data(), dout.data(), starts.data(), order.data(), dim, 0, vocab, scratch);
  check_close("out", out[0], o, 0.0);
  check_close("dtable", out[1], dt, 1e-6);
}

TEST_CASE("device rmsnorm forward and backward", "[model]") {
  const int64_t rows = 333, dim = 96;
  const Vec x = f32(randn(static_cast<size_t>(rows * dim), 120, 3.0)), w = f32(randn(static_cast<size_t>(dim), 121));
  const Vec dy = f32(randn(static_cast<size_t>(rows * dim), 122)), dx0 = f32(randn(static_cast<size_t>(rows * dim), 123));
  const Vec dw0 = f32(randn(static_cast<size_t>(dim), 124));
  auto out = on_devices([&](CpuDevice& dev) {
    Guarded y(static_cast<size_t>(rows * dim)), rstd(static_cast<size_t>(rows)), dx(static_cast<size_t>(rows * dim), dx0), dw(static_cast<size_t>(dim), dw0);
    auto xf = to_f(x), wf = to_f(w), dyf = to_f(dy);
    dev.rmsnorm_forward(y.data(), rstd.data(), xf.data(), wf.data(), rows, dim, 1e-5f);
    dev.rmsnorm_backward(dx.data(), dw.data(), dyf.data(), xf.data(), wf.data(), rstd.data(), rows, dim);
    GUARDS_OK(&y, &rstd, &dx, &dw);
    return std::vector<std::vector<float>>{y.values(), rstd.values(), dx.values(), dw.values()};
  });
  Vec y(static_cast<size_t>(rows * dim)), rstd(static_cast<size_t>(rows)), dx = dx0, dw = dw0;
  std::vector<double> scratch;
  k::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), dim, 1e-5, 0, rows);
  k::rmsnorm_backward_input(dx.data(), dy.data(), x.data(), w.data(), rstd.data(), dim, 0, rows);
  k::rmsnorm_backward_weight(dw.data(), dy.data(), x.data(), rstd.data(), rows, dim, 0, dim, scratch);
  check_close("y", out[0], y, 1e-6);
  check_close("rstd", out[1], rstd, 1e-6);
  check_close("dx", out[2], dx, 1e-6);
  check_close("dw", out[3], dw, 1e-5);
}

TEST_CASE("device rope forward and backward", "[model]") {
  const HeadShape s{3, 50, 4, 16};
  const int64_t n = s.batch * s.seq * s.heads * s.head_dim, half = s.head_dim / 2;
  std::vector<float> cs(size_t(s.seq * half)), sn(cs.size());
  k::rope_tables(cs.data(), sn.data(), s.seq, s.head_dim, 10000.0);
  const Vec x = f32(randn(static_cast<size_t>(n), 130));
  auto out = on_devices([&](CpuDevice& dev) {
    Guarded a(static_cast<size_t>(n), x), b(static_cast<size_t>(n), x);
    dev.rope_forward(a.data(), cs.data(), sn.data(), s);
    dev.rope_backward(b.data(), cs.data(), sn.data(), s);
    GUARDS_OK(&a, &b);
    return std::vector<std::vector<float>>{a.values(), b.values()};
  });
  const Vec csd = to_d(cs), snd = to_d(sn);
  Vec a = x, b = x;
  k::rope(a.data(), csd.data(), snd.data(), s.seq, s.heads, s.head_dim, false, 0, s.batch * s.seq);
  k::rope(b.data(), csd.data(), snd.data(), s.seq, s.heads, s.head_dim, true, 0, s.batch * s.seq);
  check_close("forward", out[0], a, 1e-6);
  check_close("backward", out[1], b, 1e-6);
}

TEST_CASE("device attention forward and backward", "[model]") {
  const HeadShape s{2, 37, 3, 8};
  const k::AttentionDims d{s.batch, s.seq, s.heads, s.head_dim};
  const size_t n = size_t(s.batch * s.seq * s.heads * s.head_dim), nl = size_t(s.batch * s.heads * s.seq);
  const Vec q = f32(randn(n, 140, 2.0)), kk = f32(randn(n, 141, 2.0)), v = f32(randn(n, 142));
  const Vec dout = f32(randn(n, 143));
  auto out = on_devices([&](CpuDevice& dev) {
    Guarded o(n), lse(nl), dq(n), dk(n), dv(n);
    auto qf = to_f(q), kf = to_f(kk), vf = to_f(v), df = to_f(dout);
    dev.attention_forward(o.data(), lse.data(), qf.data(), kf.data(), vf.data(), s);
    dev.attention_backward(dq.data(), dk.data(), dv.data(), df.data(), qf.data(), kf.data(), vf.data(), o.data(),
                           lse.data(), s);
    GUARDS_OK(&o, &lse, &dq, &dk, &dv);
    return std::vector<std::vector<float>>{o.values(), lse.values(), dq.values(), dk.values(), dv.values()};
  });
  k::AttentionScratch<double> ws;
  Vec o(n), lse(nl), dq(n), dk(n), dv(n);
  k::attention_forward(o.data(), lse.data(), q.data(), kk.data(), v.data(), d, 0, s.batch * s.heads, ws);
  k::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), kk.data(), v.data(), o.data(),
                        lse.data(), d, 0, s.batch * s.heads, ws);
  check_close("out", out[0], o, 1e-5);
  check_close("lse", out[1], lse, 1e-6);
  check_close("dq", out[2], dq, 1e-5);
  check_close("dk", out[3], dk, 1e-5);
  check_close("dv", out[4], dv, 1e-5);
}

TEST_CASE("device swiglu, cross-entropy and elementwise ops", "[model]") {
  const int64_t n = 40000;
  const Vec g = f32(randn(static_cast<size_t>(n), 150, 3.0)), u = f32(randn(static_cast<size_t>(n), 151)), dh = f32(randn(static_cast<size_t>(n), 152));
  const int64_t rows = 70, V = 300;
  const Vec logits = f32(randn(static_cast<size_t>(rows * V), 153, 3.0));
  const auto tg = randint(size_t(rows), int32_t(V), 154);
  auto out = on_devices([&](CpuDevice& dev) {
    Guarded h(static_cast<size_t>(n)), dg(static_cast<size_t>(n)), du(static_cast<size_t>(n)), loss(static_cast<size_t>(rows)), dl(static_cast<size_t>(rows * V));
    Guarded sum(static_cast<size_t>(n)), y(static_cast<size_t>(n), u), sc(static_cast<size_t>(n), g), inplace(static_cast<size_t>(rows * V), logits);
    Guarded loss2(static_cast<size_t>(rows));
    auto gf = to_f(g), uf = to_f(u), dhf = to_f(dh), lf = to_f(logits);
    dev.swiglu_forward(h.data(), gf.data(), uf.data(), n);
    dev.swiglu_backward(dg.data(), du.data(), dhf.data(), gf.data(), uf.data(), n);
    dev.cross_entropy(loss.data(), dl.data(), lf.data(), tg.data(), rows, V, 0.25f);
    dev.cross_entropy(loss2.data(), inplace.data(), inplace.data(), tg.data(), rows, V, 0.25f);
    dev.add(sum.data(), gf.data(), uf.data(), n);
    dev.axpy(y.data(), gf.data(), -0.5f, n);
    dev.scale(sc.data(), 3.0f, n);
    GUARDS_OK(&h, &dg, &du, &loss, &dl, &sum, &y, &sc, &inplace, &loss2);
    CHECK(bit_equal(inplace.values(), dl.values()));
    CHECK(bit_equal(loss2.values(), loss.values()));
    return std::vector<std::vector<float>>{h.values(),   dg.values(),  du.values(), loss.values(),
                                           dl.values(),  sum.values(), y.values(),  sc.values()};
  });
  Vec h(static_cast<size_t>(n)), dg(static_cast<size_t>(n)), du(static_cast<size_t>(n)), loss(static_cast<size_t>(rows)), dl(static_cast<size_t>(rows * V));
  k::swiglu_forward(h.data(), g.data(), u.data(), 0, n);
  k::swiglu_backward(dg.data(), du.data(), dh.data(), g.data(), u.data(), 0, n);
  k::cross_entropy(loss.data(), dl.data(), logits.data(), tg.data(), V, 0.25, 0, rows);
  check_close("h", out[0], h, 1e-6);
  check_close("dg", out[1], dg, 1e-6);
  check_close("du", out[2], du, 1e-6);
  check_close("loss", out[3], loss, 1e-6);
  check_close("dlogits", out[4], dl, 1e-6);
  Vec sum(static_cast<size_t>(n)), y = u, sc = g;
  k::add(sum.data(), g.data(), u.data(), 0, n);
  k::axpy(y.data(), g.data(), -0.5, 0, n);
  k::scale(sc.data(), 3.0, 0, n);
  check_close("add", out[5], sum, 1e-7);
  check_close("axpy", out[6], y, 1e-7);
  check_close("scale", out[7], sc, 1e-7);
}

TEST_CASE("device model ops reject bad arguments", "[model]") {
  CpuDevice dev(2);
  std::vector<float> table(4 * 3), out(2 * 3);
  std::vector<int32_t> ids = {1, 4};
  try {
    dev.embedding_forward(out.data(), table.data(), ids.data(), 2, 4, 3);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.code() == Code::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("ids[1] = 4") && Catch::Contains("[0, 4)"));
  }
  std::vector<float> logits(2 * 4), loss(2);
  std::vector<int32_t> tg = {-1, 0};
  CHECK_THROWS_WITH(dev.cross_entropy(loss.data(), nullptr, logits.data(), tg.data(), 2, 4, 1.0f),
                    Catch::Contains("targets[0] = -1"));
  CHECK_THROWS_AS(dev.matmul(out.data(), table.data(), table.data(), -1, 2, 2, false, false, 1, 0), Error);
  std::vector<float> x(2 * 3 * 4), cs(3), sn(3);
  CHECK_THROWS_WITH(dev.rope_forward(x.data(), cs.data(), sn.data(), HeadShape{1, 2, 4, 3}),
                    Catch::Contains("head_dim even"));
  CHECK_THROWS_WITH(dev.rmsnorm_forward(out.data(), loss.data(), nullptr, table.data(), 2, 3, 1e-5f),
                    Catch::Contains("x is null"));
}

// The model ops and AdamW on CUDA against the CPU device (DESIGN.md section 3), on fresh random
// inputs every run (the seed is printed on failure), with guard bytes around every device output
// and a check that no output is NaN or infinite where the CPU's is finite. Tolerances by dtype:
//   - matmul and attention run in bf16 with float32 accumulation: a matmul element may differ from
//     the CPU's by 1e-2 of sum_k |alpha a_ik b_kj| (a bf16 input is within 2^-9 of its float32,
//     so a product is within 2^-8), attention by a few 1e-2 of its output's scale;
//   - the float32 ops within 1e-5 of the element plus 1e-5 of the output's largest magnitude;
//   - the embedding backward and AdamW run the CPU's operations in the CPU's order: the same bits.
// Also: a whole nano LlamaModel step against the CPU, determinism run to run, bad arguments.
// [.][perf] holds a timing of the matmul and of attention at the 1b shape (not run by default).
#include <catch2/catch.hpp>

#if defined(DISTRO_HAVE_CUDA)

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu_device.hpp"
#include "compare.hpp"
#include "guarded.hpp"
#include "backend/cpu_kernels.hpp"
#include "backend/registry.hpp"
#include "model/llama.hpp"

using namespace distro;

namespace {

using test::all_finite;
using test::count_bad;
using test::fresh_seed;
using test::Guarded;
using test::max_abs;
using test::open_gpu;
using test::rel_l2;
using test::Rng;
using test::same_bits;

// float32 ops: 1e-5 relative plus 1e-5 of the output's scale.
void check_fp32(const std::vector<float>& got, const std::vector<float>& ref, const std::string& what,
                double tol = 1e-5) {
  CHECK(count_bad(got, ref, tol, tol * max_abs(ref), what) == 0);
}

std::vector<float> abs_of(std::vector<float> v) {
  for (auto& x : v) x = std::fabs(x);
  return v;
}

// One matmul on both devices; the GPU result within 1e-2 of sum_k |alpha a b| (+ float32 rounding of
// the beta term), C's guards intact. beta == 0 starts C as NaN (it must not be read).
void check_matmul(Device& gpu, CpuDevice& cpu, Rng& rng, int64_t M, int64_t N, int64_t K, bool ta, bool tb,
                  float alpha, float beta) {
  INFO("matmul M " << M << " N " << N << " K " << K << " transA " << ta << " transB " << tb << " alpha " << alpha
                   << " beta " << beta);
  const auto A = rng.normal(size_t(M * K)), B = rng.normal(size_t(K * N));
  std::vector<float> C0 = beta == 0.0f ? std::vector<float>(size_t(M * N), NAN) : rng.normal(size_t(M * N));
  std::vector<float> ref = C0, bound(size_t(M * N));
  cpu.matmul(ref.data(), A.data(), B.data(), M, N, K, ta, tb, alpha, beta);
  const auto absA = abs_of(A), absB = abs_of(B);
  cpu.matmul(bound.data(), absA.data(), absB.data(), M, N, K, ta, tb, std::fabs(alpha), 0.0f);
  Guarded dA = Guarded::of(gpu, A), dB = Guarded::of(gpu, B), dC = Guarded::of(gpu, C0);
  gpu.matmul(dC.f(), dA.f(), dB.f(), M, N, K, ta, tb, alpha, beta);
  const auto got = dC.get();
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = 1e-2 * bound[i] + (beta == 0.0f ? 0.0 : 1e-6 * std::fabs(beta * C0[i])) + 1e-6;
    if (!std::isfinite(got[i]) || std::fabs(double(got[i]) - double(ref[i])) > tol) {
      if (++bad <= 3) UNSCOPED_INFO("C[" << i << "]: gpu " << got[i] << " cpu " << ref[i] << " tolerance " << tol);
    }
  }
  CHECK(bad == 0);
  CHECK(dC.guards_intact());
  CHECK(dA.get() == A);  // inputs untouched
}

struct MatmulShape {
  int64_t M, N, K;
};

// nano's and the 1b preset's kinds of shapes (scaled down), sizes that are not multiples of 16, a
// single element, a long reduction.
const MatmulShape kMatmulShapes[] = {{256, 128, 128}, {256, 384, 128}, {128, 256, 384}, {37, 53, 29},
                                     {1, 1, 1},       {3, 200, 17},    {64, 64, 4096},  {130, 2, 513}};

}  // namespace

TEST_CASE("cuda model: matmul against the CPU, every transpose and beta", "[cuda][model][matmul]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (const auto& s : kMatmulShapes)
    for (int t = 0; t < 4; ++t)
      for (float beta : {0.0f, 1.0f}) check_matmul(*gpu, cpu, rng, s.M, s.N, s.K, t & 1, t & 2, 1.0f, beta);
  // Other alpha and beta, K == 0 (C = beta C, or zeros), empty outputs.
  check_matmul(*gpu, cpu, rng, 33, 47, 65, false, true, 0.5f, -2.0f);
  check_matmul(*gpu, cpu, rng, 9, 7, 0, false, false, 1.0f, 0.0f);
  check_matmul(*gpu, cpu, rng, 9, 7, 0, true, true, 1.0f, 0.5f);
  gpu->matmul(nullptr, nullptr, nullptr, 0, 5, 5, false, false, 1.0f, 0.0f);
}

TEST_CASE("cuda model: the fallback GEMM kernel agrees with the CPU", "[cuda][model][matmul]") {
  setenv("DISTRO_CUDA_GEMM", "fallback", 1);  // read when the device's GEMM starts (its first matmul)
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (const auto& s : {MatmulShape{37, 53, 29}, MatmulShape{64, 96, 80}, MatmulShape{1, 17, 3}})
    for (int t = 0; t < 4; ++t) check_matmul(*gpu, cpu, rng, s.M, s.N, s.K, t & 1, t & 2, 0.75f, t == 3 ? 1.0f : 0.0f);
  unsetenv("DISTRO_CUDA_GEMM");
}

TEST_CASE("cuda model: matmul is deterministic run to run", "[cuda][model][matmul]") {
  auto gpu = open_gpu();
  Rng rng(fresh_seed());
  // A long reduction (where a library would split K) and the model's weight-gradient shape.
  for (const auto& s : {MatmulShape{64, 64, 16384}, MatmulShape{384, 128, 4096}}) {
    INFO("M " << s.M << " N " << s.N << " K " << s.K);
    const auto A = rng.normal(size_t(s.M * s.K)), B = rng.normal(size_t(s.K * s.N));
    Guarded dA = Guarded::of(*gpu, A), dB = Guarded::of(*gpu, B), dC(*gpu, size_t(s.M * s.N) * 4);
    std::vector<float> first;
    for (int rep = 0; rep < 3; ++rep) {
      gpu->matmul(dC.f(), dA.f(), dB.f(), s.M, s.N, s.K, true, false, 1.0f, 0.0f);
      const auto got = dC.get();
      if (rep == 0) first = got;
      CHECK(same_bits(got, first));
    }
  }
}

TEST_CASE("cuda model: embedding forward and backward", "[cuda][model][embedding]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  struct Shape { int64_t n, vocab, dim; };
  // nano, repeated ids (a vocabulary smaller than the positions), an odd dim, a 1b-wide row.
  for (const Shape& s : {Shape{512, 256, 128}, Shape{300, 7, 33}, Shape{1, 1, 1}, Shape{97, 4000, 2048}}) {
    INFO("n " << s.n << " vocab " << s.vocab << " dim " << s.dim);
    const auto table = rng.normal(size_t(s.vocab * s.dim));
    const auto ids = rng.ints(size_t(s.n), 0, int32_t(s.vocab - 1));
    Guarded dtable = Guarded::of(*gpu, table), dids = Guarded::of(*gpu, ids), dout(*gpu, size_t(s.n * s.dim) * 4);
    std::vector<float> ref(size_t(s.n * s.dim));
    cpu.embedding_forward(ref.data(), table.data(), ids.data(), s.n, s.vocab, s.dim);
    gpu->embedding_forward(dout.f(), dtable.f(), dids.data<int32_t>(), s.n, s.vocab, s.dim);
    CHECK(dout.get() == ref);
    CHECK(dout.guards_intact());

    // Backward accumulates into an existing gradient: the CPU's additions in the CPU's order.
    const auto dy = rng.normal(size_t(s.n * s.dim));
    const auto grad0 = rng.normal(size_t(s.vocab * s.dim));
    std::vector<float> gref = grad0;
    cpu.embedding_backward(gref.data(), dy.data(), ids.data(), s.n, s.vocab, s.dim);
    Guarded dgrad = Guarded::of(*gpu, grad0), ddy = Guarded::of(*gpu, dy);
    gpu->embedding_backward(dgrad.f(), ddy.f(), dids.data<int32_t>(), s.n, s.vocab, s.dim);
    CHECK(same_bits(dgrad.get(), gref));
    CHECK(dgrad.guards_intact());
  }
}

TEST_CASE("cuda model: rmsnorm forward and backward", "[cuda][model][rmsnorm]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  struct Shape { int64_t rows, dim; };
  // Rows of 1 to 4 float4 per thread run the vector kernels (768: small's, 2048: 1b's); 17, 1 and
  // 8192 (8 per thread) the scalar ones.
  for (const Shape& s : {Shape{512, 128}, Shape{64, 2048}, Shape{33, 17}, Shape{1, 1}, Shape{5000, 96},
                         Shape{40, 768}, Shape{16, 3072}, Shape{8, 4096}, Shape{4, 8192}}) {
    INFO("rows " << s.rows << " dim " << s.dim);
    const size_t n = size_t(s.rows * s.dim);
    const auto x = rng.normal(n, 2.0f), w = rng.normal(size_t(s.dim)), dy = rng.normal(n);
    const auto dx0 = rng.normal(n), dw0 = rng.normal(size_t(s.dim));
    std::vector<float> y(n), rstd(size_t(s.rows)), dx = dx0, dw = dw0;
    cpu.rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), s.rows, s.dim, 1e-5f);
    cpu.rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), s.rows, s.dim);

    Guarded dX = Guarded::of(*gpu, x), dW = Guarded::of(*gpu, w), dY(*gpu, n * 4), dR(*gpu, size_t(s.rows) * 4);
    gpu->rmsnorm_forward(dY.f(), dR.f(), dX.f(), dW.f(), s.rows, s.dim, 1e-5f);
    check_fp32(dY.get(), y, "y");
    check_fp32(dR.get(), rstd, "rstd");
    // The backward from the CPU's rstd, so only the backward is compared.
    Guarded dRc = Guarded::of(*gpu, rstd), dDy = Guarded::of(*gpu, dy);
    Guarded dDx = Guarded::of(*gpu, dx0), dDw = Guarded::of(*gpu, dw0);
    gpu->rmsnorm_backward(dDx.f(), dDw.f(), dDy.f(), dX.f(), dW.f(), dRc.f(), s.rows, s.dim);
    check_fp32(dDx.get(), dx, "dx");
    check_fp32(dDw.get(), dw, "dw");
    for (const Guarded* g : {&dY, &dR, &dDx, &dDw}) CHECK(g->guards_intact());
  }
}

TEST_CASE("cuda model: rope forward and backward", "[cuda][model][rope]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (const HeadShape& s : {HeadShape{2, 64, 4, 32}, HeadShape{1, 300, 2, 256}, HeadShape{3, 7, 3, 6}}) {
    INFO("batch " << s.batch << " seq " << s.seq << " heads " << s.heads << " head_dim " << s.head_dim);
    const int64_t max_seq = s.seq + 5, half = s.head_dim / 2;
    std::vector<float> cs(size_t(max_seq * half)), sn(cs.size());
    kernels::rope_tables(cs.data(), sn.data(), max_seq, s.head_dim, 10000.0);
    const size_t n = size_t(s.batch * s.seq * s.heads * s.head_dim);
    const auto x = rng.normal(n);
    Guarded dcs = Guarded::of(*gpu, cs), dsn = Guarded::of(*gpu, sn);
    for (bool inverse : {false, true}) {
      INFO("inverse " << inverse);
      std::vector<float> ref = x;
      Guarded dx = Guarded::of(*gpu, x);
      if (inverse) {
        cpu.rope_backward(ref.data(), cs.data(), sn.data(), s);
        gpu->rope_backward(dx.f(), dcs.f(), dsn.f(), s);
      } else {
        cpu.rope_forward(ref.data(), cs.data(), sn.data(), s);
        gpu->rope_forward(dx.f(), dcs.f(), dsn.f(), s);
      }
      check_fp32(dx.get(), ref, "x");
      CHECK(dx.guards_intact());
    }
  }
}

namespace {

// One attention forward and backward on both devices.
void check_attention(Device& gpu, CpuDevice& cpu, Rng& rng, const HeadShape& s) {
  INFO("attention batch " << s.batch << " seq " << s.seq << " heads " << s.heads << " head_dim " << s.head_dim);
  const size_t n = size_t(s.batch * s.seq * s.heads * s.head_dim), nl = size_t(s.batch * s.heads * s.seq);
  const auto q = rng.normal(n), k = rng.normal(n), v = rng.normal(n), dout = rng.normal(n);
  std::vector<float> out(n), lse(nl), dq(n), dk(n), dv(n);
  cpu.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s);
  cpu.attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(),
                         lse.data(), s);

  Guarded dQ = Guarded::of(gpu, q), dK = Guarded::of(gpu, k), dV = Guarded::of(gpu, v), dO(gpu, n * 4);
  Guarded dL(gpu, nl * 4);
  gpu.attention_forward(dO.f(), dL.f(), dQ.f(), dK.f(), dV.f(), s);
  const auto got_out = dO.get(), got_lse = dL.get();
  test::check_attention_forward(got_out, got_lse, out, lse);

  // Backward from each device's own forward results, as the model runs it. (With one key per row
  // the gradients of q and k are exactly zero; the GPU's rows of dS sum to zero by construction, so
  // it gets zeros there too.)
  Guarded dDout = Guarded::of(gpu, dout);
  Guarded gdq(gpu, n * 4), gdk(gpu, n * 4), gdv(gpu, n * 4);
  gpu.attention_backward(gdq.f(), gdk.f(), gdv.f(), dDout.f(), dQ.f(), dK.f(), dV.f(), dO.f(), dL.f(), s);
  const std::pair<const Guarded*, const std::vector<float>*> grads[] = {{&gdq, &dq}, {&gdk, &dk}, {&gdv, &dv}};
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i) {
    test::check_attention_grad(names[i], grads[i].first->get(), *grads[i].second);
    CHECK(grads[i].first->guards_intact());
  }
  CHECK(dO.guards_intact());
  CHECK(dL.guards_intact());
}

}  // namespace

TEST_CASE("cuda model: attention forward and backward", "[cuda][model][attention]") {
  auto gpu = open_gpu();
  CpuDevice cpu(4);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  // nano (head 32), small (64), the 1b head 256, sizes that are not multiples of 16, one position,
  // a long sequence. Head sizes 32, 64 and 256 run the fused kernels (flash_attention.cu) by
  // default; DISTRO_CUDA_ATTENTION=gemm runs the cuBLASLt path for them too.
  for (const char* path : {"fused", "gemm"}) {
    INFO("attention path " << path);
    if (std::string(path) == "gemm") setenv("DISTRO_CUDA_ATTENTION", "gemm", 1);
    for (const HeadShape& s : {HeadShape{2, 64, 4, 32}, HeadShape{2, 128, 3, 64}, HeadShape{1, 160, 2, 256},
                               HeadShape{2, 37, 3, 20}, HeadShape{3, 1, 2, 8}, HeadShape{1, 1024, 1, 64},
                               HeadShape{2, 37, 3, 64}})
      check_attention(*gpu, cpu, rng, s);
    unsetenv("DISTRO_CUDA_ATTENTION");
  }
}

TEST_CASE("cuda model: attention in several slices of the batch", "[cuda][model][attention]") {
  setenv("DISTRO_CUDA_ATTENTION_SCRATCH", "1", 1);  // one batch entry per slice
  setenv("DISTRO_CUDA_ATTENTION", "gemm", 1);         // the sliced path (head 32 would run fused)
  auto gpu = open_gpu();
  CpuDevice cpu(4);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  check_attention(*gpu, cpu, rng, HeadShape{3, 48, 2, 32});
  unsetenv("DISTRO_CUDA_ATTENTION_SCRATCH");
  unsetenv("DISTRO_CUDA_ATTENTION");
}

TEST_CASE("cuda model: swiglu, elementwise ops", "[cuda][model][elementwise]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (int64_t n : {int64_t(1), int64_t(5), int64_t(4099), int64_t(1) << 20}) {
    INFO("n " << n);
    const auto g = rng.normal(size_t(n), 3.0f), u = rng.normal(size_t(n)), dh = rng.normal(size_t(n));
    const size_t un = static_cast<size_t>(n);
    std::vector<float> h(un), dg(un), du(un);
    cpu.swiglu_forward(h.data(), g.data(), u.data(), n);
    cpu.swiglu_backward(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);
    Guarded dG = Guarded::of(*gpu, g), dU = Guarded::of(*gpu, u), dH = Guarded::of(*gpu, dh);
    Guarded oh(*gpu, size_t(n) * 4), odg(*gpu, size_t(n) * 4), odu(*gpu, size_t(n) * 4);
    gpu->swiglu_forward(oh.f(), dG.f(), dU.f(), n);
    gpu->swiglu_backward(odg.f(), odu.f(), dH.f(), dG.f(), dU.f(), n);
    check_fp32(oh.get(), h, "h");
    check_fp32(odg.get(), dg, "dg");
    check_fp32(odu.get(), du, "du");

    // add (also in place), axpy, scale; offset by one element so the unaligned path runs too.
    for (int64_t off : {int64_t(0), int64_t(1)}) {
      INFO("offset " << off);
      const int64_t m = n - off;
      if (m <= 0) continue;
      const auto a = rng.normal(size_t(n)), b = rng.normal(size_t(n));
      std::vector<float> sum(un), y = a, x = b;
      cpu.add(sum.data() + off, a.data() + off, b.data() + off, m);
      cpu.axpy(y.data() + off, b.data() + off, -0.37f, m);
      cpu.scale(x.data() + off, 1.5f, m);
      Guarded dA = Guarded::of(*gpu, a), dB = Guarded::of(*gpu, b), dS(*gpu, size_t(n) * 4);
      gpu->add(dS.f() + off, dA.f() + off, dB.f() + off, m);
      std::vector<float> got = dS.get(), want = sum;
      got.erase(got.begin(), got.begin() + off), want.erase(want.begin(), want.begin() + off);
      check_fp32(got, want, "add");
      gpu->add(dA.f() + off, dA.f() + off, dB.f() + off, m);  // out == a
      got = dA.get(), got.erase(got.begin(), got.begin() + off);
      check_fp32(got, want, "add in place");
      Guarded dY = Guarded::of(*gpu, a), dX = Guarded::of(*gpu, b);
      gpu->axpy(dY.f() + off, dB.f() + off, -0.37f, m);
      gpu->scale(dX.f() + off, 1.5f, m);
      check_fp32(dY.get(), y, "axpy");
      check_fp32(dX.get(), x, "scale");
      for (const Guarded* p : {&dS, &dA, &dY, &dX}) CHECK(p->guards_intact());
    }
    for (const Guarded* p : {&oh, &odg, &odu}) CHECK(p->guards_intact());
  }
}

TEST_CASE("cuda model: cross-entropy loss and gradient", "[cuda][model][cross_entropy]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  struct Shape { int64_t rows, vocab; };
  for (const Shape& s : {Shape{128, 256}, Shape{17, 32000}, Shape{3, 1}, Shape{40, 1001}}) {
    INFO("rows " << s.rows << " vocab " << s.vocab);
    const size_t n = size_t(s.rows * s.vocab);
    const auto logits = rng.normal(n, 4.0f);
    const auto tgt = rng.ints(size_t(s.rows), 0, int32_t(s.vocab - 1));
    const float scale = 1.0f / float(s.rows);
    std::vector<float> loss(size_t(s.rows)), dl(n);
    cpu.cross_entropy(loss.data(), dl.data(), logits.data(), tgt.data(), s.rows, s.vocab, scale);
    Guarded dLog = Guarded::of(*gpu, logits), dT = Guarded::of(*gpu, tgt), dLoss(*gpu, size_t(s.rows) * 4);
    Guarded dDl(*gpu, n * 4);
    gpu->cross_entropy(dLoss.f(), dDl.f(), dLog.f(), dT.data<int32_t>(), s.rows, s.vocab, scale);
    // The same kernel in float64 is the accurate answer: the GPU within 1e-5 of it. The CPU device
    // sums exp over the vocabulary sequentially in float32, which is itself off by up to
    // vocab x 2^-24 relative (2e-3 at 32000; 7e-5 seen), so against the CPU device the tolerance
    // adds that bound.
    std::vector<double> l64(logits.begin(), logits.end()), loss64(size_t(s.rows)), dl64(n);
    kernels::cross_entropy<double>(loss64.data(), dl64.data(), l64.data(), tgt.data(), s.vocab, double(scale), 0,
                                   s.rows);
    const double cpu_tol = 1e-5 + double(s.vocab) * 0x1p-24;
    check_fp32(dLoss.get(), std::vector<float>(loss64.begin(), loss64.end()), "loss vs float64");
    check_fp32(dDl.get(), std::vector<float>(dl64.begin(), dl64.end()), "dlogits vs float64");
    check_fp32(dLoss.get(), loss, "loss", cpu_tol);
    check_fp32(dDl.get(), dl, "dlogits", cpu_tol);
    CHECK(dLog.get() == logits);
    // In place (dlogits == logits), and the loss alone (dlogits null).
    Guarded dLoss2(*gpu, size_t(s.rows) * 4), dLoss3(*gpu, size_t(s.rows) * 4);
    gpu->cross_entropy(dLoss3.f(), nullptr, dLog.f(), dT.data<int32_t>(), s.rows, s.vocab, scale);
    gpu->cross_entropy(dLoss2.f(), dLog.f(), dLog.f(), dT.data<int32_t>(), s.rows, s.vocab, scale);
    check_fp32(dLoss2.get(), loss, "loss (in place)", cpu_tol);
    check_fp32(dLoss3.get(), loss, "loss (no gradient)", cpu_tol);
    check_fp32(dLog.get(), dl, "dlogits (in place)", cpu_tol);
    CHECK(same_bits(dLog.get(), dDl.get()));  // in place gives the same bits
    for (const Guarded* p : {&dLoss, &dDl, &dLog, &dLoss2, &dLoss3}) CHECK(p->guards_intact());
  }
}

TEST_CASE("cuda model: adamw equals the CPU", "[cuda][model][adamw]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  for (uint64_t n : {uint64_t(1), uint64_t(1000), uint64_t(1) << 20}) {
    INFO("n " << n);
    std::vector<float> p = rng.normal(n), m(n, 0.0f), v(n, 0.0f);
    Guarded dp = Guarded::of(*gpu, p), dm = Guarded::of(*gpu, m), dv = Guarded::of(*gpu, v), dg(*gpu, n * 4);
    for (uint64_t t = 1; t <= 4; ++t) {
      INFO("step " << t);
      const auto g = rng.normal(n, 0.1f);
      gpu->upload(dg.f(), g.data(), n * 4);
      AdamWArgs a;
      a.n = n, a.lr = 3e-3f, a.beta1 = 0.9f, a.beta2 = 0.95f, a.eps = 1e-8f, a.weight_decay = 0.1f, a.t = t;
      a.params = p.data(), a.grad = g.data(), a.m = m.data(), a.v = v.data();
      cpu.adamw(a);
      a.params = dp.f(), a.grad = dg.f(), a.m = dm.f(), a.v = dv.f();
      gpu->adamw(a);
      const auto gp = dp.get(), gm = dm.get(), gv = dv.get();
      check_fp32(gp, p, "params", 1e-6);
      check_fp32(gm, m, "m", 1e-6);
      check_fp32(gv, v, "v", 1e-6);
      size_t same = 0;
      for (size_t i = 0; i < n; ++i) same += std::memcmp(&gp[i], &p[i], 4) == 0;
      UNSCOPED_INFO("adamw step " << t << ": " << same << " of " << n << " parameters bit-identical to the CPU");
      CHECK(same == n);  // the same float32 operations in the same order (adamw.cu)
    }
    for (const Guarded* g : {&dp, &dm, &dv}) CHECK(g->guards_intact());
  }
}

namespace {

struct StepResult {
  float loss = 0;
  std::vector<std::vector<float>> grads;
};

StepResult model_step(Device& dev, const LlamaConfig& c, const std::vector<int32_t>& tok,
                      const std::vector<int32_t>& tgt, int B, int T) {
  LlamaModel model(dev, c, 1234);
  StepResult r;
  model.zero_grad();
  r.loss = model.forward_backward(tok.data(), tgt.data(), B, T);
  for (const ModelTensor& t : model.tensors()) {
    std::vector<float> g(t.numel);
    dev.download(g.data(), t.grad, t.numel * 4);
    r.grads.push_back(std::move(g));
  }
  return r;
}

}  // namespace

TEST_CASE("cuda model: a nano LlamaModel step against the CPU, and deterministic", "[cuda][model][llama]") {
  auto gpu = open_gpu();
  CpuDevice cpu(4);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  const LlamaConfig c = llama_preset("nano");
  const int B = 4, T = 128;
  const auto tok = rng.ints(size_t(B * T), 0, c.vocab - 1), tgt = rng.ints(size_t(B * T), 0, c.vocab - 1);
  const StepResult ref = model_step(cpu, c, tok, tgt, B, T);
  const StepResult got = model_step(*gpu, c, tok, tgt, B, T);
  INFO("loss cpu " << ref.loss << " gpu " << got.loss);
  CHECK(std::isfinite(got.loss));
  CHECK(std::fabs(got.loss - ref.loss) <= 1e-2 * std::fabs(ref.loss));
  LlamaModel names(cpu, c, 1);
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < ref.grads.size(); ++i) {
    INFO(names.tensors()[i].name);
    CHECK(all_finite(got.grads[i]));
    const double e = rel_l2(got.grads[i], ref.grads[i]);
    if (e > worst) worst = e, worst_name = names.tensors()[i].name;
    CHECK(e < 5e-2);
  }
  std::printf("nano step: loss cpu %.6f gpu %.6f; worst gradient relative L2 error %.3g (%s)\n", ref.loss, got.loss,
              worst, worst_name.c_str());
  // The same step again on the GPU gives the same bits: every op is deterministic.
  const StepResult again = model_step(*gpu, c, tok, tgt, B, T);
  CHECK(std::memcmp(&again.loss, &got.loss, 4) == 0);
  for (size_t i = 0; i < got.grads.size(); ++i) CHECK(same_bits(again.grads[i], got.grads[i]));
}

TEST_CASE("cuda model: bad arguments are errors and the device keeps working", "[cuda][model][errors]") {
  auto gpu = open_gpu();
  Rng rng(fresh_seed());
  std::vector<float> host(64 * 64, 1.0f);
  Guarded a(*gpu, 64 * 64 * 4, host.data()), b(*gpu, 64 * 64 * 4, host.data()), c(*gpu, 64 * 64 * 4);
  auto code_of = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      UNSCOPED_INFO(e.what());
      return e.code();
    }
    return Code::ok;
  };
  // A host pointer, a buffer too small for the shape, a negative size.
  CHECK(code_of([&] { gpu->matmul(c.f(), host.data(), b.f(), 64, 64, 64, false, false, 1, 0); }) ==
        Code::invalid_argument);
  CHECK(code_of([&] { gpu->matmul(c.f(), a.f(), b.f(), 64, 64, 65, false, false, 1, 0); }) == Code::size);
  CHECK(code_of([&] { gpu->matmul(c.f(), a.f(), b.f(), -1, 64, 64, false, false, 1, 0); }) == Code::invalid_argument);
  CHECK(code_of([&] { gpu->rmsnorm_forward(c.f(), a.f(), b.f(), a.f(), 4, 0, 1e-5f); }) == Code::invalid_argument);
  CHECK(code_of([&] { gpu->rope_forward(c.f(), a.f(), b.f(), HeadShape{1, 4, 2, 3}); }) == Code::invalid_argument);
  // Ids and targets outside the vocabulary are named.
  std::vector<int32_t> ids = {0, 1, 2, 300};
  Guarded dids = Guarded::of(*gpu, ids);
  try {
    gpu->embedding_forward(c.f(), a.f(), dids.data<int32_t>(), 4, 256, 16);
    FAIL("an id outside the vocabulary was accepted");
  } catch (const Error& e) {
    CHECK(e.code() == Code::invalid_argument);
    CHECK(std::string(e.what()).find("ids[3] = 300") != std::string::npos);
  }
  CHECK(code_of([&] { gpu->cross_entropy(c.f(), nullptr, a.f(), dids.data<int32_t>(), 4, 256, 1.0f); }) ==
        Code::invalid_argument);
  CHECK(code_of([&] { gpu->embedding_backward(c.f(), a.f(), dids.data<int32_t>(), 4, 256, 16); }) ==
        Code::invalid_argument);
  // Valid ids, but a 301 x 16 table does not fit in c.
  CHECK(code_of([&] { gpu->embedding_backward(c.f(), a.f(), dids.data<int32_t>(), 4, 301, 16); }) == Code::size);
  // The device still computes.
  gpu->matmul(c.f(), a.f(), b.f(), 64, 64, 64, false, false, 1, 0);
  const auto got = c.get();
  CHECK(std::all_of(got.begin(), got.end(), [](float x) { return x == 64.0f; }));
}

// ---------------------------------------------------------------------------------------------------
// Timings (not a test of speed: no assertion on time). Run with: distro_gpu_tests '[perf]'.

namespace {

template <class F>
double median_ms(Device& dev, int reps, F&& f) {
  f(), dev.synchronize();  // warm-up: plans, scratch
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    dev.synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

TEST_CASE("cuda model: timings of matmul, attention and model steps", "[.][perf]") {
  auto gpu = open_gpu();
  Rng rng(1);
  std::printf("device: %s\n", gpu->info().description.c_str());
  {
    // The 1b MLP's shapes at 4096 tokens: y = x W^T, dx = dy W, dW += dy^T x.
    const int64_t T = 4096, d = 2048, f = 8192;
    Guarded x(*gpu, size_t(T * d) * 4, rng.normal(size_t(T * d)).data()),
        w(*gpu, size_t(f * d) * 4, rng.normal(size_t(f * d)).data()), y(*gpu, size_t(T * f) * 4),
        dw(*gpu, size_t(f * d) * 4);
    const double flops = 2.0 * double(T) * double(d) * double(f);
    const double fwd = median_ms(*gpu, 10, [&] { gpu->matmul(y.f(), x.f(), w.f(), T, f, d, false, true, 1, 0); });
    const double bx = median_ms(*gpu, 10, [&] { gpu->matmul(x.f(), y.f(), w.f(), T, d, f, false, false, 1, 0); });
    const double bw = median_ms(*gpu, 10, [&] { gpu->matmul(dw.f(), y.f(), x.f(), f, d, T, true, false, 1, 1); });
    std::printf("matmul %lldx%lldx%lld (M x N x K, incl. fp32->bf16 of both inputs): y=xW^T %.3f ms (%.0f TFLOP/s), "
                "dx=dyW %.3f ms (%.0f), dW+=dy^T x %.3f ms (%.0f)\n",
                (long long)T, (long long)f, (long long)d, fwd, flops / fwd / 1e9, bx, flops / bx / 1e9, bw,
                flops / bw / 1e9);
  }
  for (const int64_t d : {int64_t(768), int64_t(2048)}) {
    // The attention projections of small and 1b at 16384 tokens: y = x W^T and dx = dy W, W [d, d].
    const int64_t T = 16384;
    Guarded x(*gpu, size_t(T * d) * 4, rng.normal(size_t(T * d)).data()),
        w(*gpu, size_t(d * d) * 4, rng.normal(size_t(d * d)).data()), y(*gpu, size_t(T * d + 16) * 4);
    const double flops = 2.0 * double(T) * double(d) * double(d);
    const double fwd = median_ms(*gpu, 10, [&] { gpu->matmul(y.f(), x.f(), w.f(), T, d, d, false, true, 1, 0); });
    const double bx = median_ms(*gpu, 10, [&] { gpu->matmul(x.f(), y.f(), w.f(), T, d, d, false, false, 1, 0); });
    // The output 64 bytes past a 256-byte boundary (cuBLASLt chooses kernels by alignment).
    const double f64 = median_ms(*gpu, 10, [&] { gpu->matmul(y.f() + 16, x.f(), w.f(), T, d, d, false, true, 1, 0); });
    std::printf("matmul %lldx%lldx%lld: y=xW^T %.3f ms (%.0f TFLOP/s; %.3f ms into a 64-byte aligned y), dx=dyW %.3f "
                "ms (%.0f)\n",
                (long long)T, (long long)d, (long long)d, fwd, flops / fwd / 1e9, f64, bx, flops / bx / 1e9);
  }
  for (int64_t B : {int64_t(1), int64_t(2)}) {
    const HeadShape s{B, 2048, 8, 256};
    const size_t n = size_t(s.batch * s.seq * s.heads * s.head_dim), nl = size_t(s.batch * s.heads * s.seq);
    Guarded q(*gpu, n * 4, rng.normal(n).data()), k(*gpu, n * 4, rng.normal(n).data()),
        v(*gpu, n * 4, rng.normal(n).data()), o(*gpu, n * 4), l(*gpu, nl * 4), dq(*gpu, n * 4), dk(*gpu, n * 4),
        dv(*gpu, n * 4);
    const double fwd = median_ms(*gpu, 10, [&] { gpu->attention_forward(o.f(), l.f(), q.f(), k.f(), v.f(), s); });
    const double bwd = median_ms(*gpu, 10, [&] {
      gpu->attention_backward(dq.f(), dk.f(), dv.f(), o.f(), q.f(), k.f(), v.f(), o.f(), l.f(), s);
    });
    // Causal FLOPs (half of the full products): forward 2 GEMMs, backward 5, each 2 T^2 D per head.
    const double causal = 2.0 * double(B * s.heads) * double(s.seq * s.seq) * double(s.head_dim) / 2;
    std::printf("attention batch %lld seq 2048 heads 8 head_dim 256: forward %.3f ms (%.0f causal TFLOP/s), "
                "backward %.3f ms (%.0f)\n",
                (long long)B, fwd, 2 * causal / fwd / 1e9, bwd, 5 * causal / bwd / 1e9);
  }
  for (const auto& [preset, B, T] : {std::tuple<const char*, int, int>{"small", 8, 1024},
                                     std::tuple<const char*, int, int>{"1b", 1, 2048}}) {
    const LlamaConfig c = llama_preset(preset);
    LlamaModel model(*gpu, c, 7);
    const auto tok = rng.ints(size_t(B * T), 0, c.vocab - 1), tgt = rng.ints(size_t(B * T), 0, c.vocab - 1);
    const double ms = median_ms(*gpu, 3, [&] { model.forward_backward(tok.data(), tgt.data(), B, T); });
    const double tokens = double(B) * T;
    const double flops = 6.0 * double(model.num_params()) * tokens + 12.0 * c.layers * c.d_model * double(T) * tokens;
    std::printf("%s forward+backward, batch %d x %d: %.1f ms, %.0f tokens/s, %.0f TFLOP/s by the 6ND+12LdT^2 count\n",
                preset, B, T, ms, tokens / ms * 1e3, flops / ms / 1e9);
  }
}

#endif  // DISTRO_HAVE_CUDA

// The fused causal attention kernels (kernels/flash_attention.cu) against the CPU device's
// attention_forward/attention_backward, called through their launchers on device buffers: fresh
// random normal inputs every run (the seed is printed on failure), guard bytes around every device
// output, the tolerances of the GEMM path's test (test_cuda_model_ops.cpp: bf16 inputs and P, float32
// accumulation), every output finite. Head sizes 32 (nano), 64 (small), 256 (1b); sequence lengths
// that are not multiples of any block (1, 37, 160, 300) and a long one. Also: the backward (and the
// forward) give the same bits on every run, and bad arguments are refused without a launch.
// [.][perf] times both directions at the 1b shape and at a small-preset shape, and the device's
// GEMM path (DISTRO_CUDA_ATTENTION=gemm) for comparison.
#include <catch2/catch.hpp>

#if defined(DISTRO_HAVE_CUDA)

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu_device.hpp"
#include "backend/registry.hpp"
#include "cuda/flash_attention.hpp"
#include "compare.hpp"
#include "guarded.hpp"

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

float scale_of(const HeadShape& s) { return 1.0f / std::sqrt(float(s.head_dim)); }  // the CPU's

void forward(const HeadShape& s, float* out, float* lse, const float* q, const float* k, const float* v) {
  REQUIRE(cuda::launch_flash_attention_forward(out, lse, q, k, v, s.batch, s.seq, s.heads, s.head_dim, scale_of(s),
                                               nullptr) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(nullptr) == cudaSuccess);
}

void backward(const HeadShape& s, float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
              const float* v, const float* out, const float* lse, void* scratch, uint64_t scratch_bytes) {
  REQUIRE(cuda::launch_flash_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scratch, scratch_bytes, s.batch,
                                                s.seq, s.heads, s.head_dim, scale_of(s), nullptr) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(nullptr) == cudaSuccess);
}

// Scratch for the backward: dS kept for every batch entry (the default), for one entry at a time
// (slices), or not at all (dq recomputed).
enum class Dq { all, one_entry, recompute };
uint64_t scratch_for(const HeadShape& s, Dq mode) {
  const uint64_t none = cuda::flash_attention_backward_scratch_bytes(s.batch, s.seq, s.heads, s.head_dim, 0);
  const uint64_t all = cuda::flash_attention_backward_scratch_bytes(s.batch, s.seq, s.heads, s.head_dim, ~uint64_t(0));
  if (mode == Dq::recompute) return none;
  if (mode == Dq::all) return all;
  return cuda::flash_attention_backward_scratch_bytes(s.batch, s.seq, s.heads, s.head_dim,
                                                      (all - none) / uint64_t(s.batch));
}
const char* dq_name(Dq m) { return m == Dq::all ? "dS kept" : m == Dq::one_entry ? "dS kept, one entry at a time" : "dq recomputed"; }

// One forward and backward through the flash kernels against the CPU device.
void check_flash(Device& gpu, CpuDevice& cpu, Rng& rng, const HeadShape& s) {
  INFO("flash attention batch " << s.batch << " seq " << s.seq << " heads " << s.heads << " head_dim "
                                << s.head_dim);
  const size_t n = size_t(s.batch * s.seq * s.heads * s.head_dim), nl = size_t(s.batch * s.heads * s.seq);
  const auto q = rng.normal(n), k = rng.normal(n), v = rng.normal(n), dout = rng.normal(n);
  std::vector<float> out(n), lse(nl), dq(n), dk(n), dv(n);
  cpu.attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s);
  cpu.attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(),
                         lse.data(), s);

  Guarded dQ = Guarded::of(gpu, q), dK = Guarded::of(gpu, k), dV = Guarded::of(gpu, v), dO(gpu, n * 4);
  Guarded dL(gpu, nl * 4);
  forward(s, dO.f(), dL.f(), dQ.f(), dK.f(), dV.f());
  const auto got_out = dO.get(), got_lse = dL.get();
  test::check_attention_forward(got_out, got_lse, out, lse);

  // Backward from the GPU's own forward results, as the model runs it. Query row 0 has one key, so
  // its dq and its share of dk are exactly zero on both devices. The dq from the kept dS must not
  // depend on how many batch entries share a launch.
  const uint64_t none = scratch_for(s, Dq::recompute), one = scratch_for(s, Dq::one_entry), all = scratch_for(s, Dq::all);
  CHECK(none >= nl * 4);
  CHECK(none < nl * 4 + 16);
  CHECK(one > none);
  CHECK(all - none == uint64_t(s.batch) * (one - none));
  Guarded dDout = Guarded::of(gpu, dout);
  std::vector<float> kept[3];
  for (Dq mode : {Dq::all, Dq::one_entry, Dq::recompute}) {
    INFO(dq_name(mode));
    const uint64_t bytes = scratch_for(s, mode);
    Guarded scratch(gpu, size_t(bytes)), gdq(gpu, n * 4), gdk(gpu, n * 4), gdv(gpu, n * 4);
    backward(s, gdq.f(), gdk.f(), gdv.f(), dDout.f(), dQ.f(), dK.f(), dV.f(), dO.f(), dL.f(), scratch.f(), bytes);
    const std::pair<const Guarded*, const std::vector<float>*> grads[] = {{&gdq, &dq}, {&gdk, &dk}, {&gdv, &dv}};
    const char* names[] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) {
      const std::vector<float> got = grads[i].first->get();
      test::check_attention_grad(names[i], got, *grads[i].second);
      CHECK(grads[i].first->guards_intact());
      if (mode == Dq::all) kept[i] = got;
      if (mode == Dq::one_entry) CHECK(same_bits(got, kept[i]));
    }
    CHECK(scratch.guards_intact());
  }
  CHECK(dO.guards_intact());
  CHECK(dL.guards_intact());
  // Inputs untouched.
  CHECK(dQ.get() == q);
  CHECK(dDout.get() == dout);
}

}  // namespace

TEST_CASE("cuda flash attention: forward and backward against the CPU", "[cuda][model][attention][flash]") {
  auto gpu = open_gpu();
  CpuDevice cpu(4);
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  // nano (head 32), small (64), the 1b head 256, sizes that are not multiples of any block, one
  // position, a long sequence.
  for (const HeadShape& s : {HeadShape{2, 64, 4, 32}, HeadShape{2, 128, 3, 64}, HeadShape{1, 160, 2, 256},
                             HeadShape{2, 37, 3, 64}, HeadShape{1, 1, 2, 32}, HeadShape{1, 1024, 1, 64},
                             HeadShape{2, 300, 2, 256}, HeadShape{1, 77, 2, 128}, HeadShape{3, 1, 2, 256}}) {
    if (!cuda::flash_attention_supported(s.head_dim)) {
      WARN("flash attention does not support head_dim " << s.head_dim << " on this device; skipped");
      continue;
    }
    check_flash(*gpu, cpu, rng, s);
  }
}

TEST_CASE("cuda flash attention: the same bits on every run", "[cuda][model][attention][flash]") {
  auto dev = open_gpu();
  Device& gpu = *dev;
  const uint64_t seed = fresh_seed();
  INFO("seed " << seed);
  Rng rng(seed);
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  for (const HeadShape& s : {HeadShape{2, 200, 3, 64}, HeadShape{1, 300, 2, 256}, HeadShape{2, 130, 2, 32}}) {
    if (!cuda::flash_attention_supported(s.head_dim)) continue;
    INFO("batch " << s.batch << " seq " << s.seq << " heads " << s.heads << " head_dim " << s.head_dim);
    const size_t n = size_t(s.batch * s.seq * s.heads * s.head_dim), nl = size_t(s.batch * s.heads * s.seq);
    Guarded q(gpu, n * 4, rng.normal(n).data()), k(gpu, n * 4, rng.normal(n).data()),
        v(gpu, n * 4, rng.normal(n).data()), dout(gpu, n * 4, rng.normal(n).data());
    const uint64_t scratch_bytes = scratch_for(s, Dq::all);
    Guarded scratch(gpu, size_t(scratch_bytes));
    std::vector<float> first[5];
    for (int run = 0; run < 2; ++run) {
      // Fresh outputs each run (holding the guard pattern), so nothing carries over.
      Guarded o(gpu, n * 4), l(gpu, nl * 4), dq(gpu, n * 4), dk(gpu, n * 4), dv(gpu, n * 4);
      forward(s, o.f(), l.f(), q.f(), k.f(), v.f());
      backward(s, dq.f(), dk.f(), dv.f(), dout.f(), q.f(), k.f(), v.f(), o.f(), l.f(), scratch.f(), scratch_bytes);
      std::vector<float> got[5] = {o.get(), l.get(), dq.get(), dk.get(), dv.get()};
      if (run == 0) {
        for (int i = 0; i < 5; ++i) first[i] = std::move(got[i]);
      } else {
        const char* names[] = {"out", "lse", "dq", "dk", "dv"};
        for (int i = 0; i < 5; ++i) {
          INFO(names[i]);
          CHECK(all_finite(got[i]));
          CHECK(same_bits(got[i], first[i]));
        }
      }
    }
  }
}

TEST_CASE("cuda flash attention: bad arguments are refused", "[cuda][model][attention][flash]") {
  auto dev = open_gpu();
  Device& gpu = *dev;
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  CHECK_FALSE(cuda::flash_attention_supported(20));
  CHECK_FALSE(cuda::flash_attention_supported(8));
  CHECK_FALSE(cuda::flash_attention_supported(0));
  CHECK_FALSE(cuda::flash_attention_supported(70000, 16, 2, 64));  // past the grid's batch limit
  CHECK_FALSE(cuda::flash_attention_supported(1, 16, 70000, 64));
  CHECK(cuda::flash_attention_supported(1, 16, 2, 64) == cuda::flash_attention_supported(64));
  if (!cuda::flash_attention_supported(64)) return;
  const HeadShape s{1, 16, 2, 64};
  const size_t n = size_t(s.batch * s.seq * s.heads * s.head_dim);
  Guarded a(gpu, n * 4 + 64), l(gpu, 16 * 2 * 4 + 64);
  float* p = a.f();
  const float sc = scale_of(s);
  // Unsupported head size, misaligned tensors, a null scratch: errors, nothing written.
  CHECK(cuda::launch_flash_attention_forward(p, l.f(), p, p, p, 1, 16, 2, 20, sc, nullptr) == cudaErrorInvalidValue);
  CHECK(cuda::launch_flash_attention_forward(p + 1, l.f(), p, p, p, 1, 16, 2, 64, sc, nullptr) ==
        cudaErrorMisalignedAddress);
  CHECK(cuda::launch_flash_attention_backward(p, p, p, p, p, p, p, p, l.f(), nullptr, 1024, 1, 16, 2, 64, sc,
                                              nullptr) == cudaErrorInvalidValue);
  // A scratch smaller than the row sums need.
  CHECK(cuda::launch_flash_attention_backward(p, p, p, p, p, p, p, p, l.f(), a.f(), 16 * 2 * 4 - 4, 1, 16, 2, 64, sc,
                                              nullptr) == cudaErrorInvalidValue);
  CHECK(cuda::launch_flash_attention_forward(p, l.f(), p, p, p, 1, 16, 70000, 64, sc, nullptr) ==
        cudaErrorInvalidValue);
  // Empty sizes launch nothing.
  CHECK(cuda::launch_flash_attention_forward(p, l.f(), p, p, p, 0, 16, 2, 64, sc, nullptr) == cudaSuccess);
  CHECK(cuda::launch_flash_attention_forward(p, l.f(), p, p, p, 1, 0, 2, 64, sc, nullptr) == cudaSuccess);
  CHECK(cudaStreamSynchronize(nullptr) == cudaSuccess);
  CHECK(cudaGetLastError() == cudaSuccess);  // nothing sticky
  const auto bytes = a.get<uint8_t>();
  CHECK(std::all_of(bytes.begin(), bytes.end(), [](uint8_t x) { return x == test::kPattern; }));
  CHECK(a.guards_intact());
  CHECK(l.guards_intact());
}

namespace {

// Median of `reps` timings (CUDA events on the legacy stream) after 2 warm-ups, in milliseconds.
template <class F>
double median_event_ms(int reps, F&& f) {
  f(), f();
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  cudaEvent_t a, b;
  REQUIRE(cudaEventCreate(&a) == cudaSuccess);
  REQUIRE(cudaEventCreate(&b) == cudaSuccess);
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    REQUIRE(cudaEventRecord(a, nullptr) == cudaSuccess);
    f();
    REQUIRE(cudaEventRecord(b, nullptr) == cudaSuccess);
    REQUIRE(cudaEventSynchronize(b) == cudaSuccess);
    float t = 0;
    REQUIRE(cudaEventElapsedTime(&t, a, b) == cudaSuccess);
    ms.push_back(t);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

TEST_CASE("cuda flash attention: timings", "[.][perf]") {
  auto gpu = open_gpu();
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  Rng rng(1);
  std::printf("device: %s\n", gpu->info().description.c_str());
  for (const HeadShape& s : {HeadShape{8, 2048, 8, 256}, HeadShape{16, 1024, 12, 64}}) {
    if (!cuda::flash_attention_supported(s.head_dim)) continue;
    const size_t n = size_t(s.batch * s.seq * s.heads * s.head_dim), nl = size_t(s.batch * s.heads * s.seq);
    const auto host = rng.normal(n);
    Guarded q(*gpu, n * 4, host.data()), k(*gpu, n * 4, rng.normal(n).data()), v(*gpu, n * 4, rng.normal(n).data()),
        dout(*gpu, n * 4, rng.normal(n).data()), o(*gpu, n * 4), l(*gpu, nl * 4), dq(*gpu, n * 4), dk(*gpu, n * 4),
        dv(*gpu, n * 4), scratch(*gpu, size_t(scratch_for(s, Dq::all)));
    const float sc = scale_of(s);
    const double fwd = median_event_ms(10, [&] {
      REQUIRE(cuda::launch_flash_attention_forward(o.f(), l.f(), q.f(), k.f(), v.f(), s.batch, s.seq, s.heads,
                                                   s.head_dim, sc, nullptr) == cudaSuccess);
    });
    // Backward with dS kept for the dq product (the default) and with dq recomputed.
    auto bwd_ms = [&](Dq mode) {
      const uint64_t bytes = scratch_for(s, mode);
      return median_event_ms(10, [&] {
        REQUIRE(cuda::launch_flash_attention_backward(dq.f(), dk.f(), dv.f(), dout.f(), q.f(), k.f(), v.f(), o.f(),
                                                      l.f(), scratch.f(), bytes, s.batch, s.seq, s.heads, s.head_dim,
                                                      sc, nullptr) == cudaSuccess);
      });
    };
    const double bwd = bwd_ms(Dq::all), bwd_re = bwd_ms(Dq::recompute);
    // Causal work: forward 2 products of 2 T^2 D per (batch, head), halved by the mask; backward 2.5x.
    const double causal = 2.0 * 2.0 * double(s.batch * s.heads) * double(s.seq) * double(s.seq) *
                          double(s.head_dim) / 2.0;
    // The GEMM path of CudaDevice for comparison (DISTRO_CUDA_ATTENTION=gemm; its own stream, so
    // timed around a synchronise).
    setenv("DISTRO_CUDA_ATTENTION", "gemm", 1);
    const double gfwd = median_event_ms(3, [&] {
      gpu->attention_forward(o.f(), l.f(), q.f(), k.f(), v.f(), s);
      gpu->synchronize();
    });
    const double gbwd = median_event_ms(3, [&] {
      gpu->attention_backward(dq.f(), dk.f(), dv.f(), dout.f(), q.f(), k.f(), v.f(), o.f(), l.f(), s);
      gpu->synchronize();
    });
    unsetenv("DISTRO_CUDA_ATTENTION");
    std::printf("flash attention batch %lld seq %lld heads %lld head_dim %lld: forward %.3f ms (%.0f causal TFLOP/s), "
                "backward %.3f ms (%.0f), with dq recomputed %.3f ms (%.0f); GEMM path forward %.3f ms (%.0f), "
                "backward %.3f ms (%.0f)\n",
                (long long)s.batch, (long long)s.seq, (long long)s.heads, (long long)s.head_dim, fwd,
                causal / fwd / 1e9, bwd, 2.5 * causal / bwd / 1e9, bwd_re, 2.5 * causal / bwd_re / 1e9, gfwd,
                causal / gfwd / 1e9, gbwd, 2.5 * causal / gbwd / 1e9);
  }
}

#endif  // DISTRO_HAVE_CUDA

// The DisTrO optimizer ops on CUDA against the CPU reference (DESIGN.md sections 3 and 4):
//   - apply: bit-identical to CpuDevice on random merged updates (parameters near the subnormal
//     range, decay factors != 1, values of every size);
//   - compress: the same top-k indices except in chunks whose k-th and (k+1)-th magnitudes are a
//     near-tie, the same signs, the residual momentum within 1e-5 of the momentum's norm;
//   - end to end: a CPU peer and a CUDA peer merge their payloads for 20 steps and their parameters
//     stay bit-identical;
//   - a non-finite gradient is refused with Error(numeric) and leaves the momentum untouched.
// Fresh random data in every case, guard bytes around every output.
#include <catch2/catch.hpp>

#if defined(DISTRO_HAVE_CUDA) || defined(DISTRO_EMU)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "backend/cpu_device.hpp"
#include "cuda/kernels.hpp"
#include "guarded.hpp"
#include "optim/chunk_math.hpp"
#include "optim/dct.hpp"
#include "optim/manifest.hpp"
#include "optim/merger.hpp"
#include "optim/optimizer.hpp"

#if defined(DISTRO_EMU)
std::unique_ptr<distro::Device> make_emu_device();  // host-thread emulation of the kernels
#else
#include "backend/registry.hpp"
#endif

using namespace distro;

namespace {

std::unique_ptr<Device> open_gpu() {
#if defined(DISTRO_EMU)
  return make_emu_device();
#else
  auto devs = scan_cuda_devices();
  REQUIRE(!devs.empty());
  return std::move(devs[0]);
#endif
}

// Sizes shrink under the host emulation, which runs every GPU thread as a host thread.
#if defined(DISTRO_EMU)
constexpr int kScale = 1;
#else
constexpr int kScale = 4;
#endif

using test::Guarded;

bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Parameters of every kind the apply meets: ordinary values, values near FLT_MIN that the decay
// or the step pushes into the subnormal range, subnormals, signed zeros.
std::vector<float> random_params(size_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::uniform_int_distribution<int> kind(0, 9);
  std::uniform_real_distribution<float> near(0.5f, 4.0f);
  std::vector<float> v(n);
  for (auto& x : v) {
    switch (kind(rng)) {
      case 0: x = near(rng) * std::numeric_limits<float>::min() * (rng() & 1 ? 1.0f : -1.0f); break;
      case 1: x = from_bits(uint32_t(rng() & 0x007FFFFFu) | uint32_t(rng() & 1) << 31); break;  // subnormal
      case 2: x = rng() & 1 ? 0.0f : -0.0f; break;
      case 3: x = from_bits(0x00800000u + uint32_t(rng() % 64)) * (rng() & 1 ? 1.0f : -1.0f); break;
      default: x = nd(rng);
    }
  }
  return v;
}

std::vector<float> random_normal(size_t n, float sigma, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// A random merged update for one tensor: per chunk up to max_u distinct ascending indices with
// values in [-vmax, vmax].
struct TensorUpdate {
  std::vector<uint32_t> offset;
  std::vector<uint16_t> index;
  std::vector<int32_t> value;
};

TensorUpdate random_update(const TensorPlan& p, uint32_t max_u, int64_t vmax, std::mt19937_64& rng) {
  TensorUpdate u;
  const uint32_t E = p.elems();
  std::uniform_int_distribution<int64_t> val(-vmax, vmax);
  std::vector<uint16_t> all(E);
  for (uint32_t i = 0; i < E; ++i) all[i] = uint16_t(i);
  u.offset.push_back(0);
  for (uint64_t c = 0; c < p.chunks; ++c) {
    uint32_t n = uint32_t(rng() % (uint64_t(std::min(max_u, E)) + 1));
    if (c == 0) n = 0;  // one chunk with an empty update: decay only
    // Partial Fisher-Yates for n distinct indices, then ascending.
    for (uint32_t i = 0; i < n; ++i) std::swap(all[i], all[i + rng() % (E - i)]);
    std::vector<uint16_t> pick(all.begin(), all.begin() + n);
    std::sort(pick.begin(), pick.end());
    for (uint16_t id : pick) {
      u.index.push_back(id);
      u.value.push_back(int32_t(val(rng)));
    }
    u.offset.push_back(uint32_t(u.index.size()));
  }
  return u;
}

struct Case {
  std::string name;
  std::vector<TensorSpec> specs;
  uint32_t chunk, topk;
  bool smooth = false;  // compress test: gradients whose chunks' energy sits in a few low frequencies
};

// The manifests the tests run over: 64x64 chunks, rank-1 tensors, GPT-2's vocabulary rows
// (50257 = 29 * 1733 gives 29-row chunks), a 256x256 chunk, a rank-3 tensor, and large k (the
// selection's general path) including k = every coefficient.
std::vector<Case> cases() {
  const int64_t s = kScale;
  return {
      {"64x64 k=4", {{"w", {128 * s, 192}}, {"u", {64, 64}}}, 64, 4},
      {"64x64 k=4 smooth", {{"w", {128 * s, 128}}}, 64, 4, true},
      {"64x64 k=1", {{"w", {64 * s, 128}}}, 64, 1},
      {"64x64 k=32", {{"w", {64 * s, 256}}}, 64, 32},
      {"rank-1 k=32", {{"norm", {2048}}, {"bias", {100}}, {"odd", {61}}}, 64, 32},
      {"gpt2 vocab 29x64 k=4", {{"wte", {29 * 3 * s, 128}}}, 64, 4},
      {"256x256 k=32", {{"big", {256, 512}}}, 256, 32},
      {"rank-3 k=8", {{"c", {2, 64, 7}}, {"d", {3, 64, 128}}}, 64, 8},
      {"64x64 k=300", {{"w", {128, 128}}}, 64, 300},
      {"32x32 k=all", {{"w", {64, 96}}}, 32, 1024},
  };
}

}  // namespace

// ---------------------------------------------------------------------------------------------

// The kernels find a chunk's row of blocks by ChunkRun::block_row, a multiply and shift: exact for
// every c < 2^31, which checked_run guarantees per tensor.
TEST_CASE("cuda optimizer: the chunk runs' division by multiplication is exact", "[cuda][optimizer]") {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  INFO("seed " << seed);
  rng.seed(seed);
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (uint32_t l = 12; l < 31; ++l)
    for (uint32_t d : {(1u << l) - 1, 1u << l, (1u << l) + 1, uint32_t(rng() % (1u << l)) | (1u << l)}) divisors.push_back(d);
  divisors.push_back(0x7FFFFFFFu);
  for (uint32_t d : divisors) {
    cuda::ChunkRun run;
    cuda::fast_division(d, run.div_mul, run.div_shift);
    std::vector<uint32_t> cs = {0, 1, d - 1, d, 0x7FFFFFFFu, 0x7FFFFFFFu - 1, 0x7FFFFFFFu / d * d, 0x7FFFFFFFu / d * d - 1};
    for (int i = 0; i < 64; ++i) cs.push_back(uint32_t(rng() & 0x7FFFFFFFu));
    for (uint32_t c : cs) {
      if (c > 0x7FFFFFFFu) continue;  // d - 1 or a product minus one wrapped below zero
      const uint32_t q = run.block_row(c);
      if (q != c / d) FAIL("d " << d << " c " << c << ": " << q << " != " << c / d);
    }
  }
  SUCCEED("all divisors exact");
}

TEST_CASE("cuda optimizer: apply is bit-identical to the CPU", "[cuda][optimizer][apply]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  INFO("seed " << seed);
  rng.seed(seed);
  // 64x64 chunks run the folded kernel by default and the plain one with DISTRO_CUDA_APPLY_FOLD=0.
  for (const char* fold : {"1", "0"}) {
  setenv("DISTRO_CUDA_APPLY_FOLD", fold, 1);
  for (const Case& cs : cases()) {
    const Manifest m = make_manifest(cs.specs, cs.chunk, cs.topk, ValueMode::int8);
    for (const TensorPlan& p : m.tensors) {
      // (max entries per chunk, |value| bound, lr, decay): merged sign means, int8 means, many
      // peers' unions, values of any int32 size (the kernel's wide path), tiny lr.
      struct Setup { uint32_t max_u; int64_t vmax; float lr, decay; };
      const Setup setups[] = {
          {8, 256, 1e-3f, 1.0f},
          {64, 256 * 127, 4e-4f, 1.0f - 4e-4f * 0.1f},
          {600, 256 * 127, 1e-2f, 0.5f},
          {2500, 256 * 127, 1e-3f, 0.999f},  // more entries than the folded kernel stages
          {6, int64_t(1) << 30, 2e-4f, 0.999f},
          {16, 256, 1e-38f, 1.0f - 1e-7f},
      };
      for (const Setup& su : setups) {
        INFO(cs.name << ", fold " << fold << ", tensor " << p.name << ", max_u " << su.max_u << ", vmax " << su.vmax << ", lr "
                     << su.lr << ", decay " << su.decay);
        const TensorUpdate u = random_update(p, su.max_u, su.vmax, rng);
        const std::vector<float> params = random_params(p.numel, rng);

        std::vector<float> want = params;
        ApplyArgs a;
        a.plan = &p;
        a.offset = u.offset.data();
        a.index = u.index.data();
        a.value = u.value.data();
        a.params = want.data();
        a.lr = su.lr;
        a.decay_factor = su.decay;
        cpu.apply(a);

        Guarded dp(*gpu, p.numel * 4, params.data());
        Guarded doff(*gpu, u.offset.size() * 4, u.offset.data());
        Guarded didx(*gpu, u.index.size() * 2 + 2, nullptr);
        Guarded dval(*gpu, u.value.size() * 4 + 4, nullptr);
        if (!u.index.empty()) {
          gpu->upload(didx.data<uint16_t>(), u.index.data(), u.index.size() * 2);
          gpu->upload(dval.data<int32_t>(), u.value.data(), u.value.size() * 4);
        }
        a.offset = doff.data<uint32_t>();
        a.index = didx.data<uint16_t>();
        a.value = dval.data<int32_t>();
        a.params = dp.data<float>();
        gpu->apply(a);
        gpu->synchronize();
        const std::vector<float> got = dp.get<float>();
        CHECK(dp.guards_intact());
        if (!bits_equal(got, want)) {
          size_t bad = 0, first = SIZE_MAX;
          for (size_t i = 0; i < got.size(); ++i)
            if (std::memcmp(&got[i], &want[i], 4) != 0) bad += 1, first = std::min(first, i);
          FAIL_CHECK(bad << " of " << got.size() << " parameters differ; first at " << first << ": gpu "
                         << got[first] << " cpu " << want[first] << " (was " << params[first] << ")");
        }
        // The update moved something (a vacuous comparison proves nothing), where it could: a tensor
        // of one chunk may draw an empty or all-zero update (chunk 0 is always empty), and with a
        // decay factor of 1 only subnormal parameters would then change.
        const bool can_move =
            su.decay != 1.0f || std::any_of(u.value.begin(), u.value.end(), [](int32_t v) { return v != 0; });
        if (can_move) CHECK(!bits_equal(got, params));
      }
    }
  }
  }
  unsetenv("DISTRO_CUDA_APPLY_FOLD");
}

TEST_CASE("cuda optimizer: compress agrees with the CPU except on near-ties", "[cuda][optimizer][compress]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  INFO("seed " << seed);
  rng.seed(seed);
  uint64_t total_chunks = 0, near_ties = 0;
  // 64x64 chunks run the folded kernel, its transforms on tensor cores (DISTRO_CUDA_DCT_MMA=1, the
  // default) or float32 multiply-adds, keeping the momentum in registers (DISTRO_CUDA_DCT_KEEPX=1,
  // the default with tensor cores) or recomputing it, and the plain one with DISTRO_CUDA_DCT_FOLD=0.
  for (const char* variant : {"111", "101", "100", "110", "000"}) {
  const std::string fold(1, variant[0]), keep(1, variant[1]), mma(1, variant[2]);
  setenv("DISTRO_CUDA_DCT_FOLD", fold.c_str(), 1);
  setenv("DISTRO_CUDA_DCT_KEEPX", keep.c_str(), 1);
  setenv("DISTRO_CUDA_DCT_MMA", mma.c_str(), 1);
  for (const Case& cs : cases()) {
    for (ValueMode vm : {ValueMode::sign, ValueMode::int8}) {
      const Manifest m = make_manifest(cs.specs, cs.chunk, cs.topk, vm);
      const DctTables tables(m);
      for (const TensorPlan& p : m.tensors) {
        INFO(cs.name << (vm == ValueMode::sign ? ", sign" : ", int8") << ", tensor " << p.name << ", fold "
                     << fold << ", keep " << keep << ", mma " << mma);
        const float beta = 0.999f, lr = 1e-3f;
        std::vector<float> grad = random_normal(p.numel, 1.0f, rng);
        std::vector<float> delta = random_normal(p.numel, 3e-3f, rng);
        if (cs.smooth) {
          // Slow waves of random phase plus a little noise: each chunk's DCT has a few large
          // low-frequency coefficients and many small ones, unlike white noise.
          std::uniform_real_distribution<float> phase(0.0f, 6.2831853f);
          const float a = phase(rng), b = phase(rng);
          const uint64_t rows = p.numel / p.cols;
          for (uint64_t i = 0; i < rows; ++i)
            for (uint64_t j = 0; j < p.cols; ++j)
              grad[i * p.cols + j] = std::sin(0.05f * float(i) + a) + std::cos(0.07f * float(j) + b) +
                                     1e-3f * grad[i * p.cols + j];
        }
        // One chunk entirely zero (no coefficient to send) where the tensor has several.
        if (p.chunks > 2)
          for (uint32_t i = 0; i < p.n1; ++i)
            for (uint32_t j = 0; j < p.n2; ++j) {
              const uint64_t o = chunk_origin(p, 1) + uint64_t(i) * p.cols + j;
              grad[o] = 0.0f, delta[o] = 0.0f;
            }

        // The CPU: its own copies.
        std::vector<float> cdelta = delta;
        std::vector<uint16_t> ccount(p.chunks), cidx(p.chunks * p.k);
        std::vector<int8_t> cval(p.chunks * p.k);
        CompressArgs a;
        a.plan = &p;
        a.grad = grad.data();
        a.delta = cdelta.data();
        a.beta = beta;
        a.lr = lr;
        a.values = vm;
        a.count = ccount.data();
        a.index = cidx.data();
        a.value = cval.data();
        cpu.compress(a);

        // The GPU, with guards around every output; odd-sized tensors also run from a pointer
        // that is not 16-byte aligned (the generic kernel).
        Guarded dg(*gpu, p.numel * 4, grad.data());
        Guarded dd(*gpu, p.numel * 4, delta.data());
        Guarded dc(*gpu, p.chunks * 2);
        Guarded di(*gpu, p.chunks * p.k * 2);
        Guarded dv(*gpu, p.chunks * p.k);
        a.grad = dg.data<float>();
        a.delta = dd.data<float>();
        a.count = dc.data<uint16_t>();
        a.index = di.data<uint16_t>();
        a.value = dv.data<int8_t>();
        gpu->compress(a);
        gpu->synchronize();
        const auto gcount = dc.get<uint16_t>();
        const auto gidx = di.get<uint16_t>();
        const auto gval = dv.get<int8_t>();
        const auto gdelta = dd.get<float>();
        CHECK(dc.guards_intact());
        CHECK(di.guards_intact());
        CHECK(dv.guards_intact());
        CHECK(dd.guards_intact());
        CHECK(dg.guards_intact());

        // Per chunk: the float64 coefficients of the momentum, to tell near-ties.
        const DctBasis& b1 = tables.get(p.n1);
        const DctBasis& b2 = tables.get(p.n2);
        std::vector<double> x(p.elems()), y(p.elems());
        double worst_residual = 0.0;
        for (uint64_t c = 0; c < p.chunks; ++c) {
          total_chunks += 1;
          const uint64_t org = chunk_origin(p, c);
          double xnorm = 0.0;
          for (uint32_t i = 0; i < p.n1; ++i)
            for (uint32_t j = 0; j < p.n2; ++j) {
              const uint64_t o = org + uint64_t(i) * p.cols + j;
              const float xv = beta * delta[o] + lr * grad[o];
              x[size_t(i) * p.n2 + j] = xv;
              xnorm += double(xv) * xv;
            }
          dct_chunk_forward(x.data(), p.n2, b1, b2, y.data());
          std::vector<double> mags;
          for (double v : y)
            if (std::fabs(v) > 0.0) mags.push_back(std::fabs(v));
          std::sort(mags.rbegin(), mags.rend());
          const uint32_t k = p.k;
          const bool tie = mags.size() > k && mags[k - 1] - mags[k] <= 1e-4 * mags[k - 1];

          REQUIRE(gcount[c] == ccount[c]);
          const uint32_t n = ccount[c];
          const bool same = std::equal(cidx.begin() + c * k, cidx.begin() + c * k + n, gidx.begin() + c * k);
          if (!same) {
            INFO("chunk " << c << " of " << p.chunks << ": k-th " << (mags.size() >= k ? mags[k - 1] : 0.0)
                          << ", next " << (mags.size() > k ? mags[k] : 0.0));
            CHECK(tie);
            near_ties += 1;
            continue;
          }
          for (uint32_t s = 0; s < n; ++s) {
            const int cv = cval[c * k + s], gv = gval[c * k + s];
            CHECK((cv < 0) == (gv < 0));
            if (vm == ValueMode::sign) CHECK(cv == gv);
            else CHECK(std::abs(cv - gv) <= 1);
          }
          for (uint32_t s = 1; s < n; ++s) CHECK(gidx[c * k + s - 1] < gidx[c * k + s]);
          double diff = 0.0;
          for (uint32_t i = 0; i < p.n1; ++i)
            for (uint32_t j = 0; j < p.n2; ++j) {
              const uint64_t o = org + uint64_t(i) * p.cols + j;
              diff += (double(gdelta[o]) - cdelta[o]) * (double(gdelta[o]) - cdelta[o]);
            }
          if (xnorm > 0.0) worst_residual = std::max(worst_residual, std::sqrt(diff / xnorm));
          else CHECK(diff == 0.0);
        }
        CHECK(worst_residual <= 1e-5);
      }
    }
  }
  }
  unsetenv("DISTRO_CUDA_DCT_FOLD");
  unsetenv("DISTRO_CUDA_DCT_KEEPX");
  unsetenv("DISTRO_CUDA_DCT_MMA");
  INFO(near_ties << " near-tie chunks of " << total_chunks);
  CHECK(near_ties * 100 <= total_chunks);  // rare: at most 1%
}

TEST_CASE("cuda optimizer: first_nonfinite_momentum finds the lowest offender", "[cuda][optimizer]") {
  auto gpu = open_gpu();
  CpuDevice cpu(2);
  std::mt19937_64 rng(std::random_device{}());
  for (uint64_t n : {uint64_t(1), uint64_t(7), uint64_t(4096), uint64_t(100'003) * kScale}) {
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<float> grad = random_normal(n, 1.0f, rng), delta = random_normal(n, 1.0f, rng);
      const float beta = 0.9f, lr = 1e-2f;
      if (trial > 0) {
        const float bad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()};
        for (int b = 0; b < trial; ++b) grad[rng() % n] = bad[rng() % 2];
      }
      const uint64_t want = cpu.first_nonfinite_momentum(delta.data(), grad.data(), beta, lr, n);
      // Both pointers unaligned too (sub-range of a buffer), which takes the scalar kernel.
      for (uint64_t off : {uint64_t(0), uint64_t(1)}) {
        Guarded dg(*gpu, (n + 1) * 4), dd(*gpu, (n + 1) * 4);
        gpu->upload(dg.data<float>() + off, grad.data(), n * 4);
        gpu->upload(dd.data<float>() + off, delta.data(), n * 4);
        INFO("n " << n << " trial " << trial << " offset " << off);
        CHECK(gpu->first_nonfinite_momentum(dd.data<float>() + off, dg.data<float>() + off, beta, lr, n) == want);
      }
    }
  }
  // Overflow of the momentum from finite inputs.
  std::vector<float> grad(100, 1.0f), delta(100, 1.0f);
  grad[37] = 3e38f;
  Guarded dg(*gpu, 400, grad.data()), dd(*gpu, 400, delta.data());
  CHECK(gpu->first_nonfinite_momentum(dd.data<float>(), dg.data<float>(), 0.9f, 10.0f, 100) == 37);
  CHECK(cpu.first_nonfinite_momentum(delta.data(), grad.data(), 0.9f, 10.0f, 100) == 37);
  CHECK(gpu->first_nonfinite_momentum(dd.data<float>(), dg.data<float>(), 0.9f, 1.0f, 100) == UINT64_MAX);
}

TEST_CASE("cuda optimizer: bad arguments are errors and the device keeps working", "[cuda][optimizer]") {
  auto gpu = open_gpu();
  const Manifest m = make_manifest({{"w", {64, 64}}}, 64, 4, ValueMode::sign);
  const TensorPlan& p = m.tensors[0];
  Guarded dg(*gpu, 4096 * 4), dd(*gpu, 4096 * 4), dc(*gpu, 2), di(*gpu, 8), dv(*gpu, 4);
  std::vector<float> host(4096, 1.0f);
  CompressArgs a;
  a.plan = &p;
  a.grad = host.data();  // a host pointer
  a.delta = dd.data<float>();
  a.beta = 0.9f;
  a.lr = 0.1f;
  a.count = dc.data<uint16_t>();
  a.index = di.data<uint16_t>();
  a.value = dv.data<int8_t>();
  try {
    gpu->compress(a);
    FAIL("compress of a host pointer succeeded");
  } catch (const Error& e) {
    CHECK((e.code() == Code::invalid_argument || e.code() == Code::size));
  }
  // An index buffer one slot short of chunks * k.
  DeviceMemory small = gpu->alloc(6);
  a.grad = dg.data<float>();
  a.index = small.as<uint16_t>();
  try {
    gpu->compress(a);
    FAIL("compress into a short buffer succeeded");
  } catch (const Error& e) {
    CHECK(e.code() == Code::size);
  }
  a.plan = nullptr;
  try {
    gpu->compress(a);
    FAIL("compress without a plan succeeded");
  } catch (const Error& e) {
    CHECK(e.code() == Code::invalid_argument);
  }
  // 2^31 chunks in one tensor: past what the kernels' chunk arithmetic takes (checked first, before
  // any buffer).
  TensorPlan huge = p;
  huge.cols = 64ull << 31;
  huge.numel = huge.rows * huge.cols;
  huge.chunks = 1ull << 31;
  a.plan = &huge;
  try {
    gpu->compress(a);
    FAIL("compress of 2^31 chunks succeeded");
  } catch (const Error& e) {
    CHECK(e.code() == Code::unsupported);
    CHECK(std::string(e.what()).find("at most 2^31 - 1") != std::string::npos);
  }
  // Still works.
  std::mt19937_64 rng(5);
  auto g = random_normal(4096, 1.0f, rng);
  gpu->upload(dg.data<float>(), g.data(), 4096 * 4);
  a.plan = &p;
  a.index = di.data<uint16_t>();
  gpu->compress(a);
  gpu->synchronize();
  CHECK(dc.get<uint16_t>()[0] == 4);
}

// compress_many / apply_many run many tensors per launch (up to cuda::kMaxRuns of one kind): every
// tensor must come out exactly as from its own compress / apply call, across launches split at
// kMaxRuns, kinds (64x64, rank-1 rows, 29-row chunks, rank-3, a misaligned 64x64 tensor that the
// generic kernel takes) and scalars that differ between tensors.
TEST_CASE("cuda optimizer: compress_many and apply_many equal the single ops tensor by tensor",
          "[cuda][optimizer][batched]") {
  auto gpu = open_gpu();
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  INFO("seed " << seed);
  rng.seed(seed);
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 61; ++i) {  // 61 + 2 of the folded kernel's kind: two launches (48 + 15)
    specs.push_back({"m" + std::to_string(i), {64 * (1 + i % 3), 64 * (1 + i % 2)}});
    if (i % 10 == 0) specs.push_back({"norm" + std::to_string(i), {64 + i}});
  }
  specs.push_back({"rows29", {29 * 2, 128}});
  specs.push_back({"rank3", {2, 64, 128}});
  specs.push_back({"misaligned", {64, 128}});
  specs.push_back({"last", {128, 64}});
  const Manifest m = make_manifest(specs, 64, 4, ValueMode::sign);
  const size_t T = m.tensors.size();

  struct Bufs {
    std::unique_ptr<Guarded> grad, delta, params, count, index, value;
    size_t shift = 0;  // bytes: the misaligned tensor's grad and params start 4 bytes in
  };
  auto make = [&](const std::vector<std::vector<float>>& g, const std::vector<std::vector<float>>& d,
                  const std::vector<std::vector<float>>& w) {
    std::vector<Bufs> b(T);
    for (size_t t = 0; t < T; ++t) {
      const TensorPlan& p = m.tensors[t];
      b[t].shift = p.name == "misaligned" ? 4 : 0;
      std::vector<float> gs(p.numel + 4), ws(p.numel + 4);
      std::copy(g[t].begin(), g[t].end(), gs.begin() + b[t].shift / 4);
      std::copy(w[t].begin(), w[t].end(), ws.begin() + b[t].shift / 4);
      b[t].grad = std::make_unique<Guarded>(*gpu, gs.size() * 4, gs.data());
      b[t].delta = std::make_unique<Guarded>(*gpu, p.numel * 4, d[t].data());
      b[t].params = std::make_unique<Guarded>(*gpu, ws.size() * 4, ws.data());
      b[t].count = std::make_unique<Guarded>(*gpu, p.chunks * 2);
      b[t].index = std::make_unique<Guarded>(*gpu, p.chunks * p.k * 2);
      b[t].value = std::make_unique<Guarded>(*gpu, p.chunks * p.k);
    }
    return b;
  };
  auto compress_args = [&](std::vector<Bufs>& b) {
    std::vector<CompressArgs> a(T);
    for (size_t t = 0; t < T; ++t) {
      a[t].plan = &m.tensors[t];
      a[t].grad = reinterpret_cast<const float*>(b[t].grad->data<uint8_t>() + b[t].shift);
      a[t].delta = b[t].delta->data<float>();
      a[t].beta = 0.999f;
      a[t].lr = 1e-3f;
      a[t].values = ValueMode::sign;
      a[t].count = b[t].count->data<uint16_t>();
      a[t].index = b[t].index->data<uint16_t>();
      a[t].value = b[t].value->data<int8_t>();
    }
    return a;
  };

  // folded on tensor cores keeping x and recomputing it, folded on float32, keeping x, plain
  for (const char* variant : {"111", "101", "100", "110", "000"}) {
    const std::string fold(1, variant[0]), keep(1, variant[1]), mma(1, variant[2]);
    INFO("fold " << fold << ", keep " << keep << ", mma " << mma);
    setenv("DISTRO_CUDA_DCT_FOLD", fold.c_str(), 1);
    setenv("DISTRO_CUDA_DCT_KEEPX", keep.c_str(), 1);
    setenv("DISTRO_CUDA_DCT_MMA", mma.c_str(), 1);
    setenv("DISTRO_CUDA_APPLY_FOLD", fold.c_str(), 1);
    std::vector<std::vector<float>> g(T), d(T), w(T);
    for (size_t t = 0; t < T; ++t) {
      g[t] = random_normal(m.tensors[t].numel, 1.0f, rng);
      d[t] = random_normal(m.tensors[t].numel, 3e-3f, rng);
      w[t] = random_params(m.tensors[t].numel, rng);
    }
    std::vector<Bufs> one = make(g, d, w), many = make(g, d, w);
    std::vector<CompressArgs> a1 = compress_args(one), am = compress_args(many);
    for (const CompressArgs& a : a1) gpu->compress(a);
    gpu->compress_many(am.data(), am.size());
    gpu->synchronize();

    // The merged update of this payload, per tensor; half the tensors get another decay factor,
    // so the apply runs launches of two kinds.
    std::vector<TensorUpdate> ups(T);
    std::vector<std::unique_ptr<Guarded>> uoff(T), uidx(T), uval(T);
    std::vector<ApplyArgs> p1(T), pm(T);
    for (size_t t = 0; t < T; ++t) {
      const TensorPlan& p = m.tensors[t];
      INFO("tensor " << p.name);
      CHECK(one[t].count->get<uint16_t>() == many[t].count->get<uint16_t>());
      const auto cnt = one[t].count->get<uint16_t>();
      const auto i1 = one[t].index->get<uint16_t>(), im = many[t].index->get<uint16_t>();
      const auto v1 = one[t].value->get<int8_t>(), vm = many[t].value->get<int8_t>();
      for (uint64_t c = 0; c < p.chunks; ++c)
        for (uint32_t s2 = 0; s2 < cnt[c]; ++s2) {
          CHECK(i1[c * p.k + s2] == im[c * p.k + s2]);
          CHECK(v1[c * p.k + s2] == vm[c * p.k + s2]);
        }
      const auto d1 = one[t].delta->get<float>(), dm = many[t].delta->get<float>();
      CHECK(bits_equal(d1, dm));
      CHECK(!bits_equal(dm, d[t]));  // the momentum moved
      for (auto* bf : {&one[t], &many[t]})
        for (auto* gb : {bf->grad.get(), bf->delta.get(), bf->count.get(), bf->index.get(), bf->value.get()})
          CHECK(gb->guards_intact());

      ups[t] = random_update(p, 24, 256, rng);
      uoff[t] = std::make_unique<Guarded>(*gpu, ups[t].offset.size() * 4, ups[t].offset.data());
      uidx[t] = std::make_unique<Guarded>(*gpu, ups[t].index.size() * 2 + 2, nullptr);
      uval[t] = std::make_unique<Guarded>(*gpu, ups[t].value.size() * 4 + 4, nullptr);
      if (!ups[t].index.empty()) {
        gpu->upload(uidx[t]->data<uint16_t>(), ups[t].index.data(), ups[t].index.size() * 2);
        gpu->upload(uval[t]->data<int32_t>(), ups[t].value.data(), ups[t].value.size() * 4);
      }
      for (auto [a, b] : {std::pair{&p1[t], &one[t]}, std::pair{&pm[t], &many[t]}}) {
        a->plan = &p;
        a->offset = uoff[t]->data<uint32_t>();
        a->index = uidx[t]->data<uint16_t>();
        a->value = uval[t]->data<int32_t>();
        a->params = reinterpret_cast<float*>(b->params->data<uint8_t>() + b->shift);
        a->lr = 4e-4f;
        a->decay_factor = t % 2 ? 1.0f : 1.0f - 4e-5f;
      }
    }
    for (const ApplyArgs& a : p1) gpu->apply(a);
    gpu->apply_many(pm.data(), pm.size());
    gpu->synchronize();
    for (size_t t = 0; t < T; ++t) {
      INFO("apply, tensor " << m.tensors[t].name);
      const auto w1 = one[t].params->get<float>(), wm = many[t].params->get<float>();
      CHECK(bits_equal(w1, wm));
      std::vector<float> before(m.tensors[t].numel + 4, 0.0f);
      std::copy(w[t].begin(), w[t].end(), before.begin() + one[t].shift / 4);
      CHECK(!bits_equal(wm, before));
      CHECK(many[t].params->guards_intact());
    }
  }
  unsetenv("DISTRO_CUDA_DCT_FOLD");
  unsetenv("DISTRO_CUDA_DCT_KEEPX");
  unsetenv("DISTRO_CUDA_DCT_MMA");
  unsetenv("DISTRO_CUDA_APPLY_FOLD");

  // One bad tensor among good ones: an error, and nothing was queued for any of them.
  std::vector<std::vector<float>> g(T), d(T), w(T);
  for (size_t t = 0; t < T; ++t) {
    g[t] = random_normal(m.tensors[t].numel, 1.0f, rng);
    d[t] = random_normal(m.tensors[t].numel, 3e-3f, rng);
    w[t] = random_params(m.tensors[t].numel, rng);
  }
  std::vector<Bufs> b = make(g, d, w);
  std::vector<CompressArgs> a = compress_args(b);
  DeviceMemory short_index = gpu->alloc(2);
  a[T - 1].index = short_index.as<uint16_t>();
  try {
    gpu->compress_many(a.data(), a.size());
    FAIL("compress_many with a short index buffer succeeded");
  } catch (const Error& e) {
    CHECK(e.code() == Code::size);
  }
  gpu->synchronize();
  for (size_t t = 0; t < T; ++t) CHECK(bits_equal(b[t].delta->get<float>(), d[t]));
}

#if !defined(DISTRO_EMU)

namespace {

struct Peer {
  std::vector<std::vector<float>> params, grads;
  std::unique_ptr<Optimizer> opt;
  Peer(const std::vector<TensorSpec>& specs, const std::string& device, uint32_t peer, ValueMode vm,
       uint64_t seed) {
    OptimizerOptions o;
    o.run_id = 9;
    o.peer_id = peer;
    o.topk = 8;
    o.decay = 0.995f;
    o.values = vm;
    o.device = device;
    o.threads = 2;
    opt = std::make_unique<Optimizer>(o);
    std::mt19937_64 rng(seed);
    for (const auto& t : specs) {
      uint64_t n = 1;
      for (auto d : t.shape) n *= uint64_t(d);
      params.push_back(random_params(n, rng));
      grads.emplace_back(n, 0.0f);
    }
    for (size_t t = 0; t < specs.size(); ++t)
      opt->add_tensor(specs[t].name, specs[t].shape, params[t].data(), grads[t].data());
  }
};

}  // namespace

TEST_CASE("cuda optimizer: a CPU peer and a CUDA peer stay bit-identical for 20 steps",
          "[cuda][optimizer][e2e]") {
  const std::vector<TensorSpec> specs = {
      {"w", {256, 192}}, {"v", {100}}, {"e", {87, 64}}, {"c", {2, 64, 7}}, {"n", {2048}}};
  for (ValueMode vm : {ValueMode::sign, ValueMode::int8}) {
    INFO((vm == ValueMode::sign ? "sign" : "int8"));
    const uint64_t seed = std::random_device{}();
    INFO("seed " << seed);
    Peer cpu(specs, "cpu", 0, vm, seed), gpu(specs, "cuda:0", 1, vm, seed);
    REQUIRE(cpu.params == gpu.params);
    std::mt19937_64 rng(seed + 1);
    uint64_t prev = cpu.opt->param_hash();
    CHECK(gpu.opt->param_hash() == prev);
    for (uint64_t step = 1; step <= 20; ++step) {
      INFO("step " << step);
      // Copy into the buffers the optimizers hold pointers to (never replace the vectors).
      for (size_t t = 0; t < specs.size(); ++t) {
        const auto g = random_normal(cpu.grads[t].size(), 1.0f, rng);
        std::copy(g.begin(), g.end(), cpu.grads[t].begin());
        std::copy(g.begin(), g.end(), gpu.grads[t].begin());
      }
      const float lr = 1e-3f * float(step);
      PeerPayload p0 = cpu.opt->compress(step, lr);
      PeerPayload p1 = gpu.opt->compress(step, lr);
      Merger merger(cpu.opt->manifest(), 9, step);
      merger.add(p0);
      merger.add(p1);
      const MergedUpdate u = merger.finish(lr, 0.1f, prev);
      REQUIRE(!u.index.empty());
      cpu.opt->apply(u);
      gpu.opt->apply(u);
      const uint64_t hc = cpu.opt->param_hash(), hg = gpu.opt->param_hash();
      CHECK(hc == hg);
      CHECK(hc != prev);
      REQUIRE(cpu.params == gpu.params);
      for (size_t t = 0; t < specs.size(); ++t) REQUIRE(bits_equal(cpu.params[t], gpu.params[t]));
      prev = hc;
    }
  }
}

TEST_CASE("cuda optimizer: a non-finite gradient is refused and the momentum is unchanged",
          "[cuda][optimizer]") {
  const std::vector<TensorSpec> specs = {{"w", {128, 128}}, {"v", {100}}};
  Peer gpu(specs, "cuda:0", 0, ValueMode::sign, 3);
  std::mt19937_64 rng(11);
  auto refill = [&] {
    for (size_t t = 0; t < specs.size(); ++t) {
      const auto g = random_normal(gpu.grads[t].size(), 1.0f, rng);
      std::copy(g.begin(), g.end(), gpu.grads[t].begin());
    }
  };
  refill();
  (void)gpu.opt->compress(1, 1e-3f);  // a momentum worth protecting
  const auto m0 = gpu.opt->momentum(0), m1 = gpu.opt->momentum(1);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    refill();
    gpu.grads[1][57] = bad;
    try {
      (void)gpu.opt->compress(2, 1e-3f);
      FAIL("a non-finite gradient was accepted");
    } catch (const Error& e) {
      CHECK(e.code() == Code::numeric);
      CHECK(std::string(e.what()).find("element 57") != std::string::npos);
    }
    CHECK(bits_equal(gpu.opt->momentum(0), m0));
    CHECK(bits_equal(gpu.opt->momentum(1), m1));
  }
}

// The compress of 64x64 chunks runs its transforms on tensor cores, keeping the momentum in
// registers, wherever the device and the build allow (the compress test above checks that kernel's
// results); the switches select the other variants.
TEST_CASE("cuda optimizer: 64x64 compress plans the tensor-core kernel on sm_80 and newer",
          "[cuda][optimizer][compress]") {
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  int major = 0, sms = 0;
  REQUIRE(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess);
  REQUIRE(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) == cudaSuccess);
  void* buf = nullptr;
  REQUIRE(cudaMalloc(&buf, 64 * 64 * 4 * 2) == cudaSuccess);
  cuda::CompressLaunch L;
  L.n1 = L.n2 = 64;
  L.k = 4;
  L.chunks = 1;
  L.runs = 1;
  L.run[0].grad = static_cast<const float*>(buf);
  L.run[0].delta = static_cast<float*>(buf) + 64 * 64;
  auto plan = [&]() {
    cuda::CompressPlan out;
    REQUIRE(cuda::plan_compress(L, unsigned(sms), &out) == cudaSuccess);
    return out;
  };
  unsetenv("DISTRO_CUDA_DCT_MMA");
  unsetenv("DISTRO_CUDA_DCT_KEEPX");
  const cuda::CompressPlan dflt = plan();
  CHECK(dflt.kernel == (major >= 8 ? 6 : 3));
  CHECK(dflt.grid == 1);
  setenv("DISTRO_CUDA_DCT_KEEPX", "0", 1);
  CHECK(plan().kernel == (major >= 8 ? 5 : 3));
  setenv("DISTRO_CUDA_DCT_MMA", "0", 1);
  CHECK(plan().kernel == 3);
  setenv("DISTRO_CUDA_DCT_KEEPX", "1", 1);
  CHECK(plan().kernel == 4);
  unsetenv("DISTRO_CUDA_DCT_MMA");
  unsetenv("DISTRO_CUDA_DCT_KEEPX");
  L.n2 = 32;  // not 64x64: the generic kernel
  CHECK(plan().kernel == 2);
  REQUIRE(cudaFree(buf) == cudaSuccess);
}

#endif  // !DISTRO_EMU

#endif  // DISTRO_HAVE_CUDA || DISTRO_EMU

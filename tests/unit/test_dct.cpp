// Orthonormal DCT bases, the block transforms, and the integer basis of the exact inverse.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "optim/chunk_math.hpp"
#include "optim/dct.hpp"
#include "optim/hash_mix.hpp"

using namespace distro;

TEST_CASE("the 4x4 orthonormal DCT-II basis matches the golden vector", "[dct]") {
  // distro-algorithm.md 1.3: row i = sample i, column = frequency.
  const double want[4][4] = {{.5, .6533, .5, .2706},
                             {.5, .2706, -.5, -.6533},
                             {.5, -.2706, -.5, .6533},
                             {.5, -.6533, .5, -.2706}};
  DctBasis b = make_dct_basis(4);
  for (int i = 0; i < 4; ++i)
    for (int f = 0; f < 4; ++f) CHECK(b.f64[i * 4 + f] == Approx(want[i][f]).margin(1e-4));
}

TEST_CASE("every basis is orthonormal", "[dct]") {
  for (uint32_t n : {1u, 2u, 3u, 7u, 29u, 64u, 100u}) {
    DctBasis b = make_dct_basis(n);
    for (uint32_t a = 0; a < n; ++a)
      for (uint32_t c = 0; c < n; ++c) {
        double dot = 0;
        for (uint32_t i = 0; i < n; ++i) dot += b.f64[i * n + a] * b.f64[i * n + c];
        REQUIRE(dot == Approx(a == c ? 1.0 : 0.0).margin(1e-12));
      }
  }
}

template <class T>
static void dct_round_trip(double tol) {
  std::mt19937_64 rng(42);
  std::normal_distribution<double> nd;
  for (auto shape : std::vector<std::vector<int64_t>>{{128, 192}, {100}, {2, 64, 7}, {29 * 3, 64}}) {
    Manifest m = make_manifest({{"t", shape}}, 64, 4, ValueMode::sign);
    const TensorPlan& p = m.tensors[0];
    DctTables tables(m);
    std::vector<T> x(p.numel), y(p.numel), back(p.numel);
    for (auto& v : x) v = T(nd(rng));
    block_dct_forward(p, tables, x.data(), y.data());
    block_dct_inverse(p, tables, y.data(), back.data());
    double worst = 0;
    for (uint64_t i = 0; i < p.numel; ++i) worst = std::max(worst, std::fabs(double(back[i]) - double(x[i])));
    INFO("shape rank " << shape.size() << " worst " << worst);
    CHECK(worst <= tol);
  }
}

TEST_CASE("DCT then inverse returns the input within 1e-6", "[dct]") {
  dct_round_trip<double>(1e-6);
  // float32 storage: values of magnitude ~4 lose their last bits to the two roundings.
  dct_round_trip<float>(2e-6);
}

TEST_CASE("a chunk's coefficient index is row frequency * n2 + column frequency", "[dct]") {
  Manifest m = make_manifest({{"t", {4, 8}}}, 64, 1, ValueMode::sign);
  const TensorPlan& p = m.tensors[0];
  DctTables tables(m);
  // A pure basis image of frequencies (f1, f2) = (2, 5) transforms to a single coefficient.
  std::vector<double> x(32), y(32);
  const auto &b1 = tables.get(4), &b2 = tables.get(8);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 8; ++j) x[i * 8 + j] = b1.f64[i * 4 + 2] * b2.f64[j * 8 + 5];
  block_dct_forward(p, tables, x.data(), y.data());
  for (int c = 0; c < 32; ++c) CHECK(y[c] == Approx(c == 2 * 8 + 5 ? 1.0 : 0.0).margin(1e-12));
}

TEST_CASE("integer bases are far from rounding ties and pinned by hash", "[dct]") {
  // Every round(B * 2^14) must be at least 1e-9 away from a tie, so any libm within ~1000 ulp of the
  // true cosine produces the same integers on every platform.
  double closest = 1.0;
  uint64_t h = 0;
  for (uint32_t n = 1; n <= kMaxChunk; ++n) {
    DctBasis b = make_dct_basis(n);
    uint64_t th = 0;
    for (size_t e = 0; e < b.i14.size(); ++e) {
      double scaled = std::ldexp(b.f64[e], kIntBasisBits);
      double frac = scaled - std::floor(scaled);
      closest = std::min(closest, std::fabs(frac - 0.5));
      REQUIRE(b.i14[e] == std::llround(scaled));
      th += hash_term(uint32_t(b.i14[e]), e, n);
    }
    h = fold_hash(h, th);
  }
  INFO("closest distance to a rounding tie: " << closest);
  CHECK(closest > 1e-9);
  // Pinned: a change of generator, rounding or platform that alters any entry fails here.
  CHECK(h == 0x470b8713debecca4ull);
}

TEST_CASE("the integer inverse DCT's sign agrees with float64 wherever float64 is clear of zero", "[dct]") {
  std::mt19937_64 rng(7);
  for (auto [n1, n2] : std::vector<std::pair<uint32_t, uint32_t>>{{64, 64}, {1, 64}, {29, 64}, {7, 3}}) {
    DctBasis b1 = make_dct_basis(n1), b2 = make_dct_basis(n2);
    uint32_t e = n1 * n2;
    std::vector<int64_t> scratch(e + n2);
    std::vector<int8_t> sign(e);
    for (int trial = 0; trial < 50; ++trial) {
      // A random sparse merged chunk: up to 64 coefficients with values of either value mode.
      uint32_t u = 1 + uint32_t(rng() % std::min<uint32_t>(64, e));
      std::vector<uint16_t> idx;
      for (uint32_t i = 0; i < e && idx.size() < u; ++i)
        if (rng() % e < u * 2) idx.push_back(uint16_t(i));
      if (idx.empty()) idx.push_back(uint16_t(rng() % e));
      std::vector<int32_t> val(idx.size());
      for (auto& v : val) {
        int32_t mag = 1 + int32_t(rng() % (trial % 2 ? 32512 : 256));
        v = rng() % 2 ? mag : -mag;
      }
      merged_signs(b1, b2, idx.data(), val.data(), uint32_t(idx.size()), sign.data(), scratch.data());
      uint32_t checked = 0;
      for (uint32_t i = 0; i < n1; ++i)
        for (uint32_t j = 0; j < n2; ++j) {
          // T = 2^14 B + e with |e| <= 1/2, so U_int / 2^28 differs from the float64 U by at most
          // sum |A| ((|B1| + |B2|) 2^-15 + 2^-30).
          double u64 = 0, bound = 0;
          for (size_t s = 0; s < idx.size(); ++s) {
            double x1 = b1.f64[i * n1 + idx[s] / n2], x2 = b2.f64[j * n2 + idx[s] % n2];
            u64 += val[s] * x1 * x2;
            bound += std::abs(val[s]) * ((std::fabs(x1) + std::fabs(x2)) * std::ldexp(1.0, -15) + std::ldexp(1.0, -30));
          }
          bound *= 1.000001;  // float64 rounding of the reference itself
          if (std::fabs(u64) <= bound) continue;
          ++checked;
          REQUIRE(int(sign[i * n2 + j]) == (u64 > 0 ? 1 : -1));
        }
      INFO("n1=" << n1 << " n2=" << n2 << " trial=" << trial << " u=" << idx.size());
      CHECK(checked > 0);
    }
  }
}

TEST_CASE("fixed-point mean rounds halves away from zero", "[merge]") {
  CHECK(fixed_point_mean(1, 1) == 256);
  CHECK(fixed_point_mean(-1, 1) == -256);
  CHECK(fixed_point_mean(1, 3) == 85);     // 85.33
  CHECK(fixed_point_mean(2, 3) == 171);    // 170.67
  CHECK(fixed_point_mean(-2, 3) == -171);
  CHECK(fixed_point_mean(1, 512) == 1);    // 0.5 -> 1
  CHECK(fixed_point_mean(-1, 512) == -1);  // -0.5 -> -1
  CHECK(fixed_point_mean(3, 1024) == 1);   // 0.75
  CHECK(fixed_point_mean(1, 1024) == 0);   // 0.25
  CHECK(fixed_point_mean(127 * 5, 5) == 32512);
  CHECK(fixed_point_mean(0, 7) == 0);
}

TEST_CASE("the apply is two float32 operations with subnormals flushed", "[apply]") {
  const float lr = 0.01f, f = 0.999f;
  volatile float theta = 1.2345f;  // volatile: keep the compiler from folding the reference
  float prod = theta * f;
  CHECK(apply_element(theta, f, lr, 1) == prod - lr);
  CHECK(apply_element(theta, f, lr, -1) == prod + lr);
  CHECK(apply_element(theta, f, lr, 0) == prod);
  // Subnormal input or result becomes a zero of the same sign.
  float sub = std::ldexp(1.0f, -140);
  CHECK(std::fpclassify(sub) == FP_SUBNORMAL);
  CHECK(apply_element(sub, 1.0f, 0.0f, 0) == 0.0f);
  CHECK(std::signbit(apply_element(-sub, 1.0f, 0.0f, 0)));
  float tiny = std::ldexp(1.0f, -126);  // smallest normal; times 0.5 is subnormal
  CHECK(apply_element(tiny, 0.5f, 0.0f, 0) == 0.0f);
  CHECK(apply_element(2e-38f, 1.0f, 1.5e-38f, 1) == 0.0f);  // 5e-39 is subnormal
}

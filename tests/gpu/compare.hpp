// Helpers the GPU tests share to compare a device's results with the CPU device's: the first GPU,
// fresh random inputs (the seed printed on failure by the caller), and tolerance checks that name
// the first few elements out of bounds.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/registry.hpp"

namespace distro::test {

inline std::unique_ptr<Device> open_gpu() {
  auto devs = scan_cuda_devices();
  REQUIRE(!devs.empty());
  return std::move(devs[0]);
}

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  std::vector<float> normal(size_t n, float sigma = 1.0f) {
    std::normal_distribution<float> d(0.0f, sigma);
    std::vector<float> v(n);
    for (auto& x : v) x = d(g);
    return v;
  }
  std::vector<int32_t> ints(size_t n, int32_t lo, int32_t hi) {  // [lo, hi]
    std::uniform_int_distribution<int32_t> d(lo, hi);
    std::vector<int32_t> v(n);
    for (auto& x : v) x = d(g);
    return v;
  }
};

inline uint64_t fresh_seed() { return (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}(); }

inline double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}

// Element-wise comparison: |got - ref| <= rtol |ref| + atol everywhere, got finite wherever ref is.
// Returns the number of violations; prints the first few.
inline size_t count_bad(const std::vector<float>& got, const std::vector<float>& ref, double rtol, double atol,
                        const std::string& what) {
  REQUIRE(got.size() == ref.size());
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], r = ref[i];
    const bool ok = std::isfinite(r) ? std::isfinite(g) && std::fabs(g - r) <= rtol * std::fabs(r) + atol
                                     : std::isnan(r) == std::isnan(g);
    if (!ok && ++bad <= 3)
      UNSCOPED_INFO(what << "[" << i << "]: gpu " << g << " cpu " << r << " (tolerance " << rtol * std::fabs(r) + atol
                         << ")");
  }
  return bad;
}

// ||got - ref|| / ||ref|| (the plain norm of the difference when ref is all zeros).
inline double rel_l2(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = double(got[i]) - double(ref[i]);
    num += d * d, den += double(ref[i]) * double(ref[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

inline bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Attention in bf16 with float32 accumulation against the CPU's: lse within 2e-2 (absolute, relative
// for large values: scores of order 1 from bf16 inputs), out within 1e-2 relative L2 and 3e-2 of its
// largest magnitude per element, everything finite.
inline void check_attention_forward(const std::vector<float>& got_out, const std::vector<float>& got_lse,
                                    const std::vector<float>& out, const std::vector<float>& lse) {
  CHECK(count_bad(got_lse, lse, 2e-2, 2e-2, "lse") == 0);
  CHECK(all_finite(got_out));
  CHECK(rel_l2(got_out, out) < 1e-2);
  CHECK(count_bad(got_out, out, 0.0, 3e-2 * max_abs(out), "out") == 0);
}

// A gradient of that attention: within 2e-2 relative L2 and 5e-2 of its largest magnitude.
inline void check_attention_grad(const char* name, const std::vector<float>& got, const std::vector<float>& ref) {
  INFO(name);
  CHECK(all_finite(got));
  const double e = rel_l2(got, ref);
  UNSCOPED_INFO(name << " relative L2 error " << e);
  CHECK(e < 2e-2);
  CHECK(count_bad(got, ref, 0.0, 5e-2 * max_abs(ref), name) == 0);
}

}  // namespace distro::test

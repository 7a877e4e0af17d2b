// Per-chunk top-k selection: largest magnitudes, ties to the lowest index, zeros never selected.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "optim/chunk_math.hpp"

using namespace distro;

static std::vector<uint16_t> brute_force(const std::vector<float>& y, uint32_t k) {
  std::vector<uint16_t> order(y.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint16_t a, uint16_t b) { return std::fabs(y[a]) > std::fabs(y[b]); });
  std::vector<uint16_t> out;
  for (uint16_t i : order)
    if (out.size() < k && std::fabs(y[i]) > 0) out.push_back(i);
  std::sort(out.begin(), out.end());
  return out;
}

TEST_CASE("top-k matches a brute-force sort on random data, ties included", "[topk]") {
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd;
  for (uint32_t e : {1u, 7u, 64u, 1856u, 4096u}) {
    for (uint32_t k : {1u, 4u, 8u, 32u, 64u, 65u, 200u, 4096u}) {
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<float> y(e);
        for (auto& v : y) v = nd(rng);
        if (trial % 3 == 1)  // coarse values: many exact ties in magnitude, both signs
          for (auto& v : y) v = std::round(v * 2.0f) / 2.0f;
        if (trial % 3 == 2)  // sparse: fewer non-zeros than k
          for (auto& v : y) v = (rng() % 16 == 0) ? v : 0.0f;
        std::vector<uint16_t> got(std::min(k, e));
        uint32_t n = select_topk(y.data(), e, std::min(k, e), got.data());
        got.resize(n);
        INFO("e=" << e << " k=" << k << " trial=" << trial);
        REQUIRE(got == brute_force(y, std::min(k, e)));
      }
    }
  }
}

TEST_CASE("an all-zero chunk selects nothing", "[topk]") {
  std::vector<float> y(4096, 0.0f);
  uint16_t idx[4];
  CHECK(select_topk(y.data(), 4096, 4, idx) == 0);
  y[4095] = -0.0f;
  CHECK(select_topk(y.data(), 4096, 4, idx) == 0);
}

TEST_CASE("sign and int8 quantisation", "[topk]") {
  const float ys[] = {0.5f, -2.0f, 1e-30f, -1e-30f, 1.0f};
  int8_t q[5];
  quantize_values(ys, 5, ValueMode::sign, q);
  CHECK(std::vector<int>(q, q + 5) == std::vector<int>{1, -1, 1, -1, 1});
  quantize_values(ys, 5, ValueMode::int8, q);
  // 127 * y / 2: 31.75 -> 32, -127, ~0 -> 0, 63.5 -> 64 (halves away from zero)
  CHECK(std::vector<int>(q, q + 5) == std::vector<int>{32, -127, 0, 0, 64});
}

// The chunk plan (distro-algorithm.md section 1.2) and the manifest's checks.
#include <catch2/catch.hpp>

#include "core/error.hpp"
#include "optim/manifest.hpp"

using namespace distro;

TEST_CASE("chunk edge follows the largest-divisor rule (Psyche's test values)", "[manifest]") {
  struct Row {
    uint64_t n, s, want;
  };
  const Row rows[] = {{12, 3, 3},   {12, 4, 4},     {12, 5, 4}, {100, 7, 5}, {100, 26, 25},
                      {100, 101, 100}, {1, 1, 1},   {0, 1, 0},  {1000000007, 500000000, 1},
                      {50257, 64, 29}, {4096, 64, 64}, {768, 64, 64}, {2304, 64, 64}, {3072, 64, 64}};
  for (const auto& r : rows) {
    INFO("n=" << r.n << " s=" << r.s);
    CHECK(chunk_edge(r.n, r.s) == r.want);
  }
}

TEST_CASE("plans matrices, vectors and batched tensors", "[manifest]") {
  Manifest m = make_manifest({{"w", {128, 192}}, {"b", {100}}, {"conv", {3, 64, 7}}, {"emb", {50257, 768}}}, 64, 4,
                             ValueMode::sign);
  REQUIRE(m.tensors.size() == 4);
  const auto& w = m.tensors[0];
  CHECK(w.n1 == 64);
  CHECK(w.n2 == 64);
  CHECK(w.chunks == 2 * 3);
  CHECK(w.k == 4);
  const auto& b = m.tensors[1];  // rank 1: one row, chunk 50 (largest divisor of 100 <= 64)
  CHECK(b.n1 == 1);
  CHECK(b.n2 == 50);
  CHECK(b.chunks == 2);
  const auto& c = m.tensors[2];  // rank 3: batch 3 over [64, 7]; 7 is prime and <= 64 -> 7
  CHECK(c.batch == 3);
  CHECK(c.n1 == 64);
  CHECK(c.n2 == 7);
  CHECK(c.chunks == 3);
  const auto& e = m.tensors[3];  // GPT-2 vocabulary 50257 = 29 * 1733 -> 29
  CHECK(e.n1 == 29);
  CHECK(e.n2 == 64);
  CHECK(m.total_params == 128 * 192 + 100 + 3 * 64 * 7 + 50257ull * 768);
  CHECK(m.total_chunks == 6 + 2 + 3 + (50257 / 29) * (768 / 64));
  CHECK(b.chunk_base == 6);
  CHECK(c.slot_base == 6 * 4 + 2 * 4);
}

TEST_CASE("top-k is clamped to the chunk size", "[manifest]") {
  Manifest m = make_manifest({{"tiny", {3}}, {"big", {64, 64}}}, 64, 32, ValueMode::int8);
  CHECK(m.tensors[0].k == 3);
  CHECK(m.tensors[1].k == 32);
}

TEST_CASE("manifest hash binds names, shapes and options", "[manifest]") {
  auto h = [](std::vector<TensorSpec> s, uint32_t chunk = 64, uint32_t k = 4, ValueMode v = ValueMode::sign) {
    return make_manifest(s, chunk, k, v).hash;
  };
  uint64_t base = h({{"a", {64, 64}}, {"b", {64}}});
  CHECK(base == h({{"a", {64, 64}}, {"b", {64}}}));
  CHECK(base != h({{"a", {64, 64}}, {"c", {64}}}));
  CHECK(base != h({{"b", {64}}, {"a", {64, 64}}}));
  CHECK(base != h({{"a", {64, 64}}, {"b", {32}}}));
  CHECK(base != h({{"a", {64, 64}}, {"b", {64}}}, 32));
  CHECK(base != h({{"a", {64, 64}}, {"b", {64}}}, 64, 8));
  CHECK(base != h({{"a", {64, 64}}, {"b", {64}}}, 64, 4, ValueMode::int8));
}

static void expect_error(const std::vector<TensorSpec>& specs, uint32_t chunk, uint32_t k, Code code,
                         const std::string& words) {
  try {
    make_manifest(specs, chunk, k, ValueMode::sign);
    FAIL("expected an error containing '" << words << "'");
  } catch (const Error& e) {
    CHECK(e.code() == code);
    CHECK_THAT(e.what(), Catch::Contains(words));
  }
}

TEST_CASE("bad tensor lists and options are refused with clear errors", "[manifest]") {
  expect_error({{"a", {4}}}, 0, 4, Code::invalid_argument, "chunk edge 0");
  expect_error({{"a", {4}}}, 257, 4, Code::invalid_argument, "expected 1..256");
  expect_error({{"a", {4}}}, 64, 0, Code::invalid_argument, "top-k is 0");
  expect_error({}, 64, 4, Code::state, "no tensors");
  expect_error({{"", {4}}}, 64, 4, Code::invalid_argument, "name is empty");
  expect_error({{std::string(300, 'x'), {4}}}, 64, 4, Code::invalid_argument, "expected at most 255");
  expect_error({{"a", {4}}, {"a", {8}}}, 64, 4, Code::invalid_argument, "registered twice");
  expect_error({{"a", {}}}, 64, 4, Code::size, "rank 0");
  expect_error({{"a", {1, 1, 1, 1, 1, 1, 1, 1, 1}}}, 64, 4, Code::size, "rank 9");
  expect_error({{"a", {4, 0}}}, 64, 4, Code::size, "dimension 1 = 0");
  expect_error({{"a", {4, -3}}}, 64, 4, Code::size, "dimension 1 = -3");
  expect_error({{"a", {1 << 21, 1 << 21}}}, 64, 4, Code::size, "more than 2^40");
}

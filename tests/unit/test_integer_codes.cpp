// The bit layer and the integer codes of wire format v2 (docs/protocol.md, "Integer codes").
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/error.hpp"
#include "wire/bits.hpp"
#include "wire/integer_codes.hpp"

using namespace distro;
using namespace distro::wire;

namespace {

// k distinct values of [0, n), ascending (Floyd's sampling; a mark array keeps it O(n) at worst).
std::vector<uint16_t> random_subset(std::mt19937_64& rng, uint32_t n, uint32_t k) {
  std::vector<char> taken(n, 0);
  std::vector<uint16_t> out;
  out.reserve(k);
  for (uint32_t j = n - k; j < n; ++j) {
    uint32_t t = std::uniform_int_distribution<uint32_t>(0, j)(rng);
    uint32_t pick = taken[t] ? j : t;
    taken[pick] = 1;
    out.push_back(uint16_t(pick));
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("bit writer and reader round-trip mixed fields LSB-first", "[wire]") {
  std::mt19937_64 rng(1);
  std::vector<std::pair<uint64_t, unsigned>> fields;
  std::vector<uint8_t> buf = {0xAA};  // a byte already there (the header), left alone
  BitWriter w(buf);
  for (int i = 0; i < 5000; ++i) {
    unsigned bits = unsigned(rng() % 65);
    uint64_t v = bits == 64 ? rng() : rng() & ((uint64_t(1) << bits) - 1);
    fields.emplace_back(v, bits);
    w.put_wide(v, bits);
  }
  uint64_t total = w.bits_written(1);
  w.finish();
  REQUIRE(buf[0] == 0xAA);
  REQUIRE(buf.size() == 1 + (total + 7) / 8);
  BitReader r(buf.data() + 1, buf.size() - 1);
  for (auto [v, bits] : fields) REQUIRE(r.get_wide(bits) == v);
  REQUIRE(r.position() == total);
  REQUIRE(r.get(unsigned(r.remaining())) == 0);  // padding is zero

  // LSB-first: the first field's low bit is bit 0 of the first byte.
  std::vector<uint8_t> b2;
  BitWriter w2(b2);
  w2.put(1, 1);
  w2.put(0b10, 2);
  w2.put(0x1F, 5);
  w2.put(0x3, 3);
  w2.finish();
  REQUIRE(b2 == std::vector<uint8_t>{0b11111101, 0b011});
}

TEST_CASE("bit writer align pads to a byte boundary, where each piece of a body starts", "[wire]") {
  std::vector<uint8_t> b;
  BitWriter w(b);
  w.align();  // on a boundary: nothing
  REQUIRE(w.bits_written(0) == 0);
  w.put(0b101, 3);
  w.align();
  REQUIRE(w.bits_written(0) == 8);
  w.align();
  REQUIRE(w.bits_written(0) == 8);
  w.put(0x3FFFFF, 22);  // 30 bits: aligning reaches 32 pending bits, which must be flushed
  w.align();
  REQUIRE(w.bits_written(0) == 32);
  w.put(0xFFFFFFFF, 32);  // a full-width field right after: no overflow of the pending bits
  w.put(1, 1);
  w.finish();
  REQUIRE(b == std::vector<uint8_t>{0x05, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0xFF, 0xFF, 0x01});
}

TEST_CASE("bit reader reports truncation instead of reading past the end", "[wire]") {
  std::vector<uint8_t> b = {0xFF, 0x01};
  BitReader r(b.data(), b.size());
  REQUIRE(r.get(9) == 0x1FF);
  REQUIRE_THROWS_WITH(r.get(8), Catch::Contains("truncated"));
  REQUIRE(r.position() == 9);
  REQUIRE(r.get(7) == 0);
  REQUIRE_THROWS_AS(r.skip(1), Error);
}

TEST_CASE("exp-Golomb round trip, sizes and limits", "[wire]") {
  std::vector<uint64_t> vals;
  for (uint64_t v = 0; v < 2000; ++v) vals.push_back(v);
  for (unsigned b = 1; b < 63; ++b) {
    uint64_t p = uint64_t(1) << b;
    vals.insert(vals.end(), {p - 2, p - 1, p, p + 1});
  }
  vals.push_back((uint64_t(1) << 63) - 2);  // the largest value a 62-zero prefix can carry
  std::vector<uint8_t> buf;
  BitWriter w(buf);
  uint64_t expect_bits = 0;
  for (uint64_t v : vals) {
    put_exp_golomb(w, v);
    expect_bits += exp_golomb_bits(v);
    REQUIRE(w.bits_written(0) == expect_bits);
  }
  w.finish();
  BitReader r(buf.data(), buf.size());
  for (uint64_t v : vals) REQUIRE(get_exp_golomb(r) == v);
  REQUIRE(r.remaining() < 8);

  // The exact bits: v = 4 -> x = 5 = 0b101, z = 2: "0 0 1" then the low bits 01 as a 2-bit field.
  std::vector<uint8_t> b5;
  BitWriter w5(b5);
  put_exp_golomb(w5, 4);
  w5.finish();
  REQUIRE(b5 == std::vector<uint8_t>{0b00001100});
  REQUIRE(exp_golomb_bits(0) == 1);
  REQUIRE(exp_golomb_bits(4) == 5);

  SECTION("a prefix longer than the limit is rejected, not looped over") {
    std::vector<uint8_t> zeros(16, 0);
    zeros.back() = 0x80;
    BitReader rz(zeros.data(), zeros.size());
    REQUIRE_THROWS_WITH(get_exp_golomb(rz), Catch::Contains("leading zero bits"));
  }
  SECTION("a stream ending inside the code is truncated") {
    std::vector<uint8_t> b = {0x00, 0x00};
    BitReader rb(b.data(), b.size());
    REQUIRE_THROWS_WITH(get_exp_golomb(rb), Catch::Contains("truncated"));
    std::vector<uint8_t> c = {0b00010000};  // z = 4, the 1, then only 3 of 4 suffix bits
    BitReader rc(c.data(), c.size());
    REQUIRE_THROWS_WITH(get_exp_golomb(rc), Catch::Contains("truncated"));
  }
}

TEST_CASE("truncated binary round trip over every value of small ranges and random large ones", "[wire]") {
  std::mt19937_64 rng(2);
  std::vector<std::pair<uint32_t, uint32_t>> cases;  // (v, n)
  for (uint32_t n = 1; n <= 300; ++n)
    for (uint32_t v = 0; v < n; ++v) cases.emplace_back(v, n);
  for (int i = 0; i < 20000; ++i) {
    uint32_t n = uint32_t(rng() >> (32 + rng() % 32));
    if (n == 0) n = 1;
    cases.emplace_back(uint32_t(rng() % n), n);
  }
  cases.emplace_back(0xFFFFFFFEu, 0xFFFFFFFFu);
  cases.emplace_back(0, 0xFFFFFFFFu);
  std::vector<uint8_t> buf;
  BitWriter w(buf);
  uint64_t expect_bits = 0;
  for (auto [v, n] : cases) {
    put_truncated(w, v, n);
    expect_bits += truncated_bits(v, n);
  }
  REQUIRE(w.bits_written(0) == expect_bits);
  w.finish();
  BitReader r(buf.data(), buf.size());
  for (auto [v, n] : cases) REQUIRE(get_truncated(r, n) == v);

  // Sizes: n = 5 -> b = 2, u = 3: values 0..2 take 2 bits, 3..4 take 3 bits; a power of two is flat.
  REQUIRE(truncated_bits(2, 5) == 2);
  REQUIRE(truncated_bits(3, 5) == 3);
  REQUIRE(truncated_bits(0, 1) == 0);
  REQUIRE(truncated_bits(4095, 4096) == 12);

  // Whatever the bits, the decoder answers inside [0, n).
  std::vector<uint8_t> noise(4096);
  for (auto& b : noise) b = uint8_t(rng());
  BitReader rn(noise.data(), noise.size());
  for (int i = 0; i < 1000; ++i) {
    uint32_t n = 1 + uint32_t(rng() % 5000);
    REQUIRE(get_truncated(rn, n) < n);
  }
}

TEST_CASE("binary interpolative coding round-trips random subsets", "[wire]") {
  std::mt19937_64 rng(3);
  struct Case { uint32_t universe, k; };
  std::vector<Case> cases = {{1, 0},    {1, 1},     {2, 0},    {2, 1},     {2, 2},    {3, 2},     {64, 1},
                             {64, 4},   {64, 32},   {64, 63},  {64, 64},   {4096, 1}, {4096, 4},  {4096, 8},
                             {4096, 32}, {4096, 700}, {4096, 4095}, {4096, 4096}, {65536, 1}, {65536, 4},
                             {65536, 1000}, {65536, 65535}, {65536, 65536}};
  for (Case cs : cases) {
    DYNAMIC_SECTION("k=" << cs.k << " of " << cs.universe) {
      int trials = cs.universe >= 65536 && cs.k > 1000 ? 3 : 40;
      std::vector<std::vector<uint16_t>> sets;
      std::vector<uint8_t> buf = {0x5A};
      BitWriter w(buf);
      w.put(1, 3);  // start off a byte boundary
      for (int t = 0; t < trials; ++t) {
        sets.push_back(random_subset(rng, cs.universe, cs.k));
        put_interpolative(w, sets.back().data(), cs.k, cs.universe);
      }
      w.put(0x2B, 7);  // something after, to catch over- or under-reads
      uint64_t total = w.bits_written(1);
      w.finish();
      BitReader r(buf.data() + 1, buf.size() - 1);
      REQUIRE(r.get(3) == 1);
      std::vector<uint16_t> got(cs.k + 1, 0xEEEE);
      for (const auto& s : sets) {
        get_interpolative(r, got.data(), cs.k, cs.universe);
        REQUIRE(std::equal(s.begin(), s.end(), got.begin()));
        REQUIRE(got[cs.k] == 0xEEEE);  // nothing written past k
      }
      REQUIRE(r.get(7) == 0x2B);
      REQUIRE(r.position() == total);
      if (cs.k == cs.universe) REQUIRE(total == 10);  // a full set costs nothing
    }
  }
}

// docs/protocol.md's binary interpolative coding, as plain recursion over put_truncated: the middle
// x[k/2] over its feasible range, then the left half, then the right half; nothing when the range
// holds exactly k values.
static void reference_bic(BitWriter& w, const uint16_t* x, uint32_t k, uint32_t lo, uint32_t hi) {
  if (k == 0 || hi - lo + 1 == k) return;
  const uint32_t m = k / 2, min = lo + m, max = hi - (k - 1 - m);
  put_truncated(w, x[m] - min, max - min + 1);
  reference_bic(w, x, m, lo, x[m] - 1);
  reference_bic(w, x + m + 1, k - 1 - m, x[m] + 1, hi);
}

TEST_CASE("interpolative coding writes the specification's bits for every set size", "[wire]") {
  // Sizes 1 to 4 have unrolled coders of their own; 5 and more take the general loop. Both must
  // write what the recursive definition writes, and read it back, in dense and sparse universes.
  std::mt19937_64 rng(6);
  for (uint32_t universe : {1u, 2u, 3u, 4u, 5u, 7u, 64u, 4096u, 65536u})
    for (uint32_t k = 1; k <= std::min(universe, 9u); ++k) {
      INFO("k=" << k << " of " << universe);
      std::vector<uint8_t> ours, ref;
      BitWriter wo(ours), wr(ref);
      std::vector<std::vector<uint16_t>> sets;
      for (int t = 0; t < 50; ++t) {
        sets.push_back(random_subset(rng, universe, k));
        put_interpolative(wo, sets.back().data(), k, universe);
        reference_bic(wr, sets.back().data(), k, 0, universe - 1);
      }
      REQUIRE(wo.bits_written(0) == wr.bits_written(0));
      wo.finish();
      wr.finish();
      REQUIRE(ours == ref);
      BitReader r(ref.data(), ref.size());
      std::vector<uint16_t> got(k);
      for (const auto& s : sets) {
        get_interpolative(r, got.data(), k, universe);
        REQUIRE(got == s);
      }
    }
}

TEST_CASE("interpolative decoding of noise yields ascending in-range sets", "[wire]") {
  std::mt19937_64 rng(4);
  std::vector<uint8_t> noise(1 << 16);
  for (auto& b : noise) b = uint8_t(rng());
  BitReader r(noise.data(), noise.size());
  std::vector<uint16_t> x(4096);
  for (int i = 0; i < 2000; ++i) {
    uint32_t universe = 1 + uint32_t(rng() % 4096);
    uint32_t k = uint32_t(rng() % (std::min<uint32_t>(universe, 40) + 1));
    get_interpolative(r, x.data(), k, universe);
    for (uint32_t j = 0; j < k; ++j) {
      REQUIRE(x[j] < universe);
      if (j > 0) REQUIRE(x[j] > x[j - 1]);
    }
  }
}

TEST_CASE("interpolative coding of k=4 of 4096 costs under 45 bits on average", "[wire]") {
  std::mt19937_64 rng(5);
  const int trials = 20000;
  std::vector<uint8_t> buf;
  BitWriter w(buf);
  for (int t = 0; t < trials; ++t) {
    auto s = random_subset(rng, 4096, 4);
    put_interpolative(w, s.data(), 4, 4096);
  }
  double avg = double(w.bits_written(0)) / trials;
  INFO("average bits per chunk: " << avg << " (entropy log2 C(4096,4) = 43.42)");
  REQUIRE(avg < 45.0);
  REQUIRE(avg > 43.4);  // cannot beat the entropy of a uniform 4-subset
}

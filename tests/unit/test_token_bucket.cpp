// The transport's rate cap (net/token_bucket.hpp), on a synthetic clock: exact long-run rate, the
// burst, live rate changes, and "0 = unlimited".
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <thread>
#include <vector>

#include "net/token_bucket.hpp"

using distro::net::TokenBucket;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// A sender that moves `total` bytes in `chunk`-byte steps, waiting as told; returns the seconds it took.
double paced_seconds(TokenBucket& b, Clock::time_point& t, size_t total, size_t chunk) {
  const auto start = t;
  for (size_t sent = 0; sent < total; sent += chunk) t += b.take(std::min(chunk, total - sent), t);
  return std::chrono::duration<double>(t - start).count();
}

}  // namespace

TEST_CASE("token bucket: rate 0 never waits", "[net][token_bucket]") {
  TokenBucket b;
  CHECK(b.rate() == 0);
  const auto t = Clock::now();
  for (int i = 0; i < 100; ++i) CHECK(b.take(1 << 20, t).count() == 0);
  // Negative or non-finite rates are treated as unlimited too, never as a division by zero.
  b.set_rate(-5);
  CHECK(b.rate() == 0);
  b.set_rate(std::nan(""));
  CHECK(b.rate() == 0);
  CHECK(b.take(1 << 20, t).count() == 0);
}

TEST_CASE("token bucket: burst is free, then bytes cost 1/rate each", "[net][token_bucket]") {
  TokenBucket b(1000.0, 100.0);  // 1000 B/s, 100 B burst
  CHECK(b.rate() == 1000.0);
  CHECK(b.burst() == 100.0);
  auto t = Clock::now() + 1s;  // after the bucket was filled at construction
  CHECK(b.take(100, t).count() == 0);                  // the full burst
  CHECK(b.take(100, t) == std::chrono::nanoseconds(100ms));  // 100 B of debt at 1000 B/s
  CHECK(b.take(0, t + 50ms) == std::chrono::nanoseconds(50ms));
  CHECK(b.take(0, t + 100ms).count() == 0);             // debt paid
  // An idle second refills only up to the burst, not to 1000 B.
  t += 1100ms;
  CHECK(b.take(100, t).count() == 0);
  CHECK(b.take(1, t).count() > 0);
}

TEST_CASE("token bucket: the long-run rate is exact whatever the chunk size", "[net][token_bucket]") {
  for (size_t chunk : {size_t(1000), size_t(16384), size_t(100000)}) {
    TokenBucket b(1e6, 20000);
    auto t = Clock::now() + 1s;
    const size_t total = 3'000'000;
    const double s = paced_seconds(b, t, total, chunk);
    // The first `burst` bytes are free; the rest move at exactly 1 MB/s.
    const double expected = (static_cast<double>(total) - 20000.0) / 1e6;
    INFO("chunk " << chunk);
    CHECK(s == Approx(expected).margin(1e-5));
  }
}

TEST_CASE("token bucket: the default burst is 16 KiB or 20 ms of the rate", "[net][token_bucket]") {
  CHECK(TokenBucket(1000).burst() == 16384.0);
  CHECK(TokenBucket(10e6).burst() == Approx(200000.0));
  TokenBucket b(1000);
  b.set_rate(50e6);
  CHECK(b.burst() == Approx(1e6));
}

TEST_CASE("token bucket: set_rate takes effect at once and debt is paid at the new rate", "[net][token_bucket]") {
  TokenBucket b(1000.0, 100.0);
  auto t = Clock::now() + 1s;
  CHECK(b.take(100, t).count() == 0);
  CHECK(b.take(1000, t) == std::chrono::nanoseconds(1s));  // 1000 B of debt at 1000 B/s
  b.set_rate(10000.0, 100.0);
  // The same debt at ten times the rate is paid ten times sooner.
  CHECK(b.take(0, t) == std::chrono::nanoseconds(100ms));
  b.set_rate(0);  // unlimited: no waiting at all, debt forgotten
  CHECK(b.take(5000, t).count() == 0);
  b.set_rate(500.0, 50.0);  // a fresh cap starts with a full bucket
  const auto now = Clock::now();
  CHECK(b.take(50, now).count() == 0);
  CHECK(b.take(50, now) == std::chrono::nanoseconds(100ms));
}

TEST_CASE("token bucket: threads taking at once share one budget", "[net][token_bucket]") {
  TokenBucket b(1e6, 1000.0);
  const auto t = Clock::now() + 1s;
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 1000; ++k) (void)b.take(100, t);
    });
  }
  for (auto& th : threads) th.join();
  // 400000 bytes granted at one instant: 1000 free, the rest is debt that takes 0.399 s to pay.
  CHECK(std::chrono::duration<double>(b.take(0, t)).count() == Approx(0.399).margin(1e-6));
}

#include "synthetic.hpp"

#include <algorithm>
#include <chrono>

#include "optim/hash_mix.hpp"

namespace distro::bench {

void fill_uniform(ThreadPool& pool, float* out, uint64_t n, uint64_t seed, float scale) {
  uint64_t base = mix64(seed ^ 0x5DEECE66Dull);
  pool.parallel_for(n, [&](uint64_t b, uint64_t e, unsigned) {
    for (uint64_t i = b; i < e; ++i) {
      uint64_t r = mix64(base + i * kGolden);
      // 24 random bits -> [-1, 1)
      out[i] = scale * (float(int32_t(r >> 40) - (1 << 23)) / float(1 << 23));
    }
  });
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

double median_seconds(unsigned repeat, unsigned warmup, const std::function<void()>& fn) {
  for (unsigned i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (unsigned i = 0; i < repeat; ++i) {
    double t0 = now_seconds();
    fn();
    t.push_back(now_seconds() - t0);
  }
  return median(std::move(t));
}

}  // namespace distro::bench

// Fresh random data for benchmarks and synthetic runs: never zeros, reproducible from a seed.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "backend/thread_pool.hpp"

namespace distro::bench {

// Fills out with uniform values in [-scale, scale), element i drawn from (seed, i) alone, so the
// result does not depend on the thread count.
void fill_uniform(ThreadPool& pool, float* out, uint64_t n, uint64_t seed, float scale);

// A wall-clock stopwatch in seconds.
double now_seconds();

// The median of a list of times (0 for an empty list).
double median(std::vector<double> v);

// Runs fn `warmup` times untimed, then `repeat` times, and returns the median wall-clock seconds.
double median_seconds(unsigned repeat, unsigned warmup, const std::function<void()>& fn);

}  // namespace distro::bench

// `distro bench optimizer`: times each stage of one DisTrO step on the CPU backend (momentum, DCT,
// top-k, residual, the fused compress that production runs, encode, merge, apply, hash) and reports
// bits per parameter up and down against the u16-index and DeMo int64-index layouts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "peers.hpp"

namespace distro::bench {

struct OptimizerBenchConfig {
  PeersConfig peers;
  unsigned repeat = 3;     // timed repetitions; the median is reported
  std::string json_path;   // empty: no JSON file
};

struct StageTime {
  std::string name;
  double seconds = 0;  // median
};

struct OptimizerBenchResult {
  std::string model;
  uint64_t params = 0, chunks = 0, coefficients = 0;
  unsigned peers = 0, threads = 0;
  uint32_t topk = 0;
  std::string values;
  double bits_up = 0, bits_down = 0;
  double bits_u16_layout = 0, bits_int64_layout = 0;  // same coefficients, other layouts
  std::vector<StageTime> stages;
};

OptimizerBenchResult run_optimizer_bench(const OptimizerBenchConfig& c);
void print_optimizer_bench(const OptimizerBenchResult& r);
void write_optimizer_bench_json(const OptimizerBenchResult& r, const std::string& path);

}  // namespace distro::bench

// `distro bench model`: forward and forward+backward time of a model preset on the CPU device,
// tokens per second and achieved GFLOP/s, and the matmul's GFLOP/s, on fresh random data.
#pragma once

#include <string>

namespace distro::bench {

struct ModelBenchConfig {
  std::string preset = "nano";
  int batch = 8, seq = 128;
  unsigned threads = 0;
  unsigned repeat = 5;
  std::string json_path;
};

// Prints a table; writes JSON when json_path is set.
void run_model_bench(const ModelBenchConfig& c);

}  // namespace distro::bench

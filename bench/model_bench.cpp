#include "model_bench.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "backend/cpu_device.hpp"
#include "core/error.hpp"
#include "model/llama.hpp"
#include "optim/hash_mix.hpp"
#include "synthetic.hpp"

namespace distro::bench {

void run_model_bench(const ModelBenchConfig& c) {
  CpuDevice dev(c.threads);
  LlamaConfig mc = llama_preset(c.preset);
  if (c.seq < 1 || c.seq > mc.max_seq)
    fail(Code::invalid_argument, "seq " + std::to_string(c.seq) + " is outside 1.." + std::to_string(mc.max_seq));
  LlamaModel model(dev, mc, 1);
  const int B = c.batch, T = c.seq;
  std::vector<int32_t> tokens(size_t(B) * T), targets(size_t(B) * T);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = int32_t(mix64(i * 2 + 1) % uint64_t(mc.vocab));
    targets[i] = int32_t(mix64(i * 2 + 2) % uint64_t(mc.vocab));
  }
  double fwd = median_seconds(c.repeat, 1, [&] { model.loss(tokens.data(), targets.data(), B, T); });
  double step = median_seconds(c.repeat, 1, [&] {
    model.zero_grad();
    model.forward_backward(tokens.data(), targets.data(), B, T);
  });
  // Work of one step: 6 * (params - token embedding) * tokens, plus the causal attention products.
  const double ntok = double(B) * T;
  const double dense = 6.0 * double(model.num_params() - uint64_t(mc.vocab) * mc.d_model) * ntok;
  const double attn = 3.0 * 2.0 * 2.0 * B * (double(T) * T / 2.0) * mc.d_model * mc.layers;
  const double gflops = (dense + attn) / step / 1e9;

  // The matmul alone, y = x W^T as the model's linear layers run it.
  const int64_t n = 512;
  DeviceMemory a = dev.alloc(n * n * 4), b = dev.alloc(n * n * 4), o = dev.alloc(n * n * 4);
  ThreadPool pool(1);
  fill_uniform(pool, a.as<float>(), n * n, 7, 1.0f);
  fill_uniform(pool, b.as<float>(), n * n, 8, 1.0f);
  double mm = median_seconds(c.repeat, 1, [&] {
    dev.matmul(o.as<float>(), a.as<float>(), b.as<float>(), n, n, n, false, true, 1.0f, 0.0f);
  });
  const double mm_gflops = 2.0 * double(n) * n * n / mm / 1e9;

  std::printf("distro bench model: %s (%llu params), batch %d x seq %d, %u threads, median of %u\n", c.preset.c_str(),
              (unsigned long long)model.num_params(), B, T, dev.threads(), c.repeat);
  std::printf("%-34s %10s %12s %10s\n", "work", "ms", "tokens/s", "GFLOP/s");
  std::printf("%-34s %10.1f %12.0f %10s\n", "forward", fwd * 1e3, ntok / fwd, "");
  std::printf("%-34s %10.1f %12.0f %10.1f\n", "forward + backward", step * 1e3, ntok / step, gflops);
  std::printf("%-34s %10.2f %12s %10.1f\n", "matmul 512x512x512, x W^T", mm * 1e3, "", mm_gflops);
  if (!c.json_path.empty()) {
    nlohmann::json j = {{"preset", c.preset}, {"params", model.num_params()}, {"batch", B}, {"seq", T},
                        {"threads", dev.threads()}, {"forward_s", fwd}, {"step_s", step},
                        {"tokens_per_s", ntok / step}, {"step_gflops", gflops}, {"matmul512_gflops", mm_gflops}};
    std::ofstream f(c.json_path);
    f << j.dump(2) << "\n";
    if (!f) fail(Code::io, "cannot write " + c.json_path);
  }
}

}  // namespace distro::bench

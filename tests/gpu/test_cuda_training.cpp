// Training with CUDA peers: the gradient-norm reduction, the optimizer sharing the model's device
// (parameters and gradients resident on the GPU), and mixed CPU/CUDA peers in one run, whose
// replicas must stay bit-identical at every step (DESIGN.md section 4).
#include <catch2/catch.hpp>

#if defined(DISTRO_HAVE_CUDA)

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/registry.hpp"
#include "optim/merger.hpp"
#include "optim/optimizer.hpp"
#include "train/trainer.hpp"

using namespace distro;

namespace {

std::vector<float> normal_floats(size_t n, uint64_t seed, float sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::string genesis() { return std::string(DISTRO_TEST_DATA) + "/genesis.txt"; }

}  // namespace

TEST_CASE("cuda training: sum_squares matches the host sum and is deterministic", "[cuda][train]") {
  auto gpu = open_device("cuda:0", 0);
  for (size_t n : {size_t(1), size_t(1000), size_t(4097), size_t(3) << 20}) {
    INFO("n " << n);
    const uint64_t seed = std::random_device{}();
    INFO("seed " << seed);
    auto x = normal_floats(n, seed, 3.0f);
    double want = 0.0;
    for (float v : x) want += double(v) * double(v);
    DeviceMemory d = gpu->alloc(n * 4);
    gpu->upload(d.data(), x.data(), n * 4);
    const double got = gpu->sum_squares(d.as<float>(), n);
    CHECK(std::abs(got - want) <= 1e-12 * want);
    const double again = gpu->sum_squares(d.as<float>(), n);
    CHECK(std::memcmp(&got, &again, sizeof got) == 0);
  }
  CHECK(gpu->sum_squares(nullptr, 0) == 0.0);
  std::vector<float> host(16, 1.0f);
  CHECK_THROWS_AS(gpu->sum_squares(host.data(), host.size()), Error);  // not device memory
}

TEST_CASE("cuda training: an optimizer on the model's device equals the CPU's bit for bit",
          "[cuda][train][optimizer]") {
  const std::vector<std::pair<std::string, std::vector<int64_t>>> specs = {
      {"w", {256, 192}}, {"v", {100}}, {"c", {2, 64, 7}}};
  auto gpu = open_device("cuda:0", 0);
  OptimizerOptions o;
  o.run_id = 5;
  o.topk = 8;
  o.threads = 2;
  Optimizer cpu_opt(o);
  o.peer_id = 1;
  Optimizer gpu_opt(o, *gpu);
  CHECK(gpu_opt.options().device == "cuda:0");
  const uint64_t seed = std::random_device{}();
  INFO("seed " << seed);
  std::vector<std::vector<float>> params, grads;
  std::vector<DeviceMemory> dparams, dgrads;
  for (size_t t = 0; t < specs.size(); ++t) {
    uint64_t n = 1;
    for (auto d : specs[t].second) n *= uint64_t(d);
    params.push_back(normal_floats(n, seed + t, 0.02f));
    grads.emplace_back(n, 0.0f);
    dparams.push_back(gpu->alloc(n * 4));
    dgrads.push_back(gpu->alloc(n * 4));
    gpu->upload(dparams.back().data(), params.back().data(), n * 4);
    cpu_opt.add_tensor(specs[t].first, specs[t].second, params[t].data(), grads[t].data());
    gpu_opt.add_tensor(specs[t].first, specs[t].second, dparams[t].as<float>(), dgrads[t].as<float>());
  }
  uint64_t prev = cpu_opt.param_hash();
  REQUIRE(gpu_opt.param_hash() == prev);
  for (uint64_t step = 1; step <= 10; ++step) {
    INFO("step " << step);
    for (size_t t = 0; t < specs.size(); ++t) {
      // Copied into the registered buffer: the CPU optimizer holds a pointer to it.
      const auto g = normal_floats(grads[t].size(), seed * 31 + step * 7 + t);
      std::copy(g.begin(), g.end(), grads[t].begin());
      gpu->upload(dgrads[t].data(), grads[t].data(), grads[t].size() * 4);
    }
    Merger merger(cpu_opt.manifest(), 5, step);
    merger.add(cpu_opt.compress(step, 1e-3f));
    merger.add(gpu_opt.compress(step, 1e-3f));
    const MergedUpdate u = merger.finish(1e-3f, 0.1f, prev);
    cpu_opt.apply(u);
    gpu_opt.apply(u);
    const uint64_t h = cpu_opt.param_hash();
    REQUIRE(gpu_opt.param_hash() == h);
    REQUIRE(h != prev);
    prev = h;
  }
  for (size_t t = 0; t < specs.size(); ++t) {
    std::vector<float> back(params[t].size());
    gpu->download(back.data(), dparams[t].data(), back.size() * 4);
    REQUIRE(std::memcmp(back.data(), params[t].data(), back.size() * 4) == 0);
  }
}

TEST_CASE("cuda training: CPU and CUDA peers keep bit-identical replicas in distro train",
          "[cuda][train][e2e]") {
  TrainConfig c;
  c.data = genesis();
  c.preset = "nano";
  c.devices = {"cpu", "cuda:0", "cpu", "cuda:0"};
  c.steps = 12;
  c.batch = 4;
  c.seq = 64;
  c.threads = 2;
  Trainer tr(c);
  double first = 0.0, last = 0.0;
  for (uint64_t s = 1; s <= c.steps; ++s) {
    INFO("step " << s);
    StepStats st = tr.step();  // throws Error(internal) when the replicas' hashes differ
    REQUIRE(st.hashes.size() == 4);
    for (uint64_t h : st.hashes) REQUIRE(h == st.hashes[0]);
    if (s == 1) first = st.train_loss;
    last = st.train_loss;
  }
  CHECK(last < first);
}

#endif  // DISTRO_HAVE_CUDA

#include "optimizer_bench.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "optim/chunk_math.hpp"
#include "optim/dct.hpp"
#include "optim/merger.hpp"
#include "synthetic.hpp"
#include "wire/codec.hpp"

namespace distro::bench {

namespace {

// No warm-up: the first repetition of a stage is as real as the others, and the median drops outliers.
double median_time(unsigned repeat, const std::function<void()>& fn) { return median_seconds(repeat, 0, fn); }

}  // namespace

OptimizerBenchResult run_optimizer_bench(const OptimizerBenchConfig& c) {
  Peers peers(c.peers);
  const Manifest& m = peers.manifest();
  ThreadPool pool(c.peers.threads);
  OptimizerBenchResult r;
  r.model = c.peers.model;
  r.params = m.total_params;
  r.chunks = m.total_chunks;
  r.peers = c.peers.peers;
  r.threads = pool.size();
  r.topk = c.peers.topk;
  r.values = c.peers.values == ValueMode::sign ? "sign" : "int8";

  // Unfused stages over one peer-sized set of buffers, the same math the fused op runs.
  std::vector<std::vector<float>> grad(m.tensors.size()), delta(m.tensors.size()), coef(m.tensors.size());
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    uint64_t n = m.tensors[t].numel;
    grad[t].resize(n), delta[t].resize(n), coef[t].resize(n);
    fill_uniform(pool, grad[t].data(), n, 100 + t, 1.0f);
    fill_uniform(pool, delta[t].data(), n, 200 + t, 0.1f);
  }
  DctTables tables(m);
  std::vector<uint16_t> idx(m.total_slots), cnt(m.total_chunks);
  std::vector<int8_t> val(m.total_slots);
  const float beta = c.peers.decay, lr = c.peers.lr;
  auto each_tensor = [&](const std::function<void(size_t, const TensorPlan&)>& fn) {
    for (size_t t = 0; t < m.tensors.size(); ++t) fn(t, m.tensors[t]);
  };
  r.stages.push_back({"momentum", median_time(c.repeat, [&] {
    each_tensor([&](size_t t, const TensorPlan& p) {
      float* d = delta[t].data();
      const float* g = grad[t].data();
      pool.parallel_for(p.numel, [&](uint64_t b, uint64_t e, unsigned) {
        for (uint64_t i = b; i < e; ++i) d[i] = beta * d[i] + lr * g[i];
      });
    });
  })});
  r.stages.push_back({"dct", median_time(c.repeat, [&] {
    each_tensor([&](size_t t, const TensorPlan& p) {
      const DctBasis &b1 = tables.get(p.n1), &b2 = tables.get(p.n2);
      pool.parallel_for(p.chunks, [&](uint64_t cb, uint64_t ce, unsigned) {
        for (uint64_t ch = cb; ch < ce; ++ch)
          dct_chunk_forward(delta[t].data() + chunk_origin(p, ch), p.cols, b1, b2, coef[t].data() + ch * p.elems());
      });
    });
  })});
  r.stages.push_back({"topk", median_time(c.repeat, [&] {
    each_tensor([&](size_t t, const TensorPlan& p) {
      pool.parallel_for(p.chunks, [&](uint64_t cb, uint64_t ce, unsigned) {
        std::vector<float> sel(p.k);
        for (uint64_t ch = cb; ch < ce; ++ch) {
          const float* y = coef[t].data() + ch * p.elems();
          uint16_t* ix = idx.data() + p.slot_base + ch * p.k;
          uint32_t n = select_topk(y, p.elems(), p.k, ix);
          cnt[p.chunk_base + ch] = uint16_t(n);
          for (uint32_t s = 0; s < n; ++s) sel[s] = y[ix[s]];
          quantize_values(sel.data(), n, m.values, val.data() + p.slot_base + ch * p.k);
        }
      });
    });
  })});
  r.stages.push_back({"residual", median_time(c.repeat, [&] {
    each_tensor([&](size_t t, const TensorPlan& p) {
      const DctBasis &b1 = tables.get(p.n1), &b2 = tables.get(p.n2);
      pool.parallel_for(p.chunks, [&](uint64_t cb, uint64_t ce, unsigned) {
        for (uint64_t ch = cb; ch < ce; ++ch) {
          float* x = delta[t].data() + chunk_origin(p, ch);
          const uint16_t* ix = idx.data() + p.slot_base + ch * p.k;
          const float* y = coef[t].data() + ch * p.elems();
          uint32_t n = cnt[p.chunk_base + ch];
          for (uint32_t i = 0; i < p.n1; ++i)
            for (uint32_t j = 0; j < p.n2; ++j) {
              double acc = 0;
              for (uint32_t s = 0; s < n; ++s)
                acc += double(y[ix[s]]) * b1.f64[size_t(i) * p.n1 + ix[s] / p.n2] * b2.f64[size_t(j) * p.n2 + ix[s] % p.n2];
              x[uint64_t(i) * p.cols + j] -= float(acc);
            }
        }
      });
    });
  })});

  // The production path: the fused compress of every peer, then encode, merge, apply.
  std::vector<PeerPayload> payloads(c.peers.peers);
  uint64_t step = 0;
  peers.randomize_grads(1);  // fresh random gradients: a zero gradient would send nothing
  r.stages.push_back({"compress (fused: momentum+dct+topk+residual)", median_time(c.repeat, [&] {
    ++step;
    payloads[0] = peers.optimizer(0).compress(step, lr);
  })});
  for (unsigned p = 1; p < c.peers.peers; ++p) payloads[p] = peers.optimizer(p).compress(step, lr);
  std::vector<std::vector<uint8_t>> wire(c.peers.peers);
  r.stages.push_back({"encode payload", median_time(c.repeat, [&] { wire[0] = encode_payload(m, payloads[0]); })});
  for (unsigned p = 1; p < c.peers.peers; ++p) wire[p] = encode_payload(m, payloads[p]);
  MergedUpdate merged;
  r.stages.push_back({"merge (decode " + std::to_string(c.peers.peers) + " payloads + merge)", median_time(c.repeat, [&] {
    Merger mg(m, c.peers.seed, step);
    for (const auto& w : wire) mg.add(w);
    merged = mg.finish(lr, c.peers.weight_decay, 0);
  })});
  std::vector<uint8_t> update;
  r.stages.push_back({"encode update", median_time(c.repeat, [&] { update = encode_update(m, merged); })});
  r.stages.push_back({"apply (decode update + integer idct + sign + apply)", median_time(c.repeat, [&] {
    peers.optimizer(0).apply(decode_update(m, update));
  })});
  r.stages.push_back({"parameter hash", median_time(c.repeat, [&] { (void)peers.optimizer(0).param_hash(); })});

  r.coefficients = payloads[0].index.size();
  r.bits_up = 8.0 * double(wire[0].size()) / double(m.total_params);
  r.bits_down = 8.0 * double(update.size()) / double(m.total_params);
  double vbits = m.values == ValueMode::sign ? 1.0 : 8.0;
  r.bits_u16_layout = double(r.coefficients) * (16.0 + vbits) / double(m.total_params);
  // DeMo sends int64 indices and values in the parameter dtype (fp32).
  r.bits_int64_layout = double(r.coefficients) * (64.0 + 32.0) / double(m.total_params);
  return r;
}

void print_optimizer_bench(const OptimizerBenchResult& r) {
  std::printf("distro bench optimizer: %s, %llu params, %llu chunks, %u peers, top-k %u, %s values, %u threads\n",
              r.model.c_str(), (unsigned long long)r.params, (unsigned long long)r.chunks, r.peers, r.topk,
              r.values.c_str(), r.threads);
  std::printf("%-56s %12s %14s\n", "stage", "ms", "ns/param");
  for (const auto& s : r.stages)
    std::printf("%-56s %12.1f %14.2f\n", s.name.c_str(), s.seconds * 1e3, s.seconds * 1e9 / double(r.params));
  std::printf("\n%-56s %12s\n", "traffic", "bits/param");
  std::printf("%-56s %12.5f\n", "up: this peer's payload (wire v2)", r.bits_up);
  std::printf("%-56s %12.5f\n", "down: merged update (wire v2)", r.bits_down);
  std::printf("%-56s %12.5f\n", "up, same coefficients as u16 index + value (Psyche)", r.bits_u16_layout);
  std::printf("%-56s %12.5f\n", "up, same coefficients as int64 index + fp32 (DeMo)", r.bits_int64_layout);
}

void write_optimizer_bench_json(const OptimizerBenchResult& r, const std::string& path) {
  nlohmann::json j = {{"model", r.model},        {"params", r.params},
                      {"chunks", r.chunks},      {"peers", r.peers},
                      {"threads", r.threads},    {"topk", r.topk},
                      {"values", r.values},      {"coefficients_per_peer", r.coefficients},
                      {"bits_up", r.bits_up},    {"bits_down", r.bits_down},
                      {"bits_u16_layout", r.bits_u16_layout}, {"bits_int64_layout", r.bits_int64_layout}};
  for (const auto& s : r.stages) j["stages_seconds"][s.name] = s.seconds;
  std::ofstream f(path);
  if (!f) fail(Code::io, "cannot write " + path);
  f << j.dump(2) << "\n";
  if (!f) fail(Code::io, "cannot write " + path);
}

}  // namespace distro::bench

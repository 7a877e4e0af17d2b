// distro_gpu_bench: times our CUDA DisTrO optimizer step on a model's tensor shapes (default the
// 1.2B Llama of the DisTrO report, 1,204,881,408 parameters) and measures the memory floor.
//
// One step = compress of every tensor (momentum, block DCT, top-k, values, error feedback) + apply
// of the merged update built from that payload (integer inverse DCT, sign, decay and step), all on
// the GPU, in parameter order, one stream. The gradient check that the Optimizer runs before the
// compress (first_nonfinite_momentum_many: every tensor queued, one wait) is timed separately.
// Timing: steady clock around the work with a device synchronisation at both ends, warm-up first,
// median of the repetitions. Data: fresh pseudo-random values on the device (never zeros).
//
// Floor (DESIGN.md section 9): 20 bytes per parameter must move (read the gradient, read and write
// the momentum, read and write the parameters) over the measured device-to-device copy bandwidth.
//
// Usage: distro_gpu_bench [--model llama-1b] [--topk 4,32] [--reps 7] [--warmup 2] [--json FILE]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "backend/registry.hpp"
#include "core/error.hpp"
#include "fill.hpp"
#include "synthetic.hpp"
#include "model/shapes.hpp"
#include "optim/manifest.hpp"
#include "optim/merger.hpp"

using namespace distro;

namespace {

using bench::median;
double now() { return bench::now_seconds(); }

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(Code::device, std::string(what) + ": " + cudaGetErrorString(e));
}

// Device-to-device copy bandwidth (bytes read + bytes written per second), CUDA events, median.
double copy_bandwidth(Device& dev, size_t bytes, unsigned reps) {
  DeviceMemory a = dev.alloc(bytes), b = dev.alloc(bytes);
  cuda_check(cudaError_t(bench::fill_normal(a.as<float>(), bytes / 4, 99, 1.0f)), "fill");
  cuda_check(cudaDeviceSynchronize(), "sync");
  cudaEvent_t e0, e1;
  cuda_check(cudaEventCreate(&e0), "event");
  cuda_check(cudaEventCreate(&e1), "event");
  std::vector<double> t;
  for (unsigned r = 0; r < reps + 2; ++r) {
    cuda_check(cudaEventRecord(e0), "record");
    cuda_check(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice), "copy");
    cuda_check(cudaEventRecord(e1), "record");
    cuda_check(cudaEventSynchronize(e1), "sync");
    float ms = 0;
    cuda_check(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
    if (r >= 2) t.push_back(ms * 1e-3);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(bytes) / median(t);
}

struct TensorState {
  DeviceMemory grad, delta, params, count, index, value;  // compress inputs and outputs
  DeviceMemory offset, uidx, uval;                         // the merged update for apply
};

struct KResult {
  uint32_t k = 0;
  double compress_s = 0, apply_s = 0, step_s = 0, check_s = 0;
  double compress_plain_s = 0;  // the plain (unfolded) 64x64 DCT kernel, DISTRO_CUDA_DCT_FOLD=0
  double apply_plain_s = 0;     // the plain 64x64 apply kernel, DISTRO_CUDA_APPLY_FOLD=0
  double compress_recompute_s = 0;  // the folded kernel recomputing the momentum, DISTRO_CUDA_DCT_KEEPX=0
  double compress_ffma_s = 0;       // the folded kernel's transforms on float32 FMAs, DISTRO_CUDA_DCT_MMA=0
  double compress_each_s = 0;   // one compress call (launch) per tensor instead of compress_many
  double apply_each_s = 0;      // one apply call per tensor instead of apply_many
  uint64_t coefficients = 0;
};

KResult run_k(Device& dev, const std::vector<TensorSpec>& specs, uint32_t k, unsigned warmup, unsigned reps) {
  const Manifest m = make_manifest(specs, 64, k, ValueMode::sign);
  std::vector<TensorState> st(m.tensors.size());
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    const TensorPlan& p = m.tensors[t];
    TensorState& s = st[t];
    s.grad = dev.alloc(p.numel * 4);
    s.delta = dev.alloc(p.numel * 4);
    s.params = dev.alloc(p.numel * 4);
    s.count = dev.alloc(p.chunks * 2);
    s.index = dev.alloc(p.chunks * p.k * 2);
    s.value = dev.alloc(p.chunks * p.k);
    cuda_check(cudaError_t(bench::fill_normal(s.grad.as<float>(), p.numel, 3 * t + 1, 1.0f)), "fill");
    cuda_check(cudaError_t(bench::fill_normal(s.delta.as<float>(), p.numel, 3 * t + 2, 1e-3f)), "fill");
    cuda_check(cudaError_t(bench::fill_normal(s.params.as<float>(), p.numel, 3 * t + 3, 0.02f)), "fill");
  }
  cuda_check(cudaDeviceSynchronize(), "fill");
  const float beta = 0.999f, lr = 4e-4f;

  // Every tensor in one call (Device::compress_many, as the Optimizer runs it), or one call per
  // tensor (the per-tensor launches before batching: A/B).
  std::vector<CompressArgs> cargs(m.tensors.size());
  std::vector<ApplyArgs> aargs(m.tensors.size());
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    {
      CompressArgs& a = cargs[t];
      a.plan = &m.tensors[t];
      a.grad = st[t].grad.as<float>();
      a.delta = st[t].delta.as<float>();
      a.beta = beta;
      a.lr = lr;
      a.values = ValueMode::sign;
      a.count = st[t].count.as<uint16_t>();
      a.index = st[t].index.as<uint16_t>();
      a.value = st[t].value.as<int8_t>();
    }
    ApplyArgs& a = aargs[t];
    a.plan = &m.tensors[t];
    a.params = st[t].params.as<float>();
    a.lr = lr;
    a.decay_factor = 1.0f - lr * 0.1f;
  }
  auto compress_all = [&] { dev.compress_many(cargs.data(), cargs.size()); };
  auto apply_all = [&] { dev.apply_many(aargs.data(), aargs.size()); };
  auto compress_each = [&] {
    for (const CompressArgs& a : cargs) dev.compress(a);
  };
  auto apply_each = [&] {
    for (const ApplyArgs& a : aargs) dev.apply(a);
  };

  // The payload of one compress, merged (one peer), uploaded as the update every apply uses.
  compress_all();
  dev.synchronize();
  PeerPayload pl;
  pl.run_id = 1, pl.step = 1, pl.peer_id = 0, pl.manifest_hash = m.hash, pl.values = m.values;
  pl.count.resize(m.total_chunks);
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    const TensorPlan& p = m.tensors[t];
    std::vector<uint16_t> idx(p.chunks * p.k);
    std::vector<int8_t> val(p.chunks * p.k);
    dev.download(pl.count.data() + p.chunk_base, st[t].count.data(), p.chunks * 2);
    dev.download(idx.data(), st[t].index.data(), idx.size() * 2);
    dev.download(val.data(), st[t].value.data(), val.size());
    for (uint64_t c = 0; c < p.chunks; ++c) {
      const uint16_t n = pl.count[p.chunk_base + c];
      pl.index.insert(pl.index.end(), idx.begin() + c * p.k, idx.begin() + c * p.k + n);
      pl.value.insert(pl.value.end(), val.begin() + c * p.k, val.begin() + c * p.k + n);
    }
  }
  KResult r;
  r.k = k;
  r.coefficients = pl.index.size();
  Merger merger(m, 1, 1);
  merger.add(std::move(pl));
  const MergedUpdate u = merger.finish(lr, 0.1f, 0);
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    const TensorPlan& p = m.tensors[t];
    const uint32_t first = u.offset[p.chunk_base];
    std::vector<uint32_t> off(p.chunks + 1);
    for (uint64_t c = 0; c <= p.chunks; ++c) off[c] = u.offset[p.chunk_base + c] - first;
    const size_t n = off.back();
    st[t].offset = dev.alloc(off.size() * 4);
    st[t].uidx = dev.alloc(n * 2 + 2);
    st[t].uval = dev.alloc(n * 4 + 4);
    dev.upload(st[t].offset.data(), off.data(), off.size() * 4);
    dev.upload(st[t].uidx.data(), u.index.data() + first, n * 2);
    dev.upload(st[t].uval.data(), u.value.data() + first, n * 4);
    aargs[t].offset = st[t].offset.as<uint32_t>();
    aargs[t].index = st[t].uidx.as<uint16_t>();
    aargs[t].value = st[t].uval.as<int32_t>();
  }

  std::vector<double> tc, ta, ts, tk;
  for (unsigned r = 0; r < warmup + reps; ++r) {
    dev.synchronize();
    const double t0 = now();
    compress_all();
    dev.synchronize();
    const double t1 = now();
    apply_all();
    dev.synchronize();
    const double t2 = now();
    // As the Optimizer runs it: every tensor's check queued, one wait.
    std::vector<const float*> deltas, grads;
    std::vector<uint64_t> numel, first(m.tensors.size());
    for (size_t t = 0; t < m.tensors.size(); ++t)
      deltas.push_back(st[t].delta.as<float>()), grads.push_back(st[t].grad.as<float>()),
          numel.push_back(m.tensors[t].numel);
    dev.first_nonfinite_momentum_many(deltas.data(), grads.data(), numel.data(), beta, lr, m.tensors.size(),
                                      first.data());
    for (uint64_t f : first)
      if (f != UINT64_MAX) fail(Code::internal, "the benchmark's gradient is not finite");
    const double t3 = now();
    if (r >= warmup) {
      tc.push_back(t1 - t0);
      ta.push_back(t2 - t1);
      ts.push_back(t2 - t0);
      tk.push_back(t3 - t2);
    }
  }
  r.compress_s = median(tc);
  r.apply_s = median(ta);
  r.step_s = median(ts);
  r.check_s = median(tk);

  // A/B: the same work with one kernel variant switched by its environment variable.
  auto variant = [&](const char* env, const char* value, const std::function<void()>& work) {
    setenv(env, value, 1);
    const double t = bench::median_seconds(reps, warmup, [&] {
      dev.synchronize();
      work();
      dev.synchronize();
    });
    unsetenv(env);
    return t;
  };
  r.compress_plain_s = variant("DISTRO_CUDA_DCT_FOLD", "0", compress_all);
  r.compress_recompute_s = variant("DISTRO_CUDA_DCT_KEEPX", "0", compress_all);
  r.compress_ffma_s = variant("DISTRO_CUDA_DCT_MMA", "0", compress_all);
  r.apply_plain_s = variant("DISTRO_CUDA_APPLY_FOLD", "0", apply_all);
  auto timed = [&](const std::function<void()>& work) {
    return bench::median_seconds(reps, warmup, [&] {
      dev.synchronize();
      work();
      dev.synchronize();
    });
  };
  r.compress_each_s = timed(compress_each);
  r.apply_each_s = timed(apply_each);
  return r;
}

std::vector<uint32_t> parse_list(const std::string& s) {
  std::vector<uint32_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(uint32_t(std::stoul(item)));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = "llama-1b", json_path;
  std::vector<uint32_t> ks = {4, 32};
  unsigned reps = 7, warmup = 2;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") model = next();
    else if (a == "--topk") ks = parse_list(next());
    else if (a == "--reps") reps = unsigned(std::stoul(next()));
    else if (a == "--warmup") warmup = unsigned(std::stoul(next()));
    else if (a == "--json") json_path = next();
    else {
      std::fprintf(stderr, "usage: distro_gpu_bench [--model NAME] [--topk 4,32] [--reps N] [--warmup N] [--json FILE]\n");
      return 2;
    }
  }
  try {
    auto devs = scan_cuda_devices();
    if (devs.empty()) {
      std::printf("no CUDA device\n");
      return 77;
    }
    Device& dev = *devs[0];
    const auto specs = model_shape(model);
    const uint64_t params = count_params(specs);
    std::printf("GPU: %s\nmodel %s: %llu parameters, %zu tensors\n", dev.info().description.c_str(), model.c_str(),
                (unsigned long long)params, specs.size());
    const double bw = copy_bandwidth(dev, size_t(2) << 30, 10);
    const double floor_s = 20.0 * double(params) / bw;
    std::printf("device-to-device copy: %.2f TB/s (read + write); floor of a step: 20 B/param -> %.2f ms\n",
                bw * 1e-12, floor_s * 1e3);
    nlohmann::json j;
    j["gpu"] = dev.info().description;
    j["model"] = model;
    j["params"] = params;
    j["copy_bytes_per_s"] = bw;
    j["floor_s"] = floor_s;
    j["reps"] = reps;
    std::printf("%6s %12s %12s %12s %12s %10s %14s %14s %14s %14s %14s %14s\n", "top-k", "compress ms", "apply ms",
                "step ms", "check ms", "step/floor", "plain cmp ms", "plain app ms", "recomp cmp ms", "ffma cmp ms",
                "1/call cmp ms", "1/call app ms");
    for (uint32_t k : ks) {
      const KResult r = run_k(dev, specs, k, warmup, reps);
      std::printf("%6u %12.2f %12.2f %12.2f %12.2f %10.2f %14.2f %14.2f %14.2f %14.2f %14.2f %14.2f\n", k,
                  r.compress_s * 1e3, r.apply_s * 1e3, r.step_s * 1e3, r.check_s * 1e3, r.step_s / floor_s,
                  r.compress_plain_s * 1e3, r.apply_plain_s * 1e3, r.compress_recompute_s * 1e3,
                  r.compress_ffma_s * 1e3, r.compress_each_s * 1e3, r.apply_each_s * 1e3);
      j["ours"].push_back({{"k", k},
                           {"compress_s", r.compress_s},
                           {"apply_s", r.apply_s},
                           {"step_s", r.step_s},
                           {"check_s", r.check_s},
                           {"compress_plain_s", r.compress_plain_s},
                           {"apply_plain_s", r.apply_plain_s},
                           {"compress_recompute_s", r.compress_recompute_s},
                           {"compress_ffma_s", r.compress_ffma_s},
                           {"compress_each_s", r.compress_each_s},
                           {"apply_each_s", r.apply_each_s},
                           {"coefficients", r.coefficients}});
    }
    if (!json_path.empty()) std::ofstream(json_path) << j.dump(2) << "\n";
  } catch (const Error& e) {
    std::fprintf(stderr, "distro_gpu_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

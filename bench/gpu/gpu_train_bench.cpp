// distro_gpu_train_bench: training throughput of the built-in model on one CUDA device, the whole
// DisTrO step: forward and backward over the batch (micro-batched), gradient norm and clip,
// compress, encode, merge (this peer alone), apply of the merged update, and the parameter hash that
// a peer reports after each step. Random tokens of the preset's vocabulary (32000 for small and 1b),
// fresh every step. Steady clock around each step with the device synchronised at both ends;
// warm-up steps first; the median is reported, with the forward/backward share.
//
// MFU counts (6 * params + 12 * layers * d_model * seq) flops per token over the time, against
// --peak-tflops (default 989: H100/H200 dense bf16), the convention of
// ../shared/reference/gpu-baselines.md, so the PyTorch reference (bench/reference/llama_torch_train.py)
// is counted the same way.
//
// Usage: distro_gpu_train_bench [--preset small] [--batch 16] [--micro-batch 0] [--seq 1024]
//                               [--steps 6] [--warmup 2] [--peak-tflops 989] [--overlap] [--json FILE]
//
// --overlap times the step of `distro train --overlap` (docs/training.md): each merged update is
// applied one step late, so the host's payload encode, merge and update decode run on a second
// thread while the GPU computes the next step; the step's critical path keeps the forward and
// backward, the compress, the device apply and the hash.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "model/llama.hpp"
#include "optim/merger.hpp"
#include "synthetic.hpp"
#include "train/replica.hpp"
#include "optim/optimizer.hpp"
#include "wire/codec.hpp"

using namespace distro;

namespace {

struct Options {
  std::string preset = "small";
  int batch = 16, micro_batch = 0, seq = 1024;
  unsigned steps = 6, warmup = 2;
  double peak_tflops = 989.0;
  bool overlap = false;
  std::string json;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "distro_gpu_train_bench: %s\nusage: distro_gpu_train_bench [--preset small|1b|...] [--batch N] "
               "[--micro-batch N] [--seq N] [--steps N] [--warmup N] [--peak-tflops X] [--overlap] [--json FILE]\n",
               why.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    auto number = [&](long lo, long hi) {
      std::string v = value();
      char* end = nullptr;
      long x = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || x < lo || x > hi)
        usage(a + " is '" + v + "'; expected a whole number in " + std::to_string(lo) + ".." + std::to_string(hi));
      return x;
    };
    if (a == "--preset") o.preset = value();
    else if (a == "--batch") o.batch = int(number(1, 4096));
    else if (a == "--micro-batch") o.micro_batch = int(number(0, 4096));
    else if (a == "--seq") o.seq = int(number(1, 65536));
    else if (a == "--steps") o.steps = unsigned(number(1, 10000));
    else if (a == "--warmup") o.warmup = unsigned(number(0, 10000));
    else if (a == "--peak-tflops") o.peak_tflops = double(number(1, 100000));
    else if (a == "--json") o.json = value();
    else if (a == "--overlap") o.overlap = true;
    else usage("unknown option '" + a + "'");
  }
  return o;
}

uint64_t device_used_bytes() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
  return uint64_t(total - free);
}

void opt_apply_last(Replica& peer, MergedUpdate u) {
  peer.optimizer().apply(u);
  peer.device().synchronize();
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    const uint64_t base_used = device_used_bytes();  // before our context's allocations
    TrainConfig cfg;
    cfg.preset = o.preset;
    cfg.devices = {"cuda:0"};
    cfg.batch = o.batch;
    cfg.micro_batch = o.micro_batch;
    cfg.seq = o.seq;
    cfg.data = "(random tokens)";  // the replica never reads it; validate() asks for a source
    const LlamaConfig mc = llama_preset(o.preset);
    if (o.seq > mc.max_seq) usage("--seq exceeds the preset's maximum " + std::to_string(mc.max_seq));
    validate(cfg);
    const uint64_t run_id = 7;
    Replica peer(cfg, mc, 0, run_id, "cuda:0");
    const uint64_t P = peer.model().num_params();
    std::printf("preset %s: %llu parameters, batch %d x %d tokens, micro-batch %d, device %s\n", o.preset.c_str(),
                (unsigned long long)P, o.batch, o.seq, o.micro_batch ? o.micro_batch : o.batch,
                peer.device().info().description.c_str());

    const size_t n = size_t(o.batch) * o.seq;
    std::vector<int32_t> tokens(n), targets(n);
    std::mt19937_64 rng(12345);
    std::vector<double> step_s, fb_s, opt_s, compress_s, encode_s, merge_s, apply_s;
    uint64_t up = 0, down = 0;
    double loss = 0.0;
    std::future<MergedUpdate> pending;  // --overlap: the previous step's update, being merged
    // The parameters' hash after the last apply, as a node keeps it (net/node_worker.cpp): the
    // coordinator's part merges against it, so each step hashes once, after its apply.
    uint64_t hash = peer.hash();
    // One step's times (kept after the warm-up) and its line.
    const auto record = [&](unsigned s, double t0, double t1, double t2, double step_loss) {
      if (s > o.warmup) {
        step_s.push_back(t2 - t0);
        fb_s.push_back(t1 - t0);
        opt_s.push_back(t2 - t1);
      }
      loss = step_loss;
      std::printf("step %u: %.1f ms (forward+backward %.1f ms), loss %.4f\n", s, (t2 - t0) * 1e3, (t1 - t0) * 1e3,
                  step_loss);
    };
    for (unsigned s = 1; s <= o.warmup + o.steps; ++s) {
      for (size_t i = 0; i < n; ++i) tokens[i] = int32_t(rng() % uint64_t(mc.vocab));
      for (size_t i = 0; i < n; ++i) targets[i] = int32_t(rng() % uint64_t(mc.vocab));
      peer.device().synchronize();
      const double t0 = bench::now_seconds();
      GradStats g = peer.train_batch(tokens.data(), targets.data());
      peer.device().synchronize();
      const double t1 = bench::now_seconds();
      const float lr = 4e-4f;
      Optimizer& opt = peer.optimizer();
      if (o.overlap) {
        // Overlapped (distro train --overlap): the host codec and merge of step s run on a second
        // thread while the GPU computes step s+1; on the critical path stay the compress, the
        // device apply of the previous step's (already decoded) update and the hash.
        PeerPayload pp = peer.compress_payload(s, lr);
        if (pending.valid()) {
          opt.apply(pending.get());
          pending = {};
        }
        const uint64_t h = peer.hash();
        peer.device().synchronize();
        const double t2 = bench::now_seconds();
        const Manifest& m = opt.manifest();
        pending = std::async(std::launch::async, [&m, pp = std::move(pp), s, lr, h, run_id, &up, &down] {
          std::vector<uint8_t> payload = encode_payload(m, pp);
          Merger merger(m, run_id, s);
          merger.add(payload);
          std::vector<uint8_t> update = encode_update(m, merger.finish(lr, 0.0f, h));
          up = payload.size(), down = update.size();
          return decode_update(m, update);
        });
        record(s, t0, t1, t2, g.loss);
        continue;
      }
      // The node's part: compress on the device and encode; the coordinator's part: merge and
      // encode the update; the node again: decode, apply and hash. Each timed on its own.
      PeerPayload pp = peer.compress_payload(s, lr);
      peer.device().synchronize();
      const double t_c = bench::now_seconds();
      std::vector<uint8_t> payload = encode_payload(opt.manifest(), pp);
      const double t_e = bench::now_seconds();
      Merger merger(opt.manifest(), run_id, s);
      merger.add(payload);
      std::vector<uint8_t> update = encode_update(opt.manifest(), merger.finish(lr, 0.0f, hash));
      const double t_m = bench::now_seconds();
      peer.apply(update);
      hash = peer.hash();
      peer.device().synchronize();
      const double t2 = bench::now_seconds();
      if (s > o.warmup) {
        compress_s.push_back(t_c - t1);
        encode_s.push_back(t_e - t_c);
        merge_s.push_back(t_m - t_e);
        apply_s.push_back(t2 - t_m);
      }
      up = payload.size(), down = update.size();
      record(s, t0, t1, t2, g.loss);
    }
    if (pending.valid()) opt_apply_last(peer, pending.get());
    const uint64_t used = device_used_bytes();
    const double step = bench::median(step_s), fb = bench::median(fb_s), opt = bench::median(opt_s);
    const double tok_s = double(n) / step;
    const double flops_per_token = 6.0 * double(P) + 12.0 * mc.layers * double(mc.d_model) * o.seq;
    const double mfu = tok_s * flops_per_token / (o.peak_tflops * 1e12);
    std::printf("\n%-34s %s\n", "what", "value");
    std::printf("%-34s %.1f ms\n", "step (median)", step * 1e3);
    std::printf("%-34s %.1f ms\n", "forward+backward+norm+clip", fb * 1e3);
    std::printf("%-34s %.1f ms\n", "compress+merge+apply+hash", opt * 1e3);
    const double cm = bench::median(compress_s), en = bench::median(encode_s), me = bench::median(merge_s),
                 ap = bench::median(apply_s);
    std::printf("%-34s %.1f ms\n", "  compress (device, gradient check)", cm * 1e3);
    std::printf("%-34s %.1f ms\n", "  encode payload (host)", en * 1e3);
    std::printf("%-34s %.1f ms\n", "  merge + encode update (coordinator)", me * 1e3);
    std::printf("%-34s %.1f ms\n", "  decode + apply + hash", ap * 1e3);
    if (!o.overlap) std::printf("%-34s %.0f\n", "tokens/s without the merge", double(n) / (step - me));
    std::printf("%-34s %.0f\n", "tokens/s", tok_s);
    std::printf("%-34s %.3f\n", "MFU", mfu);
    std::printf("%-34s %.2f GB (%.2f GB before start)\n", "device memory in use", used / 1e9, base_used / 1e9);
    std::printf("%-34s %llu / %llu bytes\n", "payload up / update down", (unsigned long long)up,
                (unsigned long long)down);
    if (!o.json.empty()) {
      nlohmann::json j = {{"preset", o.preset},       {"params", P},          {"batch", o.batch},
                          {"micro_batch", o.micro_batch}, {"seq", o.seq},     {"step_ms", step * 1e3},
                          {"fwd_bwd_ms", fb * 1e3},   {"optimizer_ms", opt * 1e3}, {"tokens_per_s", tok_s},
                          {"mfu", mfu},               {"memory_used_bytes", used}, {"memory_before_bytes", base_used},
                          {"payload_bytes", up},      {"update_bytes", down}, {"loss", loss},
                          {"device", peer.device().info().description},
                          {"compress_ms", cm * 1e3}, {"encode_ms", en * 1e3}, {"merge_ms", me * 1e3},
                          {"apply_ms", ap * 1e3}, {"tokens_per_s_node", double(n) / (step - me)},
                          {"overlap", o.overlap}};
      std::ofstream(o.json) << j.dump(2) << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distro_gpu_train_bench: %s\n", e.what());
    return 1;
  }
}

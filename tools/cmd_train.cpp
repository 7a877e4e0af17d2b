// distro train: local multi-peer training of the built-in model (libdistro/train).
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.hpp"
#include "commands.hpp"
#include "core/error.hpp"
#include "backend/registry.hpp"
#include "train/trainer.hpp"

namespace distro::cli {

ValueMode parse_values(const std::string& s);

static const char* kHelp =
    "usage: distro train [options]\n"
    "  --data FILE          text file (byte tokens) or llm.c token shard (default data/kjv.txt)\n"
    "  --preset NAME        nano (default), micro, small or 1b\n"
    "  --peers N | LIST     number of peers on --device, or one device per peer: cpu,cpu,cuda:0 (default 4)\n"
    "  --device DEV         device of the N peers: auto (the best present: a GPU, else the CPU), cpu,\n"
    "                       cuda:0, ... (default auto)\n"
    "  --optimizer NAME     distro (default) or adamw (exact all-reduce of the gradients)\n"
    "  --steps N            total steps (default 200)\n"
    "  --batch B            sequences per peer per step (default 8)\n"
    "  --micro-batch M      sequences per forward/backward, a divisor of B (default B)\n"
    "  --seq T              sequence length (default 128)\n"
    "  --lr X               peak learning rate (default 3e-3 for nano and micro, 4e-4 larger)\n"
    "  --warmup N           warmup steps (default min(100, steps/10)); cosine decay after\n"
    "  --min-lr-ratio R     final lr as a fraction of the peak (default 0.1)\n"
    "  --weight-decay W     decoupled weight decay (default 0)\n"
    "  --clip C             gradient-norm clip, 0 = off (default 1)\n"
    "  --topk K --chunk S --decay B --values sign|int8   DisTrO settings (4, 64, 0.999, sign)\n"
    "  --overlap            apply each merged update one step late (compute overlaps transfer)\n"
    "  --seed N             seed of the initialisation and the batches (default 1)\n"
    "  --threads N          CPU threads per peer, 0 = all cores (default)\n"
    "  --eval-every N       validation every N steps, 0 = only at the end (default steps/10)\n"
    "  --eval-batches N     validation batches per evaluation (default 8)\n"
    "  --checkpoint DIR     write a checkpoint to DIR at the end (and every --checkpoint-every N)\n"
    "  --checkpoint-every N\n"
    "  --stop-after N       stop after N steps of this invocation (the schedule keeps --steps)\n"
    "  --resume DIR         continue the run saved in DIR with its own settings (--steps may change)\n"
    "  --json FILE          write every logged step and a final summary as JSON\n"
    "  --quiet              no progress output\n";

static std::vector<std::string> parse_peers(const std::string& s, const std::string& device) {
  if (!s.empty() && s.find_first_not_of("0123456789") == std::string::npos) {
    unsigned long n = s.size() > 3 ? 0 : std::stoul(s);
    if (n < 1 || n > 64) throw UsageError("distro train: --peers is " + s + "; expected 1..64 or a device list");
    return std::vector<std::string>(n, device == "auto" ? best_device_name() : device);
  }
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string d; std::getline(ss, d, ',');) {
    if (d.empty()) throw UsageError("distro train: --peers '" + s + "' has an empty entry; expected e.g. cpu,cpu,cuda:0");
    out.push_back(d);
  }
  if (out.empty()) throw UsageError("distro train: --peers is empty; expected a number or a device list");
  return out;
}

int cmd_train(const std::vector<std::string>& argv) {
  Args a("distro train", argv,
         {"data", "preset", "peers", "device", "optimizer", "steps", "batch", "micro-batch", "seq", "lr", "warmup",
          "min-lr-ratio", "weight-decay", "clip", "topk", "chunk", "decay", "values", "seed", "threads",
          "eval-every", "eval-batches", "checkpoint", "checkpoint-every", "stop-after", "resume", "json", "vocab"},
         {"help", "quiet", "overlap"});
  if (a.flag("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  std::unique_ptr<Trainer> tr;
  if (a.has("resume")) {
    for (const char* o : {"data", "preset", "peers", "device", "optimizer", "batch", "micro-batch", "seq", "lr", "warmup",
                          "min-lr-ratio", "weight-decay", "clip", "topk", "chunk", "decay", "values", "seed", "vocab"})
      if (a.has(o))
        throw UsageError(std::string("distro train: --") + o +
                         " cannot be combined with --resume; a resumed run keeps the settings it was saved with");
    if (a.flag("overlap"))
      throw UsageError("distro train: --overlap cannot be combined with --resume; a resumed run keeps the settings it was saved with");
    tr = Trainer::resume(a.str("resume", ""));
    if (a.has("steps")) tr->set_total_steps(a.u64("steps", 0, 1, uint64_t(1) << 40));
  } else {
    TrainConfig c;
    c.data = a.str("data", "data/kjv.txt");
    c.preset = a.str("preset", c.preset);
    c.vocab = int(a.u64("vocab", 0, 0, 1 << 20));
    if (a.has("device") && a.has("peers") && a.str("peers", "").find_first_not_of("0123456789") != std::string::npos)
      throw UsageError("distro train: --device goes with --peers N; a device list names each peer's device already");
    c.devices = parse_peers(a.str("peers", "4"), a.str("device", "auto"));
    c.optimizer = a.str("optimizer", c.optimizer);
    if (c.optimizer != "distro" && c.optimizer != "adamw")
      throw UsageError("distro train: --optimizer is '" + c.optimizer + "'; expected distro or adamw");
    c.steps = a.u64("steps", 200, 1, uint64_t(1) << 40);
    c.batch = int(a.u64("batch", 8, 1, 65536));
    c.micro_batch = int(a.u64("micro-batch", 0, 0, 65536));
    c.seq = int(a.u64("seq", 128, 1, 1 << 20));
    c.lr = float(a.real("lr", 0.0, 0.0, 10.0));
    c.warmup = a.u64("warmup", 0, 0, uint64_t(1) << 40);
    c.min_lr_ratio = float(a.real("min-lr-ratio", 0.1, 0.0, 1.0));
    c.weight_decay = float(a.real("weight-decay", 0.0, 0.0, 9.99));
    c.clip = float(a.real("clip", 1.0, 0.0, 1e9));
    c.topk = uint32_t(a.u64("topk", 4, 1, 65535));
    c.chunk = uint32_t(a.u64("chunk", 64, 1, 256));
    c.decay = float(a.real("decay", 0.999, 0.0, 0.999999));
    c.values = parse_values(a.str("values", "sign"));
    c.overlap = a.flag("overlap");
    c.seed = a.u64("seed", 1, 0, UINT64_MAX);
    c.threads = unsigned(a.u64("threads", 0, 0, 4096));
    c.eval_batches = a.u64("eval-batches", 8, 1, 1000000);
    tr = std::make_unique<Trainer>(c);
  }
  const TrainConfig& c = tr->config();
  const uint64_t eval_every = a.u64("eval-every", std::max<uint64_t>(1, c.steps / 10), 0, uint64_t(1) << 40);
  const uint64_t ckpt_every = a.u64("checkpoint-every", 0, 0, uint64_t(1) << 40);
  const uint64_t stop_after = a.u64("stop-after", 0, 0, uint64_t(1) << 40);
  const std::string ckpt = a.has("checkpoint") ? a.str("checkpoint", "") : a.str("resume", "");
  const bool quiet = a.flag("quiet"), tty = isatty(fileno(stdout)) != 0;
  const size_t N = c.devices.size();

  std::string devices;
  for (const auto& d : c.devices) devices += (devices.empty() ? "" : ",") + d;
  if (!quiet)
    std::printf("distro train: %s model, %llu parameters, %zu peers (%s), %s optimizer, %llu steps of %d x %d tokens per peer\n",
                c.preset.c_str(), (unsigned long long)tr->params(), N, devices.c_str(), c.optimizer.c_str(),
                (unsigned long long)c.steps, c.batch, c.seq);
  nlohmann::json log = nlohmann::json::array();
  std::vector<double> recent;
  StepStats last;
  uint64_t tokens = 0, up = 0, down = 0, ran = 0;
  double val = NAN, seconds = 0;
  while (tr->steps_done() < c.steps && (stop_after == 0 || ran < stop_after)) {
    last = tr->step();
    ++ran;
    tokens += last.tokens;
    up += last.bytes_up_per_peer;
    down += last.bytes_down_per_peer;
    seconds += last.seconds;
    recent.push_back(last.train_loss);
    if (recent.size() > 10) recent.erase(recent.begin());
    bool eval_now = last.step == c.steps || (eval_every > 0 && last.step % eval_every == 0);
    nlohmann::json row = {{"step", last.step},
                          {"lr", last.lr},
                          {"train_loss", last.train_loss},
                          {"grad_norm", last.grad_norm},
                          {"tokens", tokens},
                          {"tokens_per_s", double(last.tokens) / last.seconds},
                          {"bytes_up_per_peer", last.bytes_up_per_peer},
                          {"bytes_down_per_peer", last.bytes_down_per_peer},
                          {"seconds", last.seconds},
                          {"hashes", last.hashes}};
    if (eval_now) {
      val = tr->evaluate();
      row["val_loss"] = val;
    }
    log.push_back(row);
    if (!quiet) {
      char line[320];
      // The replicas' common hash (the trainer stops with an error if any peer's differs).
      std::snprintf(line, sizeof line,
                    "step %llu/%llu  loss %.4f%s  lr %.2e  %.0f tok/s  up %llu B  down %llu B  hash %016llx x%zu",
                    (unsigned long long)last.step, (unsigned long long)c.steps, last.train_loss,
                    eval_now ? (" val " + std::to_string(val).substr(0, 6)).c_str() : "", last.lr,
                    double(last.tokens) / last.seconds, (unsigned long long)last.bytes_up_per_peer,
                    (unsigned long long)last.bytes_down_per_peer, (unsigned long long)last.hashes[0], last.hashes.size());
      if (tty) {
        int width = 24, filled = int(double(width) * double(last.step) / double(c.steps));
        std::printf("\r[%s%s] %s\033[K", std::string(filled, '#').c_str(), std::string(width - filled, ' ').c_str(), line);
        if (eval_now) std::printf("\n");
        std::fflush(stdout);
      } else if (eval_now || last.step % std::max<uint64_t>(1, c.steps / 50) == 0) {
        std::printf("%s\n", line);
      }
    }
    if (!ckpt.empty() && ckpt_every > 0 && last.step % ckpt_every == 0) tr->save(ckpt);
  }
  if (!ckpt.empty()) tr->save(ckpt);
  if (ran == 0) {
    std::printf("distro train: the run is already complete at step %llu\n", (unsigned long long)tr->steps_done());
    return 0;
  }
  if (std::isnan(val)) val = tr->evaluate();
  double mean_recent = 0;
  for (double l : recent) mean_recent += l;
  mean_recent /= double(recent.size());
  const uint64_t allreduce = tr->allreduce_bytes_per_peer();
  const double up_step = double(up) / double(ran), down_step = double(down) / double(ran);
  const double reduction = up_step + down_step > 0 ? double(allreduce) / (up_step + down_step) : 0.0;
  nlohmann::json summary = {{"final_train_loss", mean_recent},
                            {"final_val_loss", val},
                            {"tokens", tokens},
                            {"steps", tr->steps_done()},
                            {"peers", N},
                            {"devices", c.devices},
                            {"params", tr->params()},
                            {"optimizer", c.optimizer},
                            {"preset", c.preset},
                            {"seconds", seconds},
                            {"bytes_up_per_peer_step", up_step},
                            {"bytes_down_per_peer_step", down_step},
                            {"allreduce_bytes_per_peer_step", allreduce},
                            {"reduction", reduction},
                            {"replica_hashes", last.hashes}};
  if (!quiet) {
    std::printf("\ndone: train loss %.4f (mean of the last %zu steps), validation loss %.4f, %.0f tokens/s\n", mean_recent,
                recent.size(), val, double(tokens) / seconds);
    std::printf("traffic per peer per step: up %.0f B, down %.0f B; a bf16 ring all-reduce moves %llu B: %.0fx %s\n",
                up_step, down_step, (unsigned long long)allreduce, reduction,
                c.optimizer == "distro" ? "less" : "(this is the all-reduce baseline)");
    std::printf("replicas agree: all %zu hashes equal %016llx\n", N, (unsigned long long)last.hashes[0]);
  }
  if (a.has("json")) {
    std::ofstream f(a.str("json", ""));
    f << nlohmann::json{{"steps", log}, {"summary", summary}}.dump(1) << "\n";
    if (!f) throw Error(Code::io, "cannot write " + a.str("json", ""));
  }
  return 0;
}

}  // namespace distro::cli

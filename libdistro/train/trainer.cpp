#include "train/trainer.hpp"

#include <chrono>
#include <cmath>
#include <cstring>

#include "backend/registry.hpp"
#include "data/dataset.hpp"
#include "data/sampler.hpp"
#include "optim/hash_mix.hpp"
#include "optim/merger.hpp"
#include "train/checkpoint.hpp"
#include "train/replica.hpp"
#include "train/schedule.hpp"
#include "wire/codec.hpp"

namespace distro {

float default_lr(const std::string& optimizer, const std::string& preset) {
  // Tuned on nano (docs/benchmarks.md, section 3) for both optimizers; the large presets take the
  // 4e-4 of the DisTrO report's and DeMo's 1B runs.
  (void)optimizer;
  return preset == "nano" || preset == "micro" ? 3e-3f : 4e-4f;
}

void validate(const TrainConfig& c) {
  auto bad = [](const std::string& what) { fail(Code::invalid_argument, what); };
  if (c.devices.empty() || c.devices.size() > 64)
    bad("peers: " + std::to_string(c.devices.size()) + " given; expected 1..64");
  if (c.optimizer != "distro" && c.optimizer != "adamw")
    bad("optimizer '" + c.optimizer + "' is unknown; expected distro or adamw");
  if (c.data.empty()) bad("no training data given; expected a text file or a token shard");
  if (c.vocab < 0 || c.vocab > (1 << 20)) bad("vocab is " + std::to_string(c.vocab) + "; expected 0 (the data's) up to 2^20");
  if (c.threads > 4096) bad("threads is " + std::to_string(c.threads) + "; expected 0 (one per core) up to 4096");
  if (c.eval_batches < 1) bad("eval_batches is 0; expected at least 1");
  if (c.steps < 1 || c.steps > (uint64_t(1) << 40)) bad("steps is " + std::to_string(c.steps) + "; expected 1..2^40");
  if (c.batch < 1 || c.batch > 65536) bad("batch is " + std::to_string(c.batch) + "; expected 1..65536");
  if (c.micro_batch < 0 || c.micro_batch > c.batch || (c.micro_batch > 0 && c.batch % c.micro_batch != 0))
    bad("micro-batch is " + std::to_string(c.micro_batch) + "; expected 0 (whole batch) or a divisor of the batch " +
        std::to_string(c.batch));
  if (c.seq < 1) bad("seq (sequence length) is " + std::to_string(c.seq) + "; expected at least 1");
  if (!std::isfinite(c.lr) || c.lr < 0.0f || c.lr > 10.0f) bad("lr is " + std::to_string(c.lr) + "; expected 0..10");
  if (!(c.min_lr_ratio >= 0.0f && c.min_lr_ratio <= 1.0f)) bad("min lr ratio must be in [0, 1]");
  if (!(c.weight_decay >= 0.0f && c.weight_decay < 10.0f)) bad("weight decay must be in [0, 10)");
  if (!(c.clip >= 0.0f) || !std::isfinite(c.clip)) bad("clip must be a finite value >= 0 (0 = off)");
  if (!(c.decay >= 0.0f && c.decay < 1.0f)) bad("decay is " + std::to_string(c.decay) + "; expected [0, 1)");
  if (c.topk < 1 || c.topk > 65535) bad("topk must be 1..65535");
  if (c.chunk < 1 || c.chunk > kMaxChunk) bad("chunk must be 1.." + std::to_string(kMaxChunk));
  if (!(c.beta1 >= 0.0f && c.beta1 < 1.0f && c.beta2 >= 0.0f && c.beta2 < 1.0f)) bad("AdamW betas must be in [0, 1)");
  if (!(c.val_fraction >= 0.0 && c.val_fraction < 1.0)) bad("validation fraction must be in [0, 1)");
  if (c.overlap && c.optimizer != "distro") bad("overlap needs the distro optimizer; AdamW's all-reduce has no update to delay");
}

struct Trainer::Impl {
  TrainConfig cfg;
  LlamaConfig model_cfg;
  std::unique_ptr<Dataset> data;
  std::unique_ptr<Sampler> sampler;
  std::vector<std::unique_ptr<Replica>> peers;
  uint64_t done = 0;
  uint64_t run_id = 0;
  std::vector<int32_t> tokens, targets;
  std::vector<float> host_a, host_b;
  std::vector<uint8_t> pending;  // overlap: the previous step's encoded merged update, not yet applied

  void build(const TrainConfig& c) {
    validate(c);
    cfg = c;
    data = std::make_unique<Dataset>(load_dataset(c.data, c.val_fraction));
    model_cfg = llama_preset(c.preset, c.vocab > 0 ? c.vocab : int(data->vocab()));
    if (model_cfg.vocab < int(data->vocab()))
      fail(Code::invalid_argument, "vocab " + std::to_string(model_cfg.vocab) + " is smaller than the data's " +
                                       std::to_string(data->vocab()));
    if (c.seq > model_cfg.max_seq)
      fail(Code::invalid_argument, "sequence length " + std::to_string(c.seq) + " exceeds the " + c.preset +
                                       " model's maximum of " + std::to_string(model_cfg.max_seq));
    sampler = std::make_unique<Sampler>(*data, c.seed, c.seq);
    run_id = mix64(c.seed ^ 0xD15780ull);
    for (size_t p = 0; p < c.devices.size(); ++p)
      peers.push_back(std::make_unique<Replica>(c, model_cfg, uint32_t(p), run_id, c.devices[p]));
  }

  uint64_t warmup() const { return cfg.warmup ? cfg.warmup : std::min<uint64_t>(100, cfg.steps / 10); }
  float peak_lr() const { return cfg.lr > 0.0f ? cfg.lr : default_lr(cfg.optimizer, cfg.preset); }

  // Peer p's batch for this step and its gradient (micro-batched, unclipped); returns the loss.
  double compute_grad(size_t p, uint64_t step) {
    const int B = cfg.batch, T = cfg.seq;
    tokens.resize(size_t(B) * T);
    targets.resize(size_t(B) * T);
    sampler->train_batch(step, uint32_t(p), uint32_t(peers.size()), B, tokens.data(), targets.data());
    return peers[p]->compute_grad(tokens.data(), targets.data());
  }

  StepStats step() {
    if (done >= cfg.steps)
      fail(Code::state, "the run is complete (" + std::to_string(cfg.steps) + " steps); raise the step count to go on");
    auto t0 = std::chrono::steady_clock::now();
    StepStats s;
    s.step = ++done;
    s.lr = scheduled_lr(s.step, cfg.steps, warmup(), peak_lr(), cfg.min_lr_ratio);
    const size_t N = peers.size();
    const uint64_t P = peers[0]->model().num_params();
    double loss = 0.0;
    if (cfg.optimizer == "distro") {
      Merger merger(peers[0]->optimizer().manifest(), run_id, s.step);
      for (size_t p = 0; p < N; ++p) {
        loss += compute_grad(p, s.step);
        double norm = peers[p]->grad_norm();
        if (p == 0) s.grad_norm = norm;
        peers[p]->clip(norm);
        std::vector<uint8_t> payload = peers[p]->compress(s.step, s.lr);
        s.bytes_up_per_peer += payload.size();
        merger.add(payload);
      }
      s.bytes_up_per_peer /= N;
      // Overlap: the gradients above saw the parameters without the previous step's update; it
      // lands now, before this step's update is merged against the resulting hash.
      if (!pending.empty()) {
        for (auto& peer : peers) peer->apply(pending);
        pending.clear();
      }
      std::vector<uint8_t> update =
          encode_update(peers[0]->optimizer().manifest(), merger.finish(s.lr, cfg.weight_decay, peers[0]->hash()));
      s.bytes_down_per_peer = update.size();
      if (cfg.overlap && s.step < cfg.steps)
        pending = std::move(update);
      else
        for (auto& peer : peers) peer->apply(update);
    } else {
      // Exact all-reduce: the mean of every peer's gradient, summed in peer order, given to all.
      for (size_t p = 0; p < N; ++p) loss += compute_grad(p, s.step);
      const auto& ts0 = peers[0]->model().tensors();
      for (size_t t = 0; t < ts0.size(); ++t) {
        uint64_t n = ts0[t].numel;
        host_b.assign(n, 0.0f);
        for (size_t p = 0; p < N; ++p) {
          host_a.resize(n);
          peers[p]->device().download(host_a.data(), peers[p]->model().tensors()[t].grad, n * 4);
          for (uint64_t i = 0; i < n; ++i) host_b[i] += host_a[i];
        }
        for (uint64_t i = 0; i < n; ++i) host_b[i] /= float(N);
        for (size_t p = 0; p < N; ++p)
          peers[p]->device().upload(peers[p]->model().tensors()[t].grad, host_b.data(), n * 4);
      }
      s.grad_norm = peers[0]->grad_norm();
      for (size_t p = 0; p < N; ++p) {
        peers[p]->clip(s.grad_norm);
        peers[p]->adamw_step(s.lr, s.step);
      }
      uint64_t ring = N > 1 ? uint64_t(double(2 * (N - 1)) / double(N) * 2.0 * double(P) / 2.0) : 0;
      s.bytes_up_per_peer = ring;
      s.bytes_down_per_peer = ring;
    }
    s.train_loss = loss / double(N);
    s.tokens = uint64_t(cfg.batch) * uint64_t(cfg.seq) * N;
    for (size_t p = 0; p < N; ++p) s.hashes.push_back(peers[p]->hash());
    for (size_t p = 1; p < N; ++p)
      if (s.hashes[p] != s.hashes[0])
        fail(Code::internal, "replicas differ after step " + std::to_string(s.step) + ": peer 0 (" + cfg.devices[0] +
                                 ") has hash " + std::to_string(s.hashes[0]) + ", peer " + std::to_string(p) + " (" +
                                 cfg.devices[p] + ") has " + std::to_string(s.hashes[p]) + "; this is a bug in libdistro");
    s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return s;
  }
};

Trainer::Trainer(const TrainConfig& c) : impl_(std::make_unique<Impl>()) { impl_->build(c); }
Trainer::~Trainer() = default;

StepStats Trainer::step() { return impl_->step(); }

double Trainer::evaluate() {
  Impl& I = *impl_;
  const int B = I.cfg.batch, T = I.cfg.seq;
  uint64_t n = std::min<uint64_t>(I.cfg.eval_batches, I.sampler->val_batches(B));
  if (n == 0) fail(Code::state, "no validation data: the validation fraction is 0 or the part is too short");
  I.tokens.resize(size_t(B) * T);
  I.targets.resize(size_t(B) * T);
  double sum = 0.0;
  for (uint64_t i = 0; i < n; ++i) {
    I.sampler->val_batch(i, B, I.tokens.data(), I.targets.data());
    sum += I.peers[0]->model().loss(I.tokens.data(), I.targets.data(), B, T);
  }
  return sum / double(n);
}

const TrainConfig& Trainer::config() const { return impl_->cfg; }
uint64_t Trainer::steps_done() const { return impl_->done; }
uint64_t Trainer::params() const { return impl_->peers[0]->model().num_params(); }
LlamaModel& Trainer::model(size_t peer) { return impl_->peers.at(peer)->model(); }

uint64_t Trainer::allreduce_bytes_per_peer() const {
  double n = double(impl_->peers.size());
  return n > 1 ? uint64_t(2.0 * (n - 1.0) / n * 2.0 * double(params())) : 0;
}

std::vector<uint64_t> Trainer::replica_hashes() const {
  std::vector<uint64_t> h;
  for (auto& peer : impl_->peers) h.push_back(peer->hash());
  return h;
}

void Trainer::set_total_steps(uint64_t steps) {
  if (steps < 1 || steps > (uint64_t(1) << 40))
    fail(Code::invalid_argument, "steps is " + std::to_string(steps) + "; expected 1..2^40");
  if (steps < impl_->done)
    fail(Code::invalid_argument, "steps " + std::to_string(steps) + " is below the " + std::to_string(impl_->done) +
                                     " steps already done");
  impl_->cfg.steps = steps;
  if (steps == impl_->done && !impl_->pending.empty()) {  // the run ends here: land the delayed update
    for (auto& peer : impl_->peers) peer->apply(impl_->pending);
    impl_->pending.clear();
  }
}

void Trainer::save(const std::string& dir) const {
  const Impl& I = *impl_;
  CheckpointWriter w;
  w.config = I.cfg;
  w.step = I.done;
  w.pending_update = I.pending;
  // Per peer, per tensor: the parameters, then the optimizer state (momentum, or m and v).
  for (const auto& peer : I.peers)
    for (size_t t = 0; t < peer->tensor_count(); ++t) {
      w.add_block(peer->params(t));
      for (auto& block : peer->state(t)) w.add_block(block);
    }
  w.write(dir);
}

std::unique_ptr<Trainer> Trainer::resume(const std::string& dir) {
  CheckpointReader r(dir);
  std::unique_ptr<Trainer> tr(new Trainer());
  tr->impl_ = std::make_unique<Impl>();
  Impl& I = *tr->impl_;
  I.build(r.config());
  I.done = r.step();
  for (auto& peer : I.peers) {
    const auto& ts = peer->model().tensors();
    for (size_t t = 0; t < ts.size(); ++t) {
      peer->set_params(t, r.next_block(ts[t].numel, ts[t].name + " parameters"));
      if (peer->distro()) {
        peer->set_state(t, {r.next_block(ts[t].numel, ts[t].name + " momentum")});
      } else {
        auto m = r.next_block(ts[t].numel, ts[t].name + " first moment");
        auto v = r.next_block(ts[t].numel, ts[t].name + " second moment");
        peer->set_state(t, {std::move(m), std::move(v)});
      }
    }
  }
  I.pending = r.pending_update();
  r.finish();
  return tr;
}

}  // namespace distro

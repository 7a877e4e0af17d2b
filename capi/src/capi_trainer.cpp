// The trainer handle over distro::Trainer.
#include <memory>

#include "guard.hpp"
#include "handles.hpp"
#include "train/trainer.hpp"

struct distro_trainer {
  std::unique_ptr<distro::Trainer> impl;
};

using namespace distro;
using namespace distro::capi;

namespace {

distro_trainer* track(std::unique_ptr<Trainer> t) {
  auto h = std::make_unique<distro_trainer>();
  h->impl = std::move(t);
  live_handles().add(h.get());
  return h.release();
}

Trainer& impl(const distro_trainer* t) { return *check_handle(const_cast<distro_trainer*>(t), "trainer")->impl; }

}  // namespace

extern "C" {

DISTRO_API int distro_trainer_create(distro_trainer** out, const distro_trainer_options* options) {
  return guard([&] {
    need(out, "out");
    need(options, "options");
    need_size(options->struct_size, sizeof(distro_trainer_options), "distro_trainer_options");
    const distro_trainer_options& o = *options;
    need(o.data, "options.data");
    TrainConfig c;
    c.preset = o.preset ? o.preset : "nano";
    c.vocab = o.vocab;
    c.data = o.data;
    if (o.devices) {
      // Split on every comma, keeping empty entries so that "cpu," is an error, not one peer.
      c.devices.clear();
      std::string list = o.devices;
      for (size_t at = 0;;) {
        size_t comma = list.find(',', at);
        std::string d = list.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
        if (d.empty())
          fail(Code::invalid_argument, "devices '" + list + "' has an empty entry; expected names like cpu,cpu,cuda:0");
        c.devices.push_back(d);
        if (comma == std::string::npos) break;
        at = comma + 1;
      }
    } else {
      if (o.peers < 1 || o.peers > 64)
        fail(Code::invalid_argument, "peers is " + std::to_string(o.peers) + "; expected 1..64");
      c.devices.assign(o.peers, "cpu");
    }
    if (o.optimizer != DISTRO_OPTIMIZER_DISTRO && o.optimizer != DISTRO_OPTIMIZER_ADAMW)
      fail(Code::invalid_argument, "optimizer is " + std::to_string(o.optimizer) +
                                       "; expected DISTRO_OPTIMIZER_DISTRO (1) or DISTRO_OPTIMIZER_ADAMW (2)");
    c.optimizer = o.optimizer == DISTRO_OPTIMIZER_DISTRO ? "distro" : "adamw";
    if (o.batch > 65536 || o.micro_batch > 65536 || o.seq > (1u << 20))
      fail(Code::invalid_argument, "batch, micro_batch or seq is out of range");
    c.steps = o.steps;
    c.batch = int(o.batch);
    c.micro_batch = int(o.micro_batch);
    c.seq = int(o.seq);
    c.lr = o.lr;
    c.warmup = o.warmup;
    c.min_lr_ratio = o.min_lr_ratio;
    c.weight_decay = o.weight_decay;
    c.clip = o.clip;
    c.chunk = o.chunk;
    c.topk = o.topk;
    c.decay = o.decay;
    if (o.value_mode != DISTRO_VALUES_SIGN && o.value_mode != DISTRO_VALUES_INT8)
      fail(Code::invalid_argument, "value_mode is " + std::to_string(o.value_mode) + "; expected 1 (sign) or 2 (int8)");
    c.values = ValueMode(o.value_mode);
    c.seed = o.seed;
    c.threads = o.threads;
    c.eval_batches = o.eval_batches;
    if (c.eval_batches < 1) fail(Code::invalid_argument, "eval_batches is 0; expected at least 1");
    *out = track(std::make_unique<Trainer>(c));
  });
}

DISTRO_API int distro_trainer_resume(distro_trainer** out, const char* dir) {
  return guard([&] {
    need(out, "out");
    need(dir, "dir");
    *out = track(Trainer::resume(dir));
  });
}

DISTRO_API int distro_trainer_destroy(distro_trainer* trainer) {
  return guard([&] {
    if (!trainer) return;
    check_handle(trainer, "trainer");
    live_handles().remove(trainer);
    delete trainer;
  });
}

DISTRO_API int distro_trainer_step(distro_step_stats* out, distro_trainer* trainer) {
  return guard([&] {
    Trainer& t = impl(trainer);
    if (out) need_size(out->struct_size, sizeof(distro_step_stats), "distro_step_stats");
    StepStats s = t.step();
    if (!out) return;
    distro_step_stats r = DISTRO_STEP_STATS_INIT;
    r.struct_size = out->struct_size;
    r.step = s.step;
    r.lr = s.lr;
    r.train_loss = s.train_loss;
    r.grad_norm = s.grad_norm;
    r.tokens = s.tokens;
    r.bytes_up_per_peer = s.bytes_up_per_peer;
    r.bytes_down_per_peer = s.bytes_down_per_peer;
    r.seconds = s.seconds;
    r.replica_hash = s.hashes.empty() ? 0 : s.hashes[0];
    *out = r;
  });
}

DISTRO_API int distro_trainer_evaluate(double* out_loss, distro_trainer* trainer) {
  return guard([&] {
    need(out_loss, "out_loss");
    *out_loss = impl(trainer).evaluate();
  });
}

DISTRO_API int distro_trainer_save(distro_trainer* trainer, const char* dir) {
  return guard([&] {
    Trainer& t = impl(trainer);
    need(dir, "dir");
    t.save(dir);
  });
}

DISTRO_API int distro_trainer_get_info(distro_trainer_info* out, const distro_trainer* trainer) {
  return guard([&] {
    need(out, "out");
    Trainer& t = impl(trainer);
    need_size(out->struct_size, sizeof(distro_trainer_info), "distro_trainer_info");
    distro_trainer_info r = DISTRO_TRAINER_INFO_INIT;
    r.struct_size = out->struct_size;
    r.params = t.params();
    r.peers = uint32_t(t.config().devices.size());
    r.steps_done = t.steps_done();
    r.steps_total = t.config().steps;
    r.allreduce_bytes_per_peer = t.allreduce_bytes_per_peer();
    *out = r;
  });
}

DISTRO_API int distro_trainer_set_total_steps(distro_trainer* trainer, uint64_t steps) {
  return guard([&] { impl(trainer).set_total_steps(steps); });
}

}  // extern "C"

// The optimizer and merger handles over distro::Optimizer and distro::Merger.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "guard.hpp"
#include "handles.hpp"
#include "optim/merger.hpp"
#include "optim/optimizer.hpp"
#include "wire/codec.hpp"

struct distro_optimizer {
  std::unique_ptr<distro::Optimizer> impl;
  distro_optimizer_stats stats = DISTRO_OPTIMIZER_STATS_INIT;
};

struct distro_merger {
  std::unique_ptr<distro::Merger> impl;
};

using namespace distro;
using namespace distro::capi;

namespace {

// Copies bytes into malloc'd memory the caller frees with distro_free.
void hand_out(const std::vector<uint8_t>& bytes, uint8_t** out, size_t* out_size) {
  auto* p = static_cast<uint8_t*>(std::malloc(bytes.empty() ? 1 : bytes.size()));
  if (!p) throw std::bad_alloc();
  if (!bytes.empty()) std::memcpy(p, bytes.data(), bytes.size());
  *out = p;
  *out_size = bytes.size();
}

Optimizer& impl(distro_optimizer* o) { return *check_handle(o, "optimizer")->impl; }
Merger& impl(distro_merger* m) { return *check_handle(m, "merger")->impl; }

}  // namespace

extern "C" {

DISTRO_API int distro_optimizer_create(distro_optimizer** out, const distro_optimizer_options* options) {
  return guard([&] {
    need(out, "out");
    distro_optimizer_options o = DISTRO_OPTIMIZER_OPTIONS_INIT;
    if (options) {
      need_size(options->struct_size, sizeof(distro_optimizer_options), "distro_optimizer_options");
      o = *options;
    }
    OptimizerOptions opt;
    opt.run_id = o.run_id;
    opt.peer_id = o.peer_id;
    opt.chunk = o.chunk;
    opt.topk = o.topk;
    opt.decay = o.decay;
    if (o.value_mode != DISTRO_VALUES_SIGN && o.value_mode != DISTRO_VALUES_INT8)
      fail(Code::invalid_argument, "value_mode is " + std::to_string(o.value_mode) +
                                       "; expected DISTRO_VALUES_SIGN (1) or DISTRO_VALUES_INT8 (2)");
    opt.values = ValueMode(o.value_mode);
    opt.device = o.device ? o.device : "cpu";
    opt.threads = o.threads;
    auto h = std::make_unique<distro_optimizer>();
    h->impl = std::make_unique<Optimizer>(opt);
    live_handles().add(h.get());
    *out = h.release();
  });
}

DISTRO_API int distro_optimizer_destroy(distro_optimizer* optimizer) {
  return guard([&] {
    if (!optimizer) return;
    check_handle(optimizer, "optimizer");
    live_handles().remove(optimizer);
    delete optimizer;
  });
}

DISTRO_API int distro_optimizer_add_tensor(distro_optimizer* optimizer, const char* name, const int64_t* shape,
                                           size_t rank, float* params, const float* grad) {
  return guard([&] {
    Optimizer& o = impl(optimizer);
    need(name, "name");
    need(shape, "shape");
    need(params, "params");
    need(grad, "grad");
    if (rank == 0 || rank > kMaxRank)
      fail(Code::size, "rank is " + std::to_string(rank) + "; expected 1.." + std::to_string(kMaxRank));
    size_t len = strnlen(name, kMaxTensorName + 1);
    o.add_tensor(std::string(name, len), std::vector<int64_t>(shape, shape + rank), params, grad);
  });
}

DISTRO_API int distro_optimizer_compress(uint8_t** out_payload, size_t* out_size, distro_optimizer* optimizer,
                                         uint64_t step, float lr) {
  return guard([&] {
    need(out_payload, "out_payload");
    need(out_size, "out_size");
    Optimizer& o = impl(optimizer);
    PeerPayload p = o.compress(step, lr);
    std::vector<uint8_t> bytes = encode_payload(o.manifest(), p);
    hand_out(bytes, out_payload, out_size);
    auto& s = optimizer->stats;
    s.coefficients_sent = p.index.size();
    s.payload_bytes = bytes.size();
    s.payload_bits_per_param = 8.0 * double(bytes.size()) / double(o.manifest().total_params);
  });
}

DISTRO_API int distro_optimizer_apply(uint64_t* out_hash, distro_optimizer* optimizer, const uint8_t* update,
                                      size_t size) {
  return guard([&] {
    Optimizer& o = impl(optimizer);
    need(update, "update");
    o.freeze();
    MergedUpdate u = decode_update(o.manifest(), {update, size});
    if (u.run_id != o.options().run_id)
      fail(Code::mismatch, "update is for run " + std::to_string(u.run_id) + "; this optimizer is in run " +
                               std::to_string(o.options().run_id));
    if (u.prev_hash != 0) {
      uint64_t have = o.param_hash();
      if (have != u.prev_hash) {
        char msg[200];
        std::snprintf(msg, sizeof msg,
                      "the parameters have hash %016llx but update %llu expects %016llx: this replica has drifted "
                      "and must resync from a checkpoint; nothing was applied",
                      (unsigned long long)have, (unsigned long long)u.step, (unsigned long long)u.prev_hash);
        fail(Code::mismatch, msg);
      }
    }
    o.apply(u);
    auto& s = optimizer->stats;
    s.update_bytes = size;
    s.update_bits_per_param = 8.0 * double(size) / double(o.manifest().total_params);
    if (out_hash) *out_hash = o.param_hash();
  });
}

DISTRO_API int distro_optimizer_param_hash(uint64_t* out_hash, distro_optimizer* optimizer) {
  return guard([&] {
    need(out_hash, "out_hash");
    *out_hash = impl(optimizer).param_hash();
  });
}

DISTRO_API int distro_optimizer_manifest_hash(uint64_t* out_hash, distro_optimizer* optimizer) {
  return guard([&] {
    need(out_hash, "out_hash");
    Optimizer& o = impl(optimizer);
    o.freeze();
    *out_hash = o.manifest().hash;
  });
}

DISTRO_API int distro_optimizer_get_stats(distro_optimizer_stats* out, const distro_optimizer* optimizer) {
  return guard([&] {
    need(out, "out");
    check_handle(optimizer, "optimizer");
    need_size(out->struct_size, sizeof(distro_optimizer_stats), "distro_optimizer_stats");
    distro_optimizer_stats s = optimizer->stats;
    s.struct_size = out->struct_size;
    const Optimizer& o = *optimizer->impl;
    if (o.frozen()) {
      s.params = o.manifest().total_params;
      s.chunks = o.manifest().total_chunks;
    }
    *out = s;
  });
}

DISTRO_API int distro_merger_create(distro_merger** out, distro_optimizer* optimizer, uint64_t step) {
  return guard([&] {
    need(out, "out");
    Optimizer& o = impl(optimizer);
    o.freeze();
    auto m = std::make_unique<distro_merger>();
    m->impl = std::make_unique<Merger>(o.manifest(), o.options().run_id, step);
    live_handles().add(m.get());
    *out = m.release();
  });
}

DISTRO_API int distro_merger_destroy(distro_merger* merger) {
  return guard([&] {
    if (!merger) return;
    check_handle(merger, "merger");
    live_handles().remove(merger);
    delete merger;
  });
}

DISTRO_API int distro_merger_add(distro_merger* merger, const uint8_t* payload, size_t size) {
  return guard([&] {
    Merger& m = impl(merger);
    need(payload, "payload");
    m.add(std::span<const uint8_t>(payload, size));
  });
}

DISTRO_API int distro_merger_count(size_t* out_count, const distro_merger* merger) {
  return guard([&] {
    need(out_count, "out_count");
    *out_count = impl(const_cast<distro_merger*>(merger)).count();
  });
}

DISTRO_API int distro_merger_finish(uint8_t** out_update, size_t* out_size, distro_merger* merger, float lr,
                                    float weight_decay, uint64_t prev_hash) {
  return guard([&] {
    need(out_update, "out_update");
    need(out_size, "out_size");
    Merger& m = impl(merger);
    MergedUpdate u = m.finish(lr, weight_decay, prev_hash);
    hand_out(encode_update(m.manifest(), u), out_update, out_size);
  });
}

}  // extern "C"

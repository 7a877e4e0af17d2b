#include "optim/optimizer.hpp"

#include <algorithm>
#include <cmath>

#include "backend/registry.hpp"
#include "optim/hash_mix.hpp"

namespace distro {

void validate(const OptimizerOptions& o) {
  if (o.chunk < 1 || o.chunk > kMaxChunk)
    fail(Code::invalid_argument, "chunk is " + std::to_string(o.chunk) + "; expected 1.." + std::to_string(kMaxChunk));
  if (o.topk < 1) fail(Code::invalid_argument, "topk is 0; expected at least 1");
  if (o.topk > 65535) fail(Code::invalid_argument, "topk is " + std::to_string(o.topk) + "; expected at most 65535");
  if (!(o.decay >= 0.0f && o.decay < 1.0f))
    fail(Code::invalid_argument, "decay is " + std::to_string(o.decay) + "; expected a value in [0, 1)");
  if (o.values != ValueMode::sign && o.values != ValueMode::int8)
    fail(Code::invalid_argument, "value mode is " + std::to_string(int(o.values)) + "; expected 1 (sign) or 2 (int8)");
  if (o.threads > 4096) fail(Code::invalid_argument, "threads is " + std::to_string(o.threads) + "; expected 0..4096");
}

Optimizer::Optimizer(const OptimizerOptions& options) : opt_(options) {
  validate(opt_);
  owned_ = open_device(opt_.device, opt_.threads);
  dev_ = owned_.get();
  resident_ = dev_->info().kind == DeviceKind::cpu;
  check_device();
}

Optimizer::Optimizer(const OptimizerOptions& options, Device& device) : opt_(options) {
  validate(opt_);
  dev_ = &device;
  opt_.device = device.info().name;
  resident_ = true;
  check_device();
}

void Optimizer::check_device() {
  if (!(dev_->info().flags & kDeviceOptimizer))
    fail(Code::unsupported, "device '" + dev_->info().name + "' cannot run the DisTrO optimizer yet");
}

Optimizer::~Optimizer() = default;

void Optimizer::add_tensor(const std::string& name, const std::vector<int64_t>& shape, float* params,
                           const float* grad) {
  if (frozen_)
    fail(Code::state, "tensor '" + name + "' added after the first step; register every tensor before compressing or applying");
  if (!params || !grad) fail(Code::invalid_argument, "tensor '" + name + "' needs both a parameter and a gradient buffer");
  specs_.push_back({name, shape});
  // Validate now so the caller learns which tensor is wrong at the call that added it.
  try {
    make_manifest(specs_, opt_.chunk, opt_.topk, opt_.values);
  } catch (...) {
    specs_.pop_back();
    throw;
  }
  slots_.push_back(Slot{params, grad, {}, {}, {}});
}

void Optimizer::freeze() {
  if (frozen_) return;
  manifest_ = make_manifest(specs_, opt_.chunk, opt_.topk, opt_.values);
  for (size_t t = 0; t < slots_.size(); ++t) {
    size_t bytes = manifest_.tensors[t].numel * sizeof(float);
    slots_[t].delta = dev_->alloc(bytes);
    dev_->zero(slots_[t].delta.data(), bytes);
  }
  frozen_ = true;
}

const Manifest& Optimizer::manifest() const {
  if (!frozen_) fail(Code::state, "the tensor list is not frozen yet");
  return manifest_;
}

const float* Optimizer::grad_on_device(Slot& s, const TensorPlan& p) {
  if (resident_) return s.grad;
  size_t bytes = p.numel * sizeof(float);
  if (!s.grad_dev.data()) s.grad_dev = dev_->alloc(bytes);
  dev_->upload(s.grad_dev.data(), s.grad, bytes);
  return s.grad_dev.as<float>();
}

float* Optimizer::params_on_device(Slot& s, const TensorPlan& p, bool upload) {
  if (resident_) return s.params;
  size_t bytes = p.numel * sizeof(float);
  if (!s.params_dev.data()) s.params_dev = dev_->alloc(bytes);
  if (upload) dev_->upload(s.params_dev.data(), s.params, bytes);
  return s.params_dev.as<float>();
}

PeerPayload Optimizer::compress(uint64_t step, float lr, double grad_norm) {
  if (!std::isfinite(lr) || lr < 0.0f)
    fail(Code::invalid_argument, "learning rate is " + std::to_string(lr) + "; expected a finite value >= 0");
  freeze();
  const size_t T = slots_.size();
  std::vector<const float*> grads(T), deltas(T);
  std::vector<uint64_t> numel(T), bad(T, UINT64_MAX);
  for (size_t t = 0; t < T; ++t) {
    grads[t] = grad_on_device(slots_[t], manifest_.tensors[t]);
    deltas[t] = slots_[t].delta.as<float>();
    numel[t] = manifest_.tensors[t].numel;
  }
  // Whether every next momentum beta * delta + lr * g is provably finite: |lr g| <= lr ||g|| and
  // |beta delta| <= bound, far below float32's 3.4e38 (the slack covers the feedback's rounding,
  // about 1e-5 of the norm). Unknown bound with a known norm: measure the momentum once.
  constexpr double kSlack = 1e-3, kSafe = 1e30;
  const bool norm_known = std::isfinite(grad_norm) && grad_norm >= 0.0;
  if (norm_known && !std::isfinite(momentum_bound_)) {
    std::vector<double> sums(T);
    dev_->sum_squares_many(deltas.data(), numel.data(), T, sums.data());
    double ss = 0.0;
    for (double x : sums) ss += x;
    momentum_bound_ = std::sqrt(ss);
  }
  const double next_bound = (double(opt_.decay) * momentum_bound_ + double(lr) * grad_norm) * (1.0 + kSlack);
  const bool proven = norm_known && next_bound < kSafe;
  // Otherwise check every gradient first, so a bad one leaves all momentum untouched.
  if (!proven)
    dev_->first_nonfinite_momentum_many(deltas.data(), grads.data(), numel.data(), opt_.decay, lr, T, bad.data());
  for (size_t t = 0; t < T; ++t) {
    if (bad[t] == UINT64_MAX) continue;
    const TensorPlan& p = manifest_.tensors[t];
    float g = 0.0f;
    dev_->download(&g, grads[t] + bad[t], sizeof g);
    fail(Code::numeric, "tensor '" + p.name + "' element " + std::to_string(bad[t]) + ": " +
                            (std::isfinite(g) ? "gradient " + std::to_string(g) + " times learning rate " +
                                                    std::to_string(lr) + " overflows the momentum"
                                              : std::string("gradient is ") + (std::isnan(g) ? "NaN" : "infinite")) +
                            "; expected finite values (the step was not taken)");
  }

  PeerPayload out;
  out.run_id = opt_.run_id;
  out.step = step;
  out.peer_id = opt_.peer_id;
  out.manifest_hash = manifest_.hash;
  out.values = opt_.values;
  out.count.resize(manifest_.total_chunks);
  std::vector<uint16_t> idx(manifest_.total_slots);
  std::vector<int8_t> val(manifest_.total_slots);
  const bool host = dev_->info().kind == DeviceKind::cpu;
  if (!host && !staging_.count.data()) {
    staging_.count = dev_->alloc(std::max<uint64_t>(1, manifest_.total_chunks) * 2);
    staging_.index = dev_->alloc(std::max<uint64_t>(1, manifest_.total_slots) * 2);
    staging_.value = dev_->alloc(std::max<uint64_t>(1, manifest_.total_slots));
  }
  std::vector<CompressArgs> args(T);
  for (size_t t = 0; t < T; ++t) {
    const TensorPlan& p = manifest_.tensors[t];
    CompressArgs& a = args[t];
    a.plan = &p;
    a.grad = grads[t];
    a.delta = slots_[t].delta.as<float>();
    a.beta = opt_.decay;
    a.lr = lr;
    a.values = opt_.values;
    a.count = (host ? out.count.data() : staging_.count.as<uint16_t>()) + p.chunk_base;
    a.index = (host ? idx.data() : staging_.index.as<uint16_t>()) + p.slot_base;
    a.value = (host ? val.data() : staging_.value.as<int8_t>()) + p.slot_base;
  }
  dev_->compress_many(args.data(), T);
  momentum_bound_ = norm_known ? next_bound : INFINITY;
  if (!host) {  // one copy of each array for the whole model (the device queues the compresses)
    dev_->download(out.count.data(), staging_.count.data(), manifest_.total_chunks * 2);
    dev_->download(idx.data(), staging_.index.data(), manifest_.total_slots * 2);
    dev_->download(val.data(), staging_.value.data(), manifest_.total_slots);
  }
  // Compact the fixed k slots per chunk into the payload's variable-length lists, in place: one pass
  // moving each chunk's entries left (the write position never passes the read position), then the
  // arrays are cut to length and handed over, without a second allocation or copy. When every chunk
  // is full (the usual case) nothing moves at all.
  uint64_t n_out = 0;
  for (const TensorPlan& p : manifest_.tensors)
    for (uint64_t c = 0; c < p.chunks; ++c) {
      const uint64_t base = p.slot_base + c * p.k;
      const uint16_t n = out.count[p.chunk_base + c];
      if (n_out != base) {  // std::copy allows overlap when the destination starts first
        std::copy(idx.data() + base, idx.data() + base + n, idx.data() + n_out);
        std::copy(val.data() + base, val.data() + base + n, val.data() + n_out);
      }
      n_out += n;
    }
  idx.resize(n_out);
  val.resize(n_out);
  out.index = std::move(idx);
  out.value = std::move(val);
  return out;
}

void Optimizer::apply(const MergedUpdate& u) {
  freeze();
  if (u.offset.size() != manifest_.total_chunks + 1 || u.offset.back() != u.index.size() ||
      u.index.size() != u.value.size())
    fail(Code::internal, "merged update does not cover the manifest's chunks");
  const bool host = dev_->info().kind == DeviceKind::cpu;
  const uint32_t* offset = u.offset.data();
  const uint16_t* index = u.index.data();
  const int32_t* value = u.value.data();
  if (!host) {  // the whole update goes to the device once; offsets stay global
    auto fit = [&](DeviceMemory& m, size_t bytes) {
      if (m.bytes() < bytes) m = dev_->alloc(std::max(bytes, m.bytes() * 2));
    };
    const size_t n = u.index.size();
    fit(staging_.offset, u.offset.size() * 4);
    fit(staging_.merged_index, n * 2 + 2);
    fit(staging_.merged_value, n * 4 + 4);
    dev_->upload(staging_.offset.data(), u.offset.data(), u.offset.size() * 4);
    if (n) {
      dev_->upload(staging_.merged_index.data(), u.index.data(), n * 2);
      dev_->upload(staging_.merged_value.data(), u.value.data(), n * 4);
    }
    offset = staging_.offset.as<uint32_t>();
    index = staging_.merged_index.as<uint16_t>();
    value = staging_.merged_value.as<int32_t>();
  }
  std::vector<ApplyArgs> args(slots_.size());
  for (size_t t = 0; t < slots_.size(); ++t) {
    const TensorPlan& p = manifest_.tensors[t];
    ApplyArgs& a = args[t];
    a.plan = &p;
    a.lr = u.lr;
    a.decay_factor = u.decay_factor;
    a.params = params_on_device(slots_[t], p, true);
    a.offset = offset + p.chunk_base;
    a.index = index;
    a.value = value;
  }
  dev_->apply_many(args.data(), args.size());
  if (!resident_)
    for (size_t t = 0; t < slots_.size(); ++t)
      dev_->download(slots_[t].params, args[t].params, manifest_.tensors[t].numel * sizeof(float));
}

uint64_t Optimizer::param_hash() {
  freeze();
  const size_t T = slots_.size();
  std::vector<const float*> data(T);
  std::vector<uint64_t> numel(T);
  for (size_t t = 0; t < T; ++t) {
    data[t] = params_on_device(slots_[t], manifest_.tensors[t], true);
    numel[t] = manifest_.tensors[t].numel;
  }
  return parameter_hash(*dev_, data, numel);
}

uint64_t parameter_hash(Device& dev, const std::vector<const float*>& data, const std::vector<uint64_t>& numel) {
  std::vector<uint64_t> salt(data.size()), sums(data.size());
  for (size_t t = 0; t < data.size(); ++t) salt[t] = tensor_salt(t);
  dev.hash_many(data.data(), numel.data(), salt.data(), data.size(), sums.data());
  uint64_t h = 0;
  for (uint64_t x : sums) h = fold_hash(h, x);
  return h;
}

std::vector<float> Optimizer::momentum(size_t t) {
  freeze();
  if (t >= slots_.size()) fail(Code::not_found, "no tensor number " + std::to_string(t));
  std::vector<float> out(manifest_.tensors[t].numel);
  dev_->download(out.data(), slots_[t].delta.data(), out.size() * sizeof(float));
  return out;
}

}  // namespace distro

namespace distro {

void Optimizer::set_momentum(size_t t, const std::vector<float>& data) {
  freeze();
  if (t >= slots_.size()) fail(Code::not_found, "no tensor number " + std::to_string(t));
  if (data.size() != manifest_.tensors[t].numel)
    fail(Code::size, "momentum of tensor '" + manifest_.tensors[t].name + "' needs " +
                         std::to_string(manifest_.tensors[t].numel) + " values, got " + std::to_string(data.size()));
  dev_->upload(slots_[t].delta.data(), data.data(), data.size() * sizeof(float));
  // The whole momentum's norm grows by at most this tensor's new norm.
  double ss = 0.0;
  for (float x : data) ss += double(x) * x;
  momentum_bound_ += std::sqrt(ss);
}

}  // namespace distro

#include "train/replica.hpp"

#include <cmath>

#include "backend/registry.hpp"
#include "wire/codec.hpp"

namespace distro {

Replica::Replica(const TrainConfig& cfg, const LlamaConfig& model_cfg, uint32_t peer_id, uint64_t run_id,
                 const std::string& device)
    : cfg_(cfg) {
  dev_ = open_device(device, cfg.threads);
  model_ = std::make_unique<LlamaModel>(*dev_, model_cfg, cfg.seed);
  if (cfg.optimizer == "distro") {
    OptimizerOptions o;
    o.run_id = run_id;
    o.peer_id = peer_id;
    o.chunk = cfg.chunk;
    o.topk = cfg.topk;
    o.decay = cfg.decay;
    o.values = cfg.values;
    o.threads = cfg.threads;
    // The optimizer shares the model's device: parameters and gradients never leave it.
    opt_ = std::make_unique<Optimizer>(o, *dev_);
    for (const auto& t : model_->tensors()) opt_->add_tensor(t.name, t.shape, t.param, t.grad);
    opt_->freeze();
  } else {
    for (const auto& t : model_->tensors()) {
      m_.push_back(dev_->alloc(t.numel * 4));
      v_.push_back(dev_->alloc(t.numel * 4));
      dev_->zero(m_.back().data(), t.numel * 4);
      dev_->zero(v_.back().data(), t.numel * 4);
    }
  }
}

Replica::~Replica() = default;

Optimizer& Replica::optimizer() {
  if (!opt_) fail(Code::state, "this replica trains with AdamW; it has no DisTrO optimizer");
  return *opt_;
}

double Replica::compute_grad(const int32_t* tokens, const int32_t* targets) {
  const int B = cfg_.batch, mb = cfg_.micro_batch ? cfg_.micro_batch : B, T = cfg_.seq;
  model_->zero_grad();
  grad_scale_ = 1.0f;
  grad_norm_ = std::nan("");
  double loss = 0.0;
  for (int b = 0; b < B; b += mb)
    loss += model_->forward_backward(tokens + size_t(b) * T, targets + size_t(b) * T, mb, T);
  const int parts = B / mb;
  if (parts > 1)
    for (const auto& t : model_->tensors()) dev_->scale(t.grad, 1.0f / float(parts), int64_t(t.numel));
  return loss / parts;
}

double Replica::grad_norm() {
  // Summed in double in tensor order; each tensor's sum is the device's deterministic reduction.
  const auto& ts = model_->tensors();
  std::vector<const float*> grads(ts.size());
  std::vector<uint64_t> numel(ts.size());
  std::vector<double> sums(ts.size());
  for (size_t t = 0; t < ts.size(); ++t) grads[t] = ts[t].grad, numel[t] = ts[t].numel;
  dev_->sum_squares_many(grads.data(), numel.data(), ts.size(), sums.data());
  double ss = 0.0;
  for (double x : sums) ss += x;
  grad_norm_ = std::sqrt(ss);
  return grad_norm_;
}

void Replica::clip(double norm) {
  if (cfg_.clip <= 0.0f || !(norm > cfg_.clip)) return;
  const float s = float(double(cfg_.clip) / norm);
  if (opt_) {
    grad_scale_ = s;  // applied in compress
    return;
  }
  for (const auto& t : model_->tensors()) dev_->scale(t.grad, s, int64_t(t.numel));
}

GradStats Replica::train_batch(const int32_t* tokens, const int32_t* targets) {
  GradStats g;
  g.loss = compute_grad(tokens, targets);
  g.grad_norm = grad_norm();
  clip(g.grad_norm);
  return g;
}

PeerPayload Replica::compress_payload(uint64_t step, float lr) {
  // The lr-scaled gradient of DeMo's momentum with the clip factor folded in (one float32 product).
  // The norm of this gradient, when measured, lets the optimizer skip its per-element check.
  return optimizer().compress(step, lr * grad_scale_, grad_norm_);
}

std::vector<uint8_t> Replica::compress(uint64_t step, float lr) {
  return encode_payload(optimizer().manifest(), compress_payload(step, lr));
}

void Replica::apply(const std::vector<uint8_t>& encoded_update) {
  Optimizer& o = optimizer();
  o.apply(decode_update(o.manifest(), encoded_update));
}

void Replica::adamw_step(float lr, uint64_t step) {
  if (opt_) fail(Code::state, "this replica trains with DisTrO; adamw_step needs an AdamW replica");
  const auto& ts = model_->tensors();
  for (size_t t = 0; t < ts.size(); ++t) {
    AdamWArgs a;
    a.params = ts[t].param;
    a.grad = ts[t].grad;
    a.m = m_[t].as<float>();
    a.v = v_[t].as<float>();
    a.n = ts[t].numel;
    a.lr = lr;
    a.beta1 = cfg_.beta1;
    a.beta2 = cfg_.beta2;
    a.eps = cfg_.eps;
    a.weight_decay = cfg_.weight_decay;
    a.t = step;
    dev_->adamw(a);
  }
}

uint64_t Replica::hash() {
  if (opt_) return opt_->param_hash();
  const auto& ts = model_->tensors();
  std::vector<const float*> data(ts.size());
  std::vector<uint64_t> numel(ts.size());
  for (size_t t = 0; t < ts.size(); ++t) data[t] = ts[t].param, numel[t] = ts[t].numel;
  return parameter_hash(*dev_, data, numel);
}

size_t Replica::tensor_count() const { return model_->tensors().size(); }

namespace {
const ModelTensor& tensor_at(LlamaModel& m, size_t t) {
  if (t >= m.tensors().size()) fail(Code::not_found, "no tensor number " + std::to_string(t));
  return m.tensors()[t];
}
void check_size(const ModelTensor& t, size_t n, const char* what) {
  if (n != t.numel)
    fail(Code::size, std::string(what) + " of tensor '" + t.name + "' needs " + std::to_string(t.numel) +
                         " values, got " + std::to_string(n));
}
}  // namespace

std::vector<float> Replica::params(size_t t) {
  const ModelTensor& mt = tensor_at(*model_, t);
  std::vector<float> out(mt.numel);
  dev_->download(out.data(), mt.param, mt.numel * 4);
  return out;
}

void Replica::set_params(size_t t, const std::vector<float>& data) {
  const ModelTensor& mt = tensor_at(*model_, t);
  check_size(mt, data.size(), "parameters");
  dev_->upload(mt.param, data.data(), mt.numel * 4);
}

std::vector<std::vector<float>> Replica::state(size_t t) {
  const ModelTensor& mt = tensor_at(*model_, t);
  if (opt_) return {opt_->momentum(t)};
  std::vector<std::vector<float>> out(2, std::vector<float>(mt.numel));
  dev_->download(out[0].data(), m_[t].data(), mt.numel * 4);
  dev_->download(out[1].data(), v_[t].data(), mt.numel * 4);
  return out;
}

void Replica::set_state(size_t t, const std::vector<std::vector<float>>& blocks) {
  const ModelTensor& mt = tensor_at(*model_, t);
  if (blocks.size() != (opt_ ? 1u : 2u))
    fail(Code::size, "optimizer state of tensor '" + mt.name + "' needs " + std::to_string(opt_ ? 1 : 2) +
                         " blocks, got " + std::to_string(blocks.size()));
  if (opt_) return opt_->set_momentum(t, blocks[0]);
  check_size(mt, blocks[0].size(), "first moment");
  check_size(mt, blocks[1].size(), "second moment");
  dev_->upload(m_[t].data(), blocks[0].data(), mt.numel * 4);
  dev_->upload(v_[t].data(), blocks[1].data(), mt.numel * 4);
}

}  // namespace distro

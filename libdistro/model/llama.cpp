// The built-in Llama model as a sequence of Device ops (docs/model.md). Parameters and gradients live
// in one device allocation each; activations in a third, sized for the largest batch seen times
// max_seq. The backward recomputes the cheap activations (the RMSNorm outputs and the SwiGLU product)
// instead of keeping them per layer.
#include "model/llama.hpp"

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu_kernels.hpp"
#include "core/error.hpp"
#include "model/shapes.hpp"

namespace distro {

LlamaConfig llama_preset(const std::string& name, int vocab) {
  LlamaConfig c;
  if (name == "nano") {
    c.vocab = 256, c.d_model = 128, c.layers = 4, c.heads = 4, c.ffn = 384, c.max_seq = 256;
  } else if (name == "micro") {
    c.vocab = 256, c.d_model = 256, c.layers = 6, c.heads = 8, c.ffn = 768, c.max_seq = 256;
  } else if (name == "small") {
    c.vocab = 32000, c.d_model = 768, c.layers = 12, c.heads = 12, c.ffn = 2048, c.max_seq = 1024;
  } else if (name == "1b") {
    c.vocab = 32000, c.d_model = 2048, c.layers = 16, c.heads = 8, c.ffn = 8192, c.max_seq = 2048;
  } else {
    fail(Code::not_found, "unknown model preset '" + name + "'; expected nano, micro, small or 1b");
  }
  if (vocab < 0) fail(Code::invalid_argument, "vocab override " + std::to_string(vocab) + " is negative");
  if (vocab > 0) c.vocab = vocab;
  return c;
}

void validate(const LlamaConfig& c) {
  auto positive = [](const char* field, int v) {
    if (v <= 0)
      fail(Code::invalid_argument, std::string("model config: ") + field + " is " + std::to_string(v) +
                                       "; expected a positive value");
  };
  positive("vocab", c.vocab);
  positive("d_model", c.d_model);
  positive("layers", c.layers);
  positive("heads", c.heads);
  positive("ffn", c.ffn);
  positive("max_seq", c.max_seq);
  if (c.d_model % c.heads != 0)
    fail(Code::invalid_argument, "model config: heads (" + std::to_string(c.heads) + ") must divide d_model (" +
                                     std::to_string(c.d_model) + ")");
  if ((c.d_model / c.heads) % 2 != 0)
    fail(Code::invalid_argument, "model config: head size d_model / heads = " +
                                     std::to_string(c.d_model / c.heads) + " must be even for RoPE");
  if (!(c.rope_theta > 0.0f) || !std::isfinite(c.rope_theta))
    fail(Code::invalid_argument, "model config: rope_theta must be a positive finite number");
  if (!(c.norm_eps > 0.0f) || !std::isfinite(c.norm_eps))
    fail(Code::invalid_argument, "model config: norm_eps must be a positive finite number");
}

namespace {

// Platform-independent normal numbers: splitmix64 -> 53-bit uniforms -> Box-Muller in double.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class NormalRng {
 public:
  explicit NormalRng(uint64_t state) : s_(state) {}
  double next() {
    if (has_spare_) return has_spare_ = false, spare_;
    const double u1 = double((bits() >> 11) + 1) * 0x1.0p-53;  // (0, 1]: log is finite
    const double u2 = double(bits() >> 11) * 0x1.0p-53;        // [0, 1)
    const double r = std::sqrt(-2.0 * std::log(u1)), a = 6.283185307179586476925 * u2;
    spare_ = r * std::sin(a), has_spare_ = true;
    return r * std::cos(a);
  }

 private:
  uint64_t bits() { return mix64(s_ += 0x9E3779B97F4A7C15ull); }
  uint64_t s_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

constexpr int kPerLayer = 9;  // attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down
enum LayerTensor { kAttnNorm, kWq, kWk, kWv, kWo, kMlpNorm, kWGate, kWUp, kWDown };

// Buffers start on 256-byte boundaries, the widest alignment cuBLASLt's kernel choice looks at.
uint64_t align64(uint64_t n) { return (n + 63) & ~uint64_t(63); }

}  // namespace

struct LlamaModel::Impl {
  Device& dev;
  LlamaConfig cfg;
  std::vector<ModelTensor> tensors;
  uint64_t num_params = 0;
  DeviceMemory params, grads, rope_cos, rope_sin;

  // Activations for up to cap_batch * max_seq tokens.
  int cap_batch = 0;
  DeviceMemory act, ids;
  int32_t *tokens = nullptr, *targets = nullptr;
  std::vector<float*> x;  // layers + 1 residual streams [N, d]
  struct LayerActs {
    float *rstd1, *q, *k, *v, *lse, *att, *h, *rstd2, *g, *u;
    float* s;  // silu(g) * u, kept for w_down's gradient (a recompute cost 3% of a 1b step)
  };
  std::vector<LayerActs> la;
  float *rstd_f = nullptr, *logits = nullptr, *loss_rows = nullptr;
  float *xn = nullptr, *tmp = nullptr;                                                // scratch
  float *dres = nullptr, *datt = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;  // backward
  float *ds = nullptr, *du = nullptr;
  std::vector<float> host_loss;

  Impl(Device& d, const LlamaConfig& c) : dev(d), cfg(c) {}

  const ModelTensor& emb() const { return tensors[0]; }
  const ModelTensor& layer(int l, LayerTensor t) const { return tensors[size_t(1 + kPerLayer * l + t)]; }
  const ModelTensor& norm() const { return tensors[size_t(1 + kPerLayer * cfg.layers)]; }
  const ModelTensor& output() const { return tensors[size_t(2 + kPerLayer * cfg.layers)]; }

  void init_params(uint64_t seed);
  void ensure_capacity(int B);
  void check_inputs(const int32_t* tok, const int32_t* tgt, int B, int T) const;
  float run(const int32_t* tok, const int32_t* tgt, int B, int T, bool backward);
  void backward(int B, int T);
};

void LlamaModel::Impl::init_params(uint64_t seed) {
  const double std_base = 0.02, std_proj = 0.02 / std::sqrt(2.0 * cfg.layers);
  std::vector<float> host;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ModelTensor& t = tensors[i];
    host.resize(t.numel);
    const std::string& n = t.name;
    const bool is_norm = n == "norm" || n.ends_with("_norm");
    if (is_norm) {
      std::fill(host.begin(), host.end(), 1.0f);
    } else {
      // One stream per tensor, keyed by seed and index, so a tensor's values do not depend on others.
      NormalRng rng(mix64(seed ^ mix64(uint64_t(i) + 1)));
      const double sd = n.ends_with(".wo") || n.ends_with(".w_down") ? std_proj : std_base;
      for (auto& v : host) v = float(rng.next() * sd);
    }
    dev.upload(t.param, host.data(), t.numel * sizeof(float));
  }
}

void LlamaModel::Impl::ensure_capacity(int B) {
  if (B <= cap_batch) return;
  const uint64_t N = uint64_t(B) * uint64_t(cfg.max_seq), d = uint64_t(cfg.d_model), f = uint64_t(cfg.ffn);
  const uint64_t V = uint64_t(cfg.vocab), H = uint64_t(cfg.heads);
  // Lay out every buffer, 256-byte aligned, in one allocation.
  uint64_t total = 0;
  std::vector<std::pair<float**, uint64_t>> plan;
  auto want = [&](float** p, uint64_t n) { plan.push_back({p, total}), total += align64(n); };
  x.assign(size_t(cfg.layers + 1), nullptr);
  la.assign(size_t(cfg.layers), LayerActs{});
  for (auto& p : x) want(&p, N * d);
  for (auto& l : la) {
    want(&l.rstd1, N), want(&l.q, N * d), want(&l.k, N * d), want(&l.v, N * d), want(&l.lse, N * H);
    want(&l.att, N * d), want(&l.h, N * d), want(&l.rstd2, N), want(&l.g, N * f), want(&l.u, N * f);
    want(&l.s, N * f);
  }
  want(&rstd_f, N), want(&logits, N * V), want(&loss_rows, N);
  want(&xn, N * d), want(&tmp, N * d);
  want(&dres, N * d), want(&datt, N * d), want(&dq, N * d), want(&dk, N * d), want(&dv, N * d);
  want(&ds, N * f), want(&du, N * f);
  act = DeviceMemory();  // free the old buffers before allocating the larger ones
  ids = DeviceMemory();
  act = dev.alloc(total * sizeof(float));
  ids = dev.alloc(2 * N * sizeof(int32_t));
  for (auto& [p, off] : plan) *p = act.as<float>() + off;
  tokens = ids.as<int32_t>();
  targets = tokens + N;
  cap_batch = B;
}

void LlamaModel::Impl::check_inputs(const int32_t* tok, const int32_t* tgt, int B, int T) const {
  if (!tok || !tgt) fail(Code::invalid_argument, std::string("llama: ") + (tok ? "targets" : "tokens") + " is null");
  if (B < 1) fail(Code::invalid_argument, "llama: batch size B = " + std::to_string(B) + "; expected B >= 1");
  if (T < 1 || T > cfg.max_seq)
    fail(Code::invalid_argument, "llama: sequence length T = " + std::to_string(T) + " is outside [1, max_seq = " +
                                     std::to_string(cfg.max_seq) + "]");
  const int64_t N = int64_t(B) * T;
  for (int which = 0; which < 2; ++which) {
    const int32_t* a = which ? tgt : tok;
    for (int64_t i = 0; i < N; ++i)
      if (a[i] < 0 || a[i] >= cfg.vocab)
        fail(Code::invalid_argument, std::string("llama: ") + (which ? "targets" : "tokens") + "[b = " +
                                         std::to_string(i / T) + ", t = " + std::to_string(i % T) + "] = " +
                                         std::to_string(a[i]) + " is outside [0, vocab = " +
                                         std::to_string(cfg.vocab) + ")");
  }
}

float LlamaModel::Impl::run(const int32_t* tok, const int32_t* tgt, int B, int T, bool with_grad) {
  check_inputs(tok, tgt, B, T);
  ensure_capacity(B);
  const int64_t N = int64_t(B) * T, d = cfg.d_model, f = cfg.ffn, V = cfg.vocab;
  const HeadShape hs{B, T, cfg.heads, d / cfg.heads};
  const float eps = cfg.norm_eps;
  dev.upload(tokens, tok, size_t(N) * sizeof(int32_t));
  dev.upload(targets, tgt, size_t(N) * sizeof(int32_t));

  dev.embedding_forward(x[0], emb().param, tokens, N, V, d);
  for (int l = 0; l < cfg.layers; ++l) {
    LayerActs& a = la[size_t(l)];
    auto W = [&](LayerTensor t) { return layer(l, t).param; };
    // h = x + wo . attn(rope(wq . rms(x)), rope(wk . rms(x)), wv . rms(x))
    dev.rmsnorm_forward(xn, a.rstd1, x[size_t(l)], W(kAttnNorm), N, d, eps);
    dev.matmul(a.q, xn, W(kWq), N, d, d, false, true, 1.0f, 0.0f);
    dev.matmul(a.k, xn, W(kWk), N, d, d, false, true, 1.0f, 0.0f);
    dev.matmul(a.v, xn, W(kWv), N, d, d, false, true, 1.0f, 0.0f);
    dev.rope_forward(a.q, rope_cos.as<float>(), rope_sin.as<float>(), hs);
    dev.rope_forward(a.k, rope_cos.as<float>(), rope_sin.as<float>(), hs);
    dev.attention_forward(a.att, a.lse, a.q, a.k, a.v, hs);
    dev.matmul(tmp, a.att, W(kWo), N, d, d, false, true, 1.0f, 0.0f);
    dev.add(a.h, x[size_t(l)], tmp, N * d);
    // x' = h + w_down . (silu(w_gate . rms(h)) * w_up . rms(h))
    dev.rmsnorm_forward(xn, a.rstd2, a.h, W(kMlpNorm), N, d, eps);
    dev.matmul(a.g, xn, W(kWGate), N, f, d, false, true, 1.0f, 0.0f);
    dev.matmul(a.u, xn, W(kWUp), N, f, d, false, true, 1.0f, 0.0f);
    dev.swiglu_forward(a.s, a.g, a.u, N * f);
    dev.matmul(tmp, a.s, W(kWDown), N, d, f, false, true, 1.0f, 0.0f);
    dev.add(x[size_t(l) + 1], a.h, tmp, N * d);
  }
  dev.rmsnorm_forward(xn, rstd_f, x[size_t(cfg.layers)], norm().param, N, d, eps);
  dev.matmul(logits, xn, output().param, N, V, d, false, true, 1.0f, 0.0f);
  // The gradient of the mean: dlogits = (softmax - onehot) / N, written over the logits.
  dev.cross_entropy(loss_rows, with_grad ? logits : nullptr, logits, targets, N, V, 1.0f / float(N));
  host_loss.resize(size_t(N));
  dev.download(host_loss.data(), loss_rows, size_t(N) * sizeof(float));
  double sum = 0.0;  // fixed order, in double: the reported loss does not depend on the device
  for (float v : host_loss) sum += double(v);
  if (with_grad) backward(B, T);
  return float(sum / double(N));
}

void LlamaModel::Impl::backward(int B, int T) {
  const int64_t N = int64_t(B) * T, d = cfg.d_model, f = cfg.ffn, V = cfg.vocab;
  const HeadShape hs{B, T, cfg.heads, d / cfg.heads};
  const float eps = cfg.norm_eps;
  const float *cs = rope_cos.as<float>(), *sn = rope_sin.as<float>();
  // Head: xn still holds rms(x_L) from the forward; logits hold dlogits.
  dev.matmul(output().grad, logits, xn, V, d, N, true, false, 1.0f, 1.0f);
  dev.matmul(tmp, logits, output().param, N, d, V, false, false, 1.0f, 0.0f);
  dev.zero(dres, size_t(N * d) * sizeof(float));
  dev.rmsnorm_backward(dres, norm().grad, tmp, x[size_t(cfg.layers)], norm().param, rstd_f, N, d);
  // dres is the gradient of the residual stream; each norm's backward adds its branch into it.
  for (int l = cfg.layers - 1; l >= 0; --l) {
    LayerActs& a = la[size_t(l)];
    auto W = [&](LayerTensor t) { return layer(l, t).param; };
    auto G = [&](LayerTensor t) { return layer(l, t).grad; };
    // MLP.
    dev.matmul(G(kWDown), dres, a.s, d, f, N, true, false, 1.0f, 1.0f);
    dev.matmul(ds, dres, W(kWDown), N, f, d, false, false, 1.0f, 0.0f);
    float* dg = a.s;  // s is dead once w_down's gradient has it
    dev.swiglu_backward(dg, du, ds, a.g, a.u, N * f);
    dev.rmsnorm_forward(xn, a.rstd2, a.h, W(kMlpNorm), N, d, eps);
    dev.matmul(G(kWGate), dg, xn, f, d, N, true, false, 1.0f, 1.0f);
    dev.matmul(G(kWUp), du, xn, f, d, N, true, false, 1.0f, 1.0f);
    dev.matmul(tmp, dg, W(kWGate), N, d, f, false, false, 1.0f, 0.0f);
    dev.matmul(tmp, du, W(kWUp), N, d, f, false, false, 1.0f, 1.0f);
    dev.rmsnorm_backward(dres, G(kMlpNorm), tmp, a.h, W(kMlpNorm), a.rstd2, N, d);
    // Attention.
    dev.matmul(G(kWo), dres, a.att, d, d, N, true, false, 1.0f, 1.0f);
    dev.matmul(datt, dres, W(kWo), N, d, d, false, false, 1.0f, 0.0f);
    dev.attention_backward(dq, dk, dv, datt, a.q, a.k, a.v, a.att, a.lse, hs);
    dev.rope_backward(dq, cs, sn, hs);
    dev.rope_backward(dk, cs, sn, hs);
    dev.rmsnorm_forward(xn, a.rstd1, x[size_t(l)], W(kAttnNorm), N, d, eps);
    dev.matmul(G(kWq), dq, xn, d, d, N, true, false, 1.0f, 1.0f);
    dev.matmul(G(kWk), dk, xn, d, d, N, true, false, 1.0f, 1.0f);
    dev.matmul(G(kWv), dv, xn, d, d, N, true, false, 1.0f, 1.0f);
    dev.matmul(tmp, dq, W(kWq), N, d, d, false, false, 1.0f, 0.0f);
    dev.matmul(tmp, dk, W(kWk), N, d, d, false, false, 1.0f, 1.0f);
    dev.matmul(tmp, dv, W(kWv), N, d, d, false, false, 1.0f, 1.0f);
    dev.rmsnorm_backward(dres, G(kAttnNorm), tmp, x[size_t(l)], W(kAttnNorm), a.rstd1, N, d);
  }
  dev.embedding_backward(emb().grad, dres, tokens, N, V, d);
}

LlamaModel::LlamaModel(Device& dev, const LlamaConfig& c, uint64_t seed) : impl_(nullptr) {
  validate(c);
  auto impl = std::make_unique<Impl>(dev, c);
  const auto specs = llama_tensors({c.layers, c.d_model, c.ffn, c.heads, c.vocab});
  std::vector<uint64_t> offsets;
  uint64_t total = 0;
  for (const auto& s : specs) {
    ModelTensor t;
    t.name = s.name;
    t.shape = s.shape;
    t.numel = 1;
    for (int64_t e : s.shape) t.numel *= uint64_t(e);
    impl->num_params += t.numel;
    offsets.push_back(total);
    total += align64(t.numel);
    impl->tensors.push_back(std::move(t));
  }
  impl->params = dev.alloc(total * sizeof(float));
  impl->grads = dev.alloc(total * sizeof(float));
  for (size_t i = 0; i < impl->tensors.size(); ++i) {
    impl->tensors[i].param = impl->params.as<float>() + offsets[i];
    impl->tensors[i].grad = impl->grads.as<float>() + offsets[i];
  }
  dev.zero(impl->grads.data(), total * sizeof(float));
  impl->init_params(seed);

  const int64_t hd = c.d_model / c.heads, half = hd / 2;
  std::vector<float> cs(size_t(c.max_seq * half)), sn(cs.size());
  kernels::rope_tables(cs.data(), sn.data(), c.max_seq, hd, double(c.rope_theta));
  impl->rope_cos = dev.alloc(cs.size() * sizeof(float));
  impl->rope_sin = dev.alloc(sn.size() * sizeof(float));
  dev.upload(impl->rope_cos.data(), cs.data(), cs.size() * sizeof(float));
  dev.upload(impl->rope_sin.data(), sn.data(), sn.size() * sizeof(float));
  impl_ = impl.release();
}

LlamaModel::~LlamaModel() { delete impl_; }

const LlamaConfig& LlamaModel::config() const { return impl_->cfg; }
const std::vector<ModelTensor>& LlamaModel::tensors() const { return impl_->tensors; }
uint64_t LlamaModel::num_params() const { return impl_->num_params; }

void LlamaModel::zero_grad() { impl_->dev.zero(impl_->grads.data(), impl_->grads.bytes()); }

float LlamaModel::forward_backward(const int32_t* tokens, const int32_t* targets, int B, int T) {
  return impl_->run(tokens, targets, B, T, true);
}

float LlamaModel::loss(const int32_t* tokens, const int32_t* targets, int B, int T) {
  return impl_->run(tokens, targets, B, T, false);
}

}  // namespace distro

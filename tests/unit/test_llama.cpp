// The built-in Llama model on the CPU device: presets, reproducible init, the whole model's gradient
// against finite differences of a float64 evaluation (the same kernels in double), thread-count
// independence, learning a tiny text, and input validation.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu_device.hpp"
#include "backend/cpu_kernels.hpp"
#include "model/llama.hpp"
#include "model/shapes.hpp"

using namespace distro;
namespace k = distro::kernels;

namespace {

LlamaConfig tiny_config() {
  LlamaConfig c;
  c.vocab = 17, c.d_model = 16, c.layers = 2, c.heads = 2, c.ffn = 24, c.max_seq = 8;
  return c;
}

std::vector<int32_t> random_ids(size_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = int32_t(rng() % uint64_t(vocab));
  return v;
}

std::vector<float> read(const float* p, uint64_t n) { return {p, p + n}; }  // CPU device memory is host memory

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// The model's forward, written again with the float64 kernels: the reference for the gradient check.
double reference_loss(const LlamaConfig& c, const std::vector<std::vector<double>>& p, const std::vector<int32_t>& tok,
                      const std::vector<int32_t>& tgt, int B, int T) {
  const int64_t N = int64_t(B) * T, d = c.d_model, f = c.ffn, V = c.vocab, H = c.heads, hd = d / H;
  const double eps = double(c.norm_eps);
  // The model rounds its RoPE tables to float once; use the same values.
  std::vector<float> csf(size_t(T * hd / 2)), snf(csf.size());
  k::rope_tables(csf.data(), snf.data(), T, hd, double(c.rope_theta));
  const std::vector<double> cs(csf.begin(), csf.end()), sn(snf.begin(), snf.end());
  using Vec = std::vector<double>;
  Vec x(static_cast<size_t>(N * d)), xn(x.size()), q(x.size()), kk(x.size()), v(x.size()), att(x.size()), tmp(x.size()), h(x.size());
  Vec rstd(static_cast<size_t>(N)), lse(static_cast<size_t>(N * H)), g(static_cast<size_t>(N * f)), u(g.size()), s(g.size()), logits(static_cast<size_t>(N * V));
  Vec loss_rows(static_cast<size_t>(N));
  k::AttentionScratch<double> ws;
  const k::AttentionDims ad{B, T, H, hd};
  k::embedding_forward(x.data(), p[0].data(), tok.data(), d, 0, N);
  for (int l = 0; l < c.layers; ++l) {
    auto W = [&](int i) { return p[size_t(1 + 9 * l + i)].data(); };
    k::rmsnorm_forward(xn.data(), rstd.data(), x.data(), W(0), d, eps, 0, N);
    k::matmul(q.data(), xn.data(), W(1), N, d, d, false, true, 1.0, 0.0);
    k::matmul(kk.data(), xn.data(), W(2), N, d, d, false, true, 1.0, 0.0);
    k::matmul(v.data(), xn.data(), W(3), N, d, d, false, true, 1.0, 0.0);
    k::rope(q.data(), cs.data(), sn.data(), T, H, hd, false, 0, N);
    k::rope(kk.data(), cs.data(), sn.data(), T, H, hd, false, 0, N);
    k::attention_forward(att.data(), lse.data(), q.data(), kk.data(), v.data(), ad, 0, B * H, ws);
    k::matmul(tmp.data(), att.data(), W(4), N, d, d, false, true, 1.0, 0.0);
    k::add(h.data(), x.data(), tmp.data(), 0, N * d);
    k::rmsnorm_forward(xn.data(), rstd.data(), h.data(), W(5), d, eps, 0, N);
    k::matmul(g.data(), xn.data(), W(6), N, f, d, false, true, 1.0, 0.0);
    k::matmul(u.data(), xn.data(), W(7), N, f, d, false, true, 1.0, 0.0);
    k::swiglu_forward(s.data(), g.data(), u.data(), 0, N * f);
    k::matmul(tmp.data(), s.data(), W(8), N, d, f, false, true, 1.0, 0.0);
    k::add(x.data(), h.data(), tmp.data(), 0, N * d);
  }
  k::rmsnorm_forward(xn.data(), rstd.data(), x.data(), p[size_t(1 + 9 * c.layers)].data(), d, eps, 0, N);
  k::matmul(logits.data(), xn.data(), p[size_t(2 + 9 * c.layers)].data(), N, V, d, false, true, 1.0, 0.0);
  k::cross_entropy(loss_rows.data(), static_cast<double*>(nullptr), logits.data(), tgt.data(), V, 1.0, 0, N);
  double sum = 0;
  for (double l : loss_rows) sum += l;
  return sum / double(N);
}

// Everything the model computes for one batch: loss and every tensor's gradient.
struct StepResult {
  float loss;
  std::vector<std::vector<float>> grads;
};

StepResult step(LlamaModel& m, const std::vector<int32_t>& tok, const std::vector<int32_t>& tgt, int B, int T) {
  m.zero_grad();
  StepResult r{m.forward_backward(tok.data(), tgt.data(), B, T), {}};
  for (const auto& t : m.tensors()) r.grads.push_back(read(t.grad, t.numel));
  return r;
}

}  // namespace

TEST_CASE("llama presets, tensors and parameter counts", "[model]") {
  const LlamaConfig nano = llama_preset("nano");
  CHECK(nano.vocab == 256);
  CHECK(nano.d_model == 128);
  CHECK(nano.layers == 4);
  CHECK(nano.heads == 4);
  CHECK(nano.ffn == 384);
  CHECK(nano.max_seq == 256);
  CHECK(llama_preset("micro").d_model == 256);
  CHECK(llama_preset("small", 50304).vocab == 50304);
  CHECK(llama_preset("1b").max_seq == 2048);
  auto count = [](const LlamaConfig& c) {
    return count_params(llama_tensors({c.layers, c.d_model, c.ffn, c.heads, c.vocab}));
  };
  CHECK(count(nano) == 918656);
  CHECK(count(llama_preset("micro")) == 5246208);
  CHECK(count(llama_preset("small")) == 134105856);  // = shapes' "llama-134m"
  CHECK(count(llama_preset("1b")) == 1204881408);
  CHECK(count(llama_preset("small")) == count_params(model_shape("llama-134m")));
  for (const char* name : {"nano", "micro", "small", "1b"}) CHECK_NOTHROW(validate(llama_preset(name)));
  try {
    llama_preset("tiny");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.code() == Code::not_found);
    CHECK_THAT(e.what(), Catch::Contains("nano") && Catch::Contains("micro") && Catch::Contains("1b"));
  }

  CpuDevice dev(2);
  LlamaModel m(dev, tiny_config(), 1);
  const auto specs = llama_tensors({2, 16, 24, 2, 17});
  REQUIRE(m.tensors().size() == specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    CHECK(m.tensors()[i].name == specs[i].name);
    CHECK(m.tensors()[i].shape == specs[i].shape);
  }
  CHECK(m.num_params() == count_params(specs));
}

TEST_CASE("llama config validation names the field", "[model]") {
  auto bad = [](auto edit, const char* text) {
    LlamaConfig c = tiny_config();
    edit(c);
    try {
      validate(c);
      FAIL("no error for " << text);
    } catch (const Error& e) {
      CHECK(e.code() == Code::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains(text));
    }
  };
  bad([](LlamaConfig& c) { c.vocab = 0; }, "vocab");
  bad([](LlamaConfig& c) { c.layers = -1; }, "layers");
  bad([](LlamaConfig& c) { c.max_seq = 0; }, "max_seq");
  bad([](LlamaConfig& c) { c.heads = 3; }, "must divide d_model");
  bad([](LlamaConfig& c) { c.heads = 16; }, "even");
  bad([](LlamaConfig& c) { c.rope_theta = 0; }, "rope_theta");
  bad([](LlamaConfig& c) { c.norm_eps = -1; }, "norm_eps");
  CpuDevice dev(1);
  LlamaConfig c = tiny_config();
  c.ffn = 0;
  CHECK_THROWS_WITH(LlamaModel(dev, c, 1), Catch::Contains("ffn"));
}

TEST_CASE("llama init is reproducible and has the documented statistics", "[model]") {
  CpuDevice dev(2);
  const LlamaConfig c = llama_preset("nano");
  LlamaModel a(dev, c, 42), b(dev, c, 42), other(dev, c, 43);
  bool all_same = true, any_diff = false;
  for (size_t i = 0; i < a.tensors().size(); ++i) {
    const auto& t = a.tensors()[i];
    const auto pa = read(t.param, t.numel), pb = read(b.tensors()[i].param, t.numel);
    const auto po = read(other.tensors()[i].param, t.numel);
    all_same = all_same && bit_equal(pa, pb);
    const bool is_norm = t.name == "norm" || t.name.ends_with("_norm");
    if (is_norm) {
      for (float v : pa) REQUIRE(v == 1.0f);
      continue;
    }
    any_diff = any_diff || !bit_equal(pa, po);
    double ss = 0;
    for (float v : pa) ss += double(v) * v;
    const double sd = std::sqrt(ss / double(t.numel));
    const bool proj = t.name.ends_with(".wo") || t.name.ends_with(".w_down");
    const double want = proj ? 0.02 / std::sqrt(2.0 * c.layers) : 0.02;
    INFO(t.name);
    CHECK(sd == Approx(want).epsilon(0.03));
    // Grads start at zero.
    for (float v : read(t.grad, t.numel)) REQUIRE(v == 0.0f);
  }
  CHECK(all_same);
  CHECK(any_diff);
  // The same seed gives different values in different tensors (independent streams).
  CHECK(!bit_equal(read(a.tensors()[2].param, 100), read(a.tensors()[3].param, 100)));

  // The initial loss of nano on random bytes is near ln(256).
  const int B = 4, T = 64;
  const auto tok = random_ids(size_t(B * T), 256, 5), tgt = random_ids(size_t(B * T), 256, 6);
  const float loss = a.loss(tok.data(), tgt.data(), B, T);
  CHECK(std::abs(loss - std::log(256.0)) < 0.1);
}

TEST_CASE("llama gradient matches finite differences of a float64 evaluation", "[model]") {
  CpuDevice dev(2);
  const LlamaConfig c = tiny_config();
  LlamaModel m(dev, c, 7);
  // Larger weights than the init, so every part of the model (attention pattern, gating, norm
  // weights) is far from its linear regime and the check has something to see.
  std::mt19937_64 rng(99);
  std::normal_distribution<double> nd;
  std::vector<std::vector<double>> p;
  for (const auto& t : m.tensors()) {
    std::vector<float> host(t.numel);
    const bool is_norm = t.name == "norm" || t.name.ends_with("_norm");
    const double sd = t.name == "tok_embeddings" ? 1.0 : 1.0 / std::sqrt(double(t.shape.back()));
    for (auto& v : host) v = float(is_norm ? 1.0 + 0.2 * nd(rng) : sd * nd(rng));
    dev.upload(t.param, host.data(), host.size() * 4);
    p.emplace_back(host.begin(), host.end());
  }
  const int B = 2, T = 8;
  const auto tok = random_ids(size_t(B * T), c.vocab, 11), tgt = random_ids(size_t(B * T), c.vocab, 12);
  m.zero_grad();
  const float loss = m.forward_backward(tok.data(), tgt.data(), B, T);
  const double ref = reference_loss(c, p, tok, tgt, B, T);
  CHECK(loss == Approx(ref).epsilon(1e-5));
  CHECK(m.loss(tok.data(), tgt.data(), B, T) == loss);

  std::mt19937_64 pick(3);
  const double h = 1e-4;
  for (size_t ti = 0; ti < m.tensors().size(); ++ti) {
    const auto& t = m.tensors()[ti];
    const auto grad = read(t.grad, t.numel);
    double gmax = 0;
    for (float v : grad) gmax = std::max(gmax, double(std::abs(v)));
    REQUIRE(gmax > 0);
    double worst = 0;
    for (int s = 0; s < 6; ++s) {
      const size_t i = size_t(pick() % t.numel);
      const double keep = p[ti][i];
      p[ti][i] = keep + h;
      const double lp = reference_loss(c, p, tok, tgt, B, T);
      p[ti][i] = keep - h;
      const double lm = reference_loss(c, p, tok, tgt, B, T);
      p[ti][i] = keep;
      const double num = (lp - lm) / (2 * h);
      // Relative to the element's size, floored at a small fraction of the tensor's largest gradient
      // (a float32 gradient near zero has no relative precision to speak of).
      worst = std::max(worst, std::abs(double(grad[i]) - num) / std::max(std::abs(num), 0.05 * gmax));
    }
    INFO(t.name << ": worst relative error " << worst << " (max |grad| " << gmax << ")");
    CHECK(worst < 1e-4);
  }

  // forward_backward adds: a second call without zero_grad doubles every gradient exactly.
  std::vector<std::vector<float>> once;
  for (const auto& t : m.tensors()) once.push_back(read(t.grad, t.numel));
  CHECK(m.forward_backward(tok.data(), tgt.data(), B, T) == loss);
  for (size_t ti = 0; ti < m.tensors().size(); ++ti) {
    auto twice = read(m.tensors()[ti].grad, m.tensors()[ti].numel);
    for (size_t i = 0; i < twice.size(); ++i) REQUIRE(twice[i] == 2.0f * once[ti][i]);
  }
  // loss() leaves the gradients alone.
  m.zero_grad();
  m.loss(tok.data(), tgt.data(), B, T);
  for (const auto& t : m.tensors())
    for (float v : read(t.grad, t.numel)) REQUIRE(v == 0.0f);
}

TEST_CASE("llama loss and gradients are bit-identical for 1, 2 and 3 threads", "[model]") {
  // Big enough that every op splits its work across threads.
  LlamaConfig c;
  c.vocab = 64, c.d_model = 64, c.layers = 2, c.heads = 4, c.ffn = 96, c.max_seq = 64;
  const int B = 8, T = 64;
  const auto tok = random_ids(size_t(B * T), c.vocab, 21), tgt = random_ids(size_t(B * T), c.vocab, 22);
  std::vector<StepResult> results;
  for (unsigned threads : {1u, 2u, 3u}) {
    CpuDevice dev(threads);
    LlamaModel m(dev, c, 5);
    results.push_back(step(m, tok, tgt, B, T));
  }
  for (size_t r = 1; r < results.size(); ++r) {
    CHECK(results[r].loss == results[0].loss);
    for (size_t t = 0; t < results[0].grads.size(); ++t) {
      INFO("tensor " << t << ", run " << r);
      CHECK(bit_equal(results[r].grads[t], results[0].grads[t]));
    }
  }
}

TEST_CASE("llama activations regrow for a larger batch without changing results", "[model]") {
  CpuDevice dev(2);
  const LlamaConfig c = tiny_config();
  const int T = 7;
  const auto tok = random_ids(size_t(3 * T), c.vocab, 31), tgt = random_ids(size_t(3 * T), c.vocab, 32);
  LlamaModel grown(dev, c, 9), fresh(dev, c, 9);
  grown.loss(tok.data(), tgt.data(), 1, T);
  grown.loss(tok.data(), tgt.data(), 3, T);  // regrows
  const auto a = step(grown, tok, tgt, 2, T), b = step(fresh, tok, tgt, 2, T);
  CHECK(a.loss == b.loss);
  for (size_t t = 0; t < a.grads.size(); ++t) CHECK(bit_equal(a.grads[t], b.grads[t]));
}

TEST_CASE("llama learns a tiny repeated text with AdamW", "[model]") {
  CpuDevice dev(2);
  LlamaConfig c;
  c.vocab = 256, c.d_model = 64, c.layers = 2, c.heads = 4, c.ffn = 128, c.max_seq = 64;
  LlamaModel m(dev, c, 1);
  const std::string unit = "The quick brown fox jumps over the lazy dog; pack my box with 5 jugs.";
  const std::string text64 = unit.substr(0, 64);
  std::string text;
  while (text.size() < 512) text += text64;
  const int B = 4, T = 32;
  std::vector<std::vector<float>> mom, var;
  for (const auto& t : m.tensors()) mom.emplace_back(t.numel, 0.0f), var.emplace_back(t.numel, 0.0f);
  std::mt19937_64 rng(1);
  float first = 0, last = 0;
  for (int it = 1; it <= 100; ++it) {
    std::vector<int32_t> tok(size_t(B * T)), tgt(tok.size());
    for (int b = 0; b < B; ++b) {
      const size_t off = size_t(rng() % (text.size() - size_t(T) - 1));
      for (int t = 0; t < T; ++t) {
        tok[size_t(b * T + t)] = int32_t(uint8_t(text[off + size_t(t)]));
        tgt[size_t(b * T + t)] = int32_t(uint8_t(text[off + size_t(t) + 1]));
      }
    }
    m.zero_grad();
    const float loss = m.forward_backward(tok.data(), tgt.data(), B, T);
    REQUIRE(std::isfinite(loss));
    if (it == 1) first = loss;
    last = loss;
    for (size_t i = 0; i < m.tensors().size(); ++i) {
      const auto& t = m.tensors()[i];
      AdamWArgs a;
      a.params = t.param, a.grad = t.grad, a.m = mom[i].data(), a.v = var[i].data(), a.n = t.numel;
      a.lr = 3e-3f, a.t = uint64_t(it);
      dev.adamw(a);
    }
  }
  INFO("loss " << first << " -> " << last);
  CHECK(first == Approx(std::log(256.0)).margin(0.1));
  CHECK(last < 0.5f * first);
}

TEST_CASE("llama rejects bad inputs with clear errors", "[model]") {
  CpuDevice dev(1);
  const LlamaConfig c = tiny_config();
  LlamaModel m(dev, c, 1);
  auto tok = random_ids(16, c.vocab, 1), tgt = random_ids(16, c.vocab, 2);
  auto expect = [](auto fn, const char* text) {
    try {
      fn();
      FAIL("no error; expected one containing '" << text << "'");
    } catch (const Error& e) {
      CHECK(e.code() == Code::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains(text));
    }
  };
  tok[11] = 17;  // b 1, t 3 with T 8
  expect([&] { m.forward_backward(tok.data(), tgt.data(), 2, 8); }, "tokens[b = 1, t = 3] = 17 is outside [0, vocab = 17)");
  tok[11] = 0;
  tgt[0] = -2;
  expect([&] { m.loss(tok.data(), tgt.data(), 2, 8); }, "targets[b = 0, t = 0] = -2");
  tgt[0] = 0;
  expect([&] { m.loss(tok.data(), tgt.data(), 1, 9); }, "sequence length T = 9 is outside [1, max_seq = 8]");
  expect([&] { m.loss(tok.data(), tgt.data(), 1, 0); }, "sequence length T = 0");
  expect([&] { m.forward_backward(tok.data(), tgt.data(), 0, 8); }, "batch size B = 0; expected B >= 1");
  expect([&] { m.loss(nullptr, tgt.data(), 1, 8); }, "tokens is null");
  // Nothing was changed by the rejected calls: a valid call still works and grads are finite.
  m.zero_grad();
  CHECK(std::isfinite(m.forward_backward(tok.data(), tgt.data(), 2, 8)));
}

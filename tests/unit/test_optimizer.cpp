// The DisTrO optimizer on the CPU: error feedback, determinism across thread counts, the float64
// DeMo step, and the merger's checks.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>

#include "backend/cpu_device.hpp"
#include "optim/chunk_math.hpp"
#include "optim/dct.hpp"
#include "optim/merger.hpp"
#include "optim/optimizer.hpp"
#include "wire/codec.hpp"

using namespace distro;

namespace {

// One peer: parameters and gradients for a fixed set of tensors, plus its optimizer.
struct Replica {
  std::vector<TensorSpec> specs;
  std::vector<std::vector<float>> params, grads;
  std::unique_ptr<Optimizer> opt;

  Replica(const std::vector<TensorSpec>& s, OptimizerOptions o, uint64_t seed) : specs(s) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    opt = std::make_unique<Optimizer>(o);
    for (const auto& t : s) {
      uint64_t n = 1;
      for (auto d : t.shape) n *= uint64_t(d);
      params.emplace_back(n);
      grads.emplace_back(n, 0.0f);
      for (auto& v : params.back()) v = nd(rng);
    }
    for (size_t t = 0; t < s.size(); ++t)
      opt->add_tensor(s[t].name, s[t].shape, params[t].data(), grads[t].data());
  }
  void random_grads(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd;
    for (auto& g : grads)
      for (auto& v : g) v = nd(rng);
  }
};

const std::vector<TensorSpec> kSpecs = {{"w", {128, 192}}, {"v", {100}}, {"e", {87, 64}}, {"c", {2, 64, 7}}};

OptimizerOptions options(unsigned threads, ValueMode v = ValueMode::sign, uint32_t peer = 0) {
  OptimizerOptions o;
  o.run_id = 77;
  o.peer_id = peer;
  o.topk = 4;
  o.decay = 0.9f;
  o.values = v;
  o.threads = threads;
  return o;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

}  // namespace

TEST_CASE("transmitted plus residual equals the momentum before compression", "[optimizer]") {
  for (ValueMode vm : {ValueMode::sign, ValueMode::int8}) {
    Replica r(kSpecs, options(2, vm), 1);
    const Manifest& m = (r.opt->freeze(), r.opt->manifest());
    DctTables tables(m);
    for (uint64_t step = 1; step <= 3; ++step) {
      r.random_grads(100 + step);
      const float lr = 0.01f, beta = 0.9f;
      std::vector<std::vector<double>> before(m.tensors.size());
      for (size_t t = 0; t < m.tensors.size(); ++t) {
        auto d = r.opt->momentum(t);
        before[t].resize(d.size());
        for (size_t i = 0; i < d.size(); ++i) before[t][i] = double(beta * d[i] + lr * r.grads[t][i]);
      }
      PeerPayload p = r.opt->compress(step, lr);
      size_t cursor = 0;
      for (size_t t = 0; t < m.tensors.size(); ++t) {
        const TensorPlan& tp = m.tensors[t];
        std::vector<double> coef(tp.numel), sent(tp.numel, 0.0), sent_x(tp.numel);
        block_dct_forward(tp, tables, before[t].data(), coef.data());
        for (uint64_t c = 0; c < tp.chunks; ++c)
          for (uint16_t s = 0; s < p.count[tp.chunk_base + c]; ++s, ++cursor) {
            uint64_t at = c * tp.elems() + p.index[cursor];
            sent[at] = coef[at];
          }
        block_dct_inverse(tp, tables, sent.data(), sent_x.data());
        auto residual = r.opt->momentum(t);
        double worst = 0, scale = 0;
        for (uint64_t i = 0; i < tp.numel; ++i) {
          worst = std::max(worst, std::fabs(double(residual[i]) + sent_x[i] - before[t][i]));
          scale = std::max(scale, std::fabs(before[t][i]));
        }
        INFO("tensor " << tp.name << " step " << step);
        CHECK(worst <= 1e-6 * std::max(1.0, scale));
      }
    }
  }
}

TEST_CASE("optimizers on different thread counts stay bit-identical over many steps", "[optimizer]") {
  Replica a(kSpecs, options(1), 5), b(kSpecs, options(2), 5), c(kSpecs, options(3), 5);
  for (uint64_t step = 1; step <= 25; ++step) {
    for (Replica* r : {&a, &b, &c}) r->random_grads(step);
    std::vector<std::vector<uint8_t>> bytes;
    for (Replica* r : {&a, &b, &c}) bytes.push_back(encode_payload(r->opt->manifest(), r->opt->compress(step, 0.01f)));
    REQUIRE(bytes[0] == bytes[1]);
    REQUIRE(bytes[0] == bytes[2]);
    Merger mg(a.opt->manifest(), 77, step);
    mg.add(bytes[0]);
    auto u = encode_update(a.opt->manifest(), mg.finish(0.01f, 0.1f, 0));
    for (Replica* r : {&a, &b, &c}) r->opt->apply(decode_update(r->opt->manifest(), u));
  }
  for (size_t t = 0; t < kSpecs.size(); ++t) {
    CHECK(bit_equal(a.params[t], b.params[t]));
    CHECK(bit_equal(a.params[t], c.params[t]));
    CHECK(bit_equal(a.opt->momentum(t), c.opt->momentum(t)));
  }
  CHECK(a.opt->param_hash() == b.opt->param_hash());
  CHECK(a.opt->param_hash() == c.opt->param_hash());
}

TEST_CASE("peers with different gradients apply the same update and agree bit for bit", "[optimizer]") {
  const int kPeers = 4;
  std::vector<std::unique_ptr<Replica>> peers;
  for (int p = 0; p < kPeers; ++p) peers.push_back(std::make_unique<Replica>(kSpecs, options(1 + p % 2, ValueMode::int8, p), 9));
  uint64_t before = peers[0]->opt->param_hash();
  for (uint64_t step = 1; step <= 10; ++step) {
    Merger mg(peers[0]->opt->manifest(), 77, step);
    for (int p = 0; p < kPeers; ++p) {
      peers[p]->random_grads(step * 100 + p);
      mg.add(encode_payload(peers[p]->opt->manifest(), peers[p]->opt->compress(step, 0.01f)));
    }
    auto u = encode_update(peers[0]->opt->manifest(), mg.finish(0.01f, 0.0f, 0));
    for (auto& r : peers) r->opt->apply(decode_update(r->opt->manifest(), u));
    for (int p = 1; p < kPeers; ++p) REQUIRE(peers[p]->opt->param_hash() == peers[0]->opt->param_hash());
  }
  CHECK(peers[0]->opt->param_hash() != before);
}

TEST_CASE("merging does not depend on the order payloads arrive in", "[merge]") {
  std::vector<std::unique_ptr<Replica>> peers;
  std::vector<std::vector<uint8_t>> bytes;
  for (int p = 0; p < 5; ++p) {
    peers.push_back(std::make_unique<Replica>(kSpecs, options(1, ValueMode::sign, p), 9));
    peers.back()->random_grads(p);
    bytes.push_back(encode_payload(peers.back()->opt->manifest(), peers.back()->opt->compress(1, 0.01f)));
  }
  const Manifest& m = peers[0]->opt->manifest();
  auto merged = [&](std::vector<int> order) {
    Merger mg(m, 77, 1);
    for (int i : order) mg.add(bytes[i]);
    return encode_update(m, mg.finish(0.01f, 0.1f, 123));
  };
  auto ref = merged({0, 1, 2, 3, 4});
  CHECK(ref == merged({4, 3, 2, 1, 0}));
  CHECK(ref == merged({2, 0, 4, 1, 3}));
}

TEST_CASE("the merger refuses wrong run, wrong step, a repeated peer and use after finish", "[merge]") {
  Replica r(kSpecs, options(1), 1);
  r.random_grads(1);
  const Manifest& m = (r.opt->freeze(), r.opt->manifest());
  auto bytes = encode_payload(m, r.opt->compress(3, 0.01f));
  auto expect = [](auto fn, Code code, const char* words) {
    try {
      fn();
      FAIL("expected an error");
    } catch (const Error& e) {
      CHECK(e.code() == code);
      CHECK_THAT(e.what(), Catch::Contains(words));
    }
  };
  expect([&] { Merger(m, 78, 3).add(bytes); }, Code::mismatch, "run 77");
  expect([&] { Merger(m, 77, 4).add(bytes); }, Code::mismatch, "step 3");
  Merger mg(m, 77, 3);
  mg.add(bytes);
  expect([&] { mg.add(bytes); }, Code::state, "peer 0 was already added");
  CHECK(mg.count() == 1);
  expect([&] { mg.finish(NAN, 0.0f, 0); }, Code::invalid_argument, "learning rate");
  expect([&] { mg.finish(0.1f, -1.0f, 0); }, Code::invalid_argument, "weight decay");
  expect([&] { mg.finish(1.0f, 2.0f, 0); }, Code::invalid_argument, "times weight decay");
  mg.finish(0.1f, 0.0f, 0);
  expect([&] { mg.add(bytes); }, Code::state, "finished");
  expect([&] { mg.finish(0.1f, 0.0f, 0); }, Code::state, "already finished");
}

TEST_CASE("a non-finite gradient is refused and changes no state", "[optimizer]") {
  Replica r(kSpecs, options(2), 1);
  r.random_grads(1);
  r.opt->compress(1, 0.01f);
  auto m0 = r.opt->momentum(0), m2 = r.opt->momentum(2);
  r.random_grads(2);
  r.grads[2][17] = NAN;
  try {
    r.opt->compress(2, 0.01f);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == Code::numeric);
    CHECK_THAT(e.what(), Catch::Contains("tensor 'e'") && Catch::Contains("element 17"));
  }
  CHECK(bit_equal(r.opt->momentum(0), m0));
  CHECK(bit_equal(r.opt->momentum(2), m2));
  r.grads[2][17] = INFINITY;
  CHECK_THROWS_AS(r.opt->compress(2, 0.01f), Error);
  // A finite but huge learning rate overflows the momentum: refused the same way.
  r.grads[2][17] = 1.0f;
  try {
    r.opt->compress(2, 3e38f);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == Code::numeric);
    CHECK_THAT(e.what(), Catch::Contains("overflows the momentum"));
  }
  CHECK(bit_equal(r.opt->momentum(0), m0));
  r.grads[2][17] = 0.0f;
  CHECK_NOTHROW(r.opt->compress(2, 0.01f));
}

namespace {

// A CPU device that counts the optimizer's passes over the whole model: the per-element gradient
// check and the sums of squares.
class CountingDevice final : public Device {
 public:
  CpuDevice cpu{2};
  int checks = 0, norms = 0;
  const DeviceInfo& info() const override { return cpu.info(); }
  DeviceMemory alloc(size_t bytes) override { return cpu.alloc(bytes); }
  void release(void* p) noexcept override { cpu.release(p); }
  void upload(void* d, const void* s, size_t n) override { cpu.upload(d, s, n); }
  void download(void* d, const void* s, size_t n) override { cpu.download(d, s, n); }
  void zero(void* d, size_t n) override { cpu.zero(d, n); }
  void compress(const CompressArgs& a) override { cpu.compress(a); }
  void apply(const ApplyArgs& a) override { cpu.apply(a); }
  uint64_t hash(const float* x, uint64_t n, uint64_t salt) override { return cpu.hash(x, n, salt); }
  double sum_squares(const float* x, uint64_t n) override { return cpu.sum_squares(x, n); }
  uint64_t first_nonfinite_momentum(const float* d, const float* g, float beta, float lr, uint64_t n) override {
    return cpu.first_nonfinite_momentum(d, g, beta, lr, n);
  }
  void first_nonfinite_momentum_many(const float* const* d, const float* const* g, const uint64_t* n, float beta,
                                     float lr, size_t count, uint64_t* out) override {
    ++checks;
    Device::first_nonfinite_momentum_many(d, g, n, beta, lr, count, out);
  }
  void sum_squares_many(const float* const* x, const uint64_t* n, size_t count, double* out) override {
    ++norms;
    Device::sum_squares_many(x, n, count, out);
  }
};

double l2(const std::vector<std::vector<float>>& v) {
  double ss = 0.0;
  for (const auto& t : v)
    for (float x : t) ss += double(x) * x;
  return std::sqrt(ss);
}

}  // namespace

TEST_CASE("a known gradient norm skips the per-element check only where overflow is impossible",
          "[optimizer]") {
  CountingDevice dev;
  Replica a(kSpecs, options(2), 1);  // for the layout of params and grads; its own optimizer checks
  OptimizerOptions o = options(2);
  Optimizer opt(o, dev);
  for (size_t t = 0; t < kSpecs.size(); ++t) opt.add_tensor(kSpecs[t].name, kSpecs[t].shape, a.params[t].data(), a.grads[t].data());

  // Step 1: momentum zero, finite norm: no check, and the payload is the checked one's.
  a.random_grads(1);
  const PeerPayload p1 = opt.compress(1, 0.01f, l2(a.grads));
  CHECK(dev.checks == 0);
  const PeerPayload want = a.opt->compress(1, 0.01f);
  CHECK(p1.index == want.index);
  CHECK(p1.value == want.value);
  CHECK(bit_equal(opt.momentum(0), a.opt->momentum(0)));
  CHECK(opt.momentum_bound() >= 0.01 * l2(a.grads));
  // The bound holds: it is at least the momentum's norm.
  std::vector<std::vector<float>> mom;
  for (size_t t = 0; t < kSpecs.size(); ++t) mom.push_back(opt.momentum(t));
  CHECK(l2(mom) <= opt.momentum_bound());

  // No norm: the check runs and the bound becomes unknown; the next known norm measures it once.
  a.random_grads(2);
  opt.compress(2, 0.01f);
  CHECK(dev.checks == 1);
  CHECK(std::isinf(opt.momentum_bound()));
  mom.clear();
  for (size_t t = 0; t < kSpecs.size(); ++t) mom.push_back(opt.momentum(t));
  const double before = l2(mom);
  a.random_grads(3);
  const double g3 = l2(a.grads);
  opt.compress(3, 0.01f, g3);
  CHECK(dev.checks == 1);
  CHECK(dev.norms == 1);
  mom.clear();
  for (size_t t = 0; t < kSpecs.size(); ++t) mom.push_back(opt.momentum(t));
  CHECK(l2(mom) <= opt.momentum_bound());
  // Measured, then grown by one step: tight, not merely finite.
  CHECK(opt.momentum_bound() <= (0.9 * before + 0.01 * g3) * 1.01);

  // A NaN norm (what the norm of a NaN gradient is): the check runs and refuses the step.
  a.random_grads(4);
  a.grads[2][17] = NAN;
  CHECK_THROWS_AS(opt.compress(4, 0.01f, l2(a.grads)), Error);
  CHECK(dev.checks == 2);

  // Momentum restored at a size the bound cannot clear: the check runs again.
  a.grads[2][17] = 1.0f;
  opt.set_momentum(0, std::vector<float>(opt.manifest().tensors[0].numel, 1e31f));
  CHECK(opt.momentum_bound() > 1e30);
  opt.compress(5, 0.01f, l2(a.grads));
  CHECK(dev.checks == 3);
}

TEST_CASE("tensors cannot be added after the first step, and options are checked", "[optimizer]") {
  Replica r(kSpecs, options(1), 1);
  r.opt->compress(1, 0.01f);
  std::vector<float> p(4), g(4);
  try {
    r.opt->add_tensor("late", {4}, p.data(), g.data());
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == Code::state);
  }
  auto bad = [](auto mutate, const char* words) {
    OptimizerOptions o;
    mutate(o);
    try {
      Optimizer x(o);
      FAIL("expected an error");
    } catch (const Error& e) {
      CHECK(e.code() == Code::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains(words));
    }
  };
  bad([](OptimizerOptions& o) { o.decay = 1.0f; }, "decay");
  bad([](OptimizerOptions& o) { o.decay = NAN; }, "decay");
  bad([](OptimizerOptions& o) { o.chunk = 0; }, "chunk");
  bad([](OptimizerOptions& o) { o.topk = 0; }, "topk");
  OptimizerOptions o;
  o.device = "cuda:9";
  try {
    Optimizer x(o);
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == Code::not_found);
    CHECK_THAT(e.what(), Catch::Contains("devices present: cpu"));
  }
}

// The published DeMo step (distro-algorithm.md 1.4) in float64 for one peer with sign values:
// delta = beta*delta + lr*g; C = blockDCT(delta); top-k per chunk; delta -= IDCT(sent);
// U = IDCT(sign(sent)); p = p*(1 - lr*wd) - lr*sign(U).
TEST_CASE("the whole step matches a float64 implementation of the DeMo step", "[optimizer][demo]") {
  const float lr = 0.01f, wd = 0.1f, beta = 0.9f;
  Replica r(kSpecs, options(2), 11);
  const Manifest& m = (r.opt->freeze(), r.opt->manifest());
  DctTables tables(m);
  uint64_t compared_sel = 0, compared_params = 0, skipped = 0;
  for (uint64_t step = 1; step <= 5; ++step) {
    r.random_grads(step + 40);
    // Float64 reference from this step's starting state (resynchronised each step).
    std::vector<std::vector<double>> delta(m.tensors.size()), params(m.tensors.size());
    for (size_t t = 0; t < m.tensors.size(); ++t) {
      auto d = r.opt->momentum(t);
      delta[t].assign(d.begin(), d.end());
      params[t].assign(r.params[t].begin(), r.params[t].end());
    }
    PeerPayload p = r.opt->compress(step, lr);
    Merger mg(m, 77, step);
    mg.add(p);
    r.opt->apply(mg.finish(lr, wd, 0));
    size_t cursor = 0;
    for (size_t t = 0; t < m.tensors.size(); ++t) {
      const TensorPlan& tp = m.tensors[t];
      std::vector<double> coef(tp.numel), sent(tp.numel, 0.0), signs(tp.numel, 0.0), back(tp.numel), u(tp.numel);
      for (uint64_t i = 0; i < tp.numel; ++i) delta[t][i] = double(beta) * delta[t][i] + double(lr) * r.grads[t][i];
      block_dct_forward(tp, tables, delta[t].data(), coef.data());
      for (uint64_t c = 0; c < tp.chunks; ++c) {
        const double* y = coef.data() + c * tp.elems();
        std::vector<uint32_t> order(tp.elems());
        for (uint32_t i = 0; i < tp.elems(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return std::fabs(y[a]) > std::fabs(y[b]); });
        std::vector<uint16_t> want(order.begin(), order.begin() + tp.k);
        std::sort(want.begin(), want.end());
        std::vector<uint16_t> got(p.index.begin() + cursor, p.index.begin() + cursor + p.count[tp.chunk_base + c]);
        cursor += got.size();
        // Skip chunks whose k-th and (k+1)-th magnitudes are too close to call in float32.
        bool clear = tp.k == tp.elems() ||
                     std::fabs(y[order[tp.k - 1]]) - std::fabs(y[order[tp.k]]) > 1e-5 * std::fabs(y[order[0]]);
        if (!clear) {
          ++skipped;
          continue;
        }
        ++compared_sel;
        REQUIRE(got == want);
        for (uint16_t i : want) {
          sent[c * tp.elems() + i] = y[i];
          signs[c * tp.elems() + i] = y[i] < 0 ? -1.0 : 1.0;
        }
      }
      block_dct_inverse(tp, tables, sent.data(), back.data());
      block_dct_inverse(tp, tables, signs.data(), u.data());
      auto residual = r.opt->momentum(t);
      for (uint64_t i = 0; i < tp.numel; ++i) {
        REQUIRE(residual[i] == Approx(delta[t][i] - back[i]).margin(1e-6));
        if (std::fabs(u[i]) < 1e-3) continue;  // sign too close to call after the integer basis
        double want = params[t][i] * (1.0 - double(lr) * wd) - double(lr) * (u[i] > 0 ? 1.0 : -1.0);
        ++compared_params;
        REQUIRE(r.params[t][i] == Approx(want).epsilon(1e-6).margin(1e-7));
      }
    }
  }
  INFO("chunks compared " << compared_sel << ", skipped as near-ties " << skipped);
  CHECK(skipped * 100 <= compared_sel);
  CHECK(compared_params > 100000);
}

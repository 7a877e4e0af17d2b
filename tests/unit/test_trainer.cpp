// Local multi-peer training: replicas agree bit for bit, resume is exact, bad input is refused.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.hpp"
#include "model/llama.hpp"
#include "train/checkpoint.hpp"
#include "train/replica.hpp"
#include "train/schedule.hpp"
#include "train/trainer.hpp"

using namespace distro;
namespace fs = std::filesystem;

namespace {

// A scratch folder with a small generated corpus, removed at the end of the test.
struct Scratch {
  fs::path dir;
  Scratch() {
    dir = fs::temp_directory_path() / ("distro-train-" + std::to_string(::getpid()) + "-" + std::to_string(rand()));
    fs::create_directories(dir);
    std::ofstream f(dir / "text.txt");
    for (int i = 0; i < 400; ++i)
      f << "In the beginning line " << i << " the quick brown fox jumps over the lazy dog; "
        << (i * 7919 % 1000) << " and so on.\n";
  }
  ~Scratch() { fs::remove_all(dir); }
  std::string text() const { return (dir / "text.txt").string(); }
};

TrainConfig tiny(const Scratch& s, const std::string& optimizer = "distro") {
  TrainConfig c;
  c.preset = "nano";
  c.data = s.text();
  c.devices = {"cpu", "cpu"};
  c.optimizer = optimizer;
  c.steps = 20;
  c.batch = 2;
  c.seq = 32;
  c.eval_batches = 2;
  c.threads = 1;
  return c;
}

std::vector<float> params_of(Trainer& t, size_t peer) {
  std::vector<float> out;
  for (const auto& ts : t.model(peer).tensors()) out.insert(out.end(), ts.param, ts.param + ts.numel);
  return out;
}

template <class F>
void expect_error(F fn, Code code, const std::string& words) {
  try {
    fn();
    FAIL("expected an error containing '" << words << "'");
  } catch (const Error& e) {
    CHECK(e.code() == code);
    CHECK_THAT(e.what(), Catch::Contains(words));
  }
}

}  // namespace

TEST_CASE("the schedule warms up linearly and decays by cosine to the floor", "[train]") {
  CHECK(scheduled_lr(1, 100, 10, 1.0f, 0.1f) == Approx(0.1f));
  CHECK(scheduled_lr(10, 100, 10, 1.0f, 0.1f) == Approx(1.0f));
  CHECK(scheduled_lr(55, 100, 10, 1.0f, 0.1f) == Approx(0.55f));
  CHECK(scheduled_lr(100, 100, 10, 1.0f, 0.1f) == Approx(0.1f));
}

TEST_CASE("replicas stay bit-identical across peers with different thread counts", "[train]") {
  Scratch s;
  for (const char* opt : {"distro", "adamw"}) {
    TrainConfig c = tiny(s, opt);
    c.steps = 6;
    c.threads = 1;
    Trainer one(c);
    c.threads = 2;
    Trainer two(c);
    for (int i = 0; i < 6; ++i) {
      StepStats a = one.step(), b = two.step();
      REQUIRE(a.hashes.size() == 2);
      REQUIRE(a.hashes[0] == a.hashes[1]);  // the peers of one run agree (the trainer checks it too)
      REQUIRE(a.hashes[0] == b.hashes[0]);  // and the thread count changes nothing
      REQUIRE(a.train_loss == b.train_loss);
    }
    CHECK(params_of(one, 0) == params_of(two, 1));
  }
}

TEST_CASE("20 steps equal 10 steps, checkpoint, resume, 10 steps, bit for bit", "[train]") {
  Scratch s;
  for (const char* opt : {"distro", "adamw"}) {
    TrainConfig c = tiny(s, opt);
    Trainer straight(c);
    for (int i = 0; i < 20; ++i) straight.step();

    Trainer first(c);
    for (int i = 0; i < 10; ++i) first.step();
    std::string ck = (s.dir / (std::string("ckpt-") + opt)).string();
    first.save(ck);
    auto resumed = Trainer::resume(ck);
    CHECK(resumed->steps_done() == 10);
    StepStats last;
    for (int i = 0; i < 10; ++i) last = resumed->step();
    CHECK(last.step == 20);
    CHECK(resumed->replica_hashes() == straight.replica_hashes());
    CHECK(params_of(*resumed, 0) == params_of(straight, 0));
    CHECK(resumed->evaluate() == straight.evaluate());
    expect_error([&] { resumed->step(); }, Code::state, "the run is complete");
  }
}

TEST_CASE("DisTrO training lowers the loss and sends far less than an all-reduce", "[train]") {
  Scratch s;
  TrainConfig c = tiny(s);
  c.steps = 30;
  c.lr = 2e-3f;
  Trainer t(c);
  double before = t.evaluate();
  StepStats last;
  for (int i = 0; i < 30; ++i) last = t.step();
  double after = t.evaluate();
  CHECK(after < before - 0.5);
  CHECK(double(t.allreduce_bytes_per_peer()) / double(last.bytes_up_per_peer + last.bytes_down_per_peer) > 100.0);
}

TEST_CASE("bad training settings are refused with clear errors", "[train]") {
  Scratch s;
  auto bad = [&](auto mutate, Code code, const char* words) {
    TrainConfig c = tiny(s);
    mutate(c);
    expect_error([&] { Trainer t(c); }, code, words);
  };
  bad([](TrainConfig& c) { c.optimizer = "sgd"; }, Code::invalid_argument, "optimizer 'sgd' is unknown");
  bad([](TrainConfig& c) { c.devices.clear(); }, Code::invalid_argument, "peers");
  bad([](TrainConfig& c) { c.batch = 0; }, Code::invalid_argument, "batch is 0");
  bad([](TrainConfig& c) { c.micro_batch = 3; c.batch = 4; }, Code::invalid_argument, "divisor of the batch 4");
  bad([](TrainConfig& c) { c.seq = 100000; }, Code::invalid_argument, "exceeds the nano model's maximum");
  bad([](TrainConfig& c) { c.decay = 1.0f; }, Code::invalid_argument, "decay");
  bad([](TrainConfig& c) { c.preset = "huge"; }, Code::not_found, "huge");
  bad([](TrainConfig& c) { c.devices = {"cpu", "cuda:7"}; }, Code::not_found, "no device named 'cuda:7'");
  bad([&](TrainConfig& c) { c.data = (s.dir / "missing.txt").string(); }, Code::not_found, "missing.txt");
  bad([](TrainConfig& c) { c.data = ""; }, Code::invalid_argument, "no training data");
}

TEST_CASE("truncated, damaged and foreign checkpoint files are refused", "[train]") {
  Scratch s;
  TrainConfig c = tiny(s);
  c.steps = 4;
  Trainer t(c);
  t.step();
  std::string ck = (s.dir / "ck").string();
  t.save(ck);
  fs::path file = fs::path(ck) / "checkpoint.bin";
  std::vector<char> good;
  {
    std::ifstream f(file, std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  auto write = [&](const std::vector<char>& bytes) {
    std::ofstream f(file, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), std::streamsize(bytes.size()));
  };
  auto resume = [&] { Trainer::resume(ck); };

  write(std::vector<char>(good.begin(), good.end() - 100));
  expect_error(resume, Code::corrupt, "truncated");
  auto flipped = good;
  flipped[flipped.size() / 2] ^= 0x10;
  write(flipped);
  expect_error(resume, Code::corrupt, "checksum");
  auto foreign = good;
  std::memcpy(foreign.data(), "GGUF\0\0\0\0", 8);
  write(foreign);
  expect_error(resume, Code::corrupt, "not a libdistro checkpoint");
  auto newer = good;
  newer[8] = 9;
  write(newer);
  expect_error(resume, Code::mismatch, "version 9");
  write({'x'});
  expect_error(resume, Code::corrupt, "shorter than any checkpoint");
  fs::remove(file);
  expect_error(resume, Code::not_found, "no checkpoint");
  write(good);
  CHECK_NOTHROW(resume());
}

TEST_CASE("overlap applies each update one step late, ends with all of them, and resumes exactly", "[train]") {
  Scratch s;
  TrainConfig c = tiny(s);
  c.steps = 12;
  c.lr = 2e-3f;
  c.overlap = true;
  Trainer t(c);
  const auto start = t.replica_hashes();
  StepStats first = t.step();
  CHECK(first.hashes == start);  // step 1's update is still "on the wire"
  StepStats second = t.step();
  CHECK(second.hashes[0] != start[0]);  // step 1's update landed during step 2
  for (int i = 2; i < 12; ++i) t.step();

  // Not the same trajectory as the plain run, but it trains as well on this toy corpus.
  TrainConfig plain = c;
  plain.overlap = false;
  Trainer p(plain);
  for (int i = 0; i < 12; ++i) p.step();
  CHECK(p.replica_hashes() != t.replica_hashes());
  CHECK(t.evaluate() < p.evaluate() + 0.25);

  // A checkpoint taken mid-run carries the pending update.
  Trainer a(c);
  for (int i = 0; i < 5; ++i) a.step();
  const std::string ck = (s.dir / "ckpt-overlap").string();
  a.save(ck);
  auto resumed = Trainer::resume(ck);
  CHECK(resumed->config().overlap);
  for (int i = 5; i < 12; ++i) resumed->step();
  CHECK(resumed->replica_hashes() == t.replica_hashes());

  c.optimizer = "adamw";
  expect_error([&] { Trainer bad(c); }, Code::invalid_argument, "overlap needs the distro optimizer");
}

TEST_CASE("the replica hands its measured gradient norm to the optimizer, and only that gradient's", "[train]") {
  Scratch s;
  TrainConfig c = tiny(s);
  const LlamaConfig mc = llama_preset("nano", 257);
  std::vector<int32_t> tok(size_t(c.batch) * c.seq), tgt(tok.size());
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t((i * 37) % 257), tgt[i] = int32_t((i * 91 + 5) % 257);
  Replica r(c, mc, 0, 9, "cpu");
  // Measured (train_batch): the optimizer's momentum bound stays known, so its check can be skipped.
  r.train_batch(tok.data(), tgt.data());
  r.compress_payload(1, 3e-3f);
  CHECK(std::isfinite(r.optimizer().momentum_bound()));
  // A new gradient whose norm was not measured: no stale norm goes along, the bound becomes unknown.
  r.compute_grad(tok.data(), tgt.data());
  r.compress_payload(2, 3e-3f);
  CHECK(std::isinf(r.optimizer().momentum_bound()));
}

TEST_CASE("DisTrO's clip folds the factor into the compress's learning rate", "[train]") {
  Scratch s;
  TrainConfig c = tiny(s);
  c.clip = 0.01f;  // far below the norm of a fresh model's gradient: the factor is in play
  const LlamaConfig mc = llama_preset("nano", 257);
  std::vector<int32_t> tok(size_t(c.batch) * c.seq), tgt(tok.size());
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = int32_t((i * 37) % 257), tgt[i] = int32_t((i * 91 + 5) % 257);
  const float lr = 3e-3f;
  Replica clipped(c, mc, 0, 9, "cpu"), plain(c, mc, 0, 9, "cpu"), unclipped(c, mc, 0, 9, "cpu");
  const GradStats g = clipped.train_batch(tok.data(), tgt.data());
  REQUIRE(g.grad_norm > c.clip);
  const PeerPayload a = clipped.compress_payload(1, lr);
  // The same gradient, never clipped, compressed with lr times the factor: the same bits.
  plain.compute_grad(tok.data(), tgt.data());
  const PeerPayload b = plain.optimizer().compress(1, lr * float(double(c.clip) / g.grad_norm));
  CHECK(a.index == b.index);
  CHECK(a.value == b.value);
  CHECK(a.count == b.count);
  for (size_t t = 0; t < clipped.tensor_count(); ++t) CHECK(clipped.state(t) == plain.state(t));
  // Without the factor the momentum differs: the clip did something.
  unclipped.compute_grad(tok.data(), tgt.data());
  unclipped.compress_payload(1, lr);
  CHECK(clipped.state(0) != unclipped.state(0));
  // A new gradient starts with no factor: step 2 without a clip matches the replica never clipped
  // (the same momentum so far), which it would not if the old factor stuck.
  clipped.compute_grad(tok.data(), tgt.data());
  plain.compute_grad(tok.data(), tgt.data());
  clipped.compress_payload(2, lr);
  plain.compress_payload(2, lr);
  for (size_t t = 0; t < clipped.tensor_count(); ++t) CHECK(clipped.state(t) == plain.state(t));
}

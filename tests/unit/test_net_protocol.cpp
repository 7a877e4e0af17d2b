// The network protocol without sockets: every message's strict decoder (round trips and each
// rejection), the frame bounds derived from the manifest, the batch queue and slot assignment, the
// round state machine's rules, the run configuration and the run checkpoint format.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.hpp"
#include "data/dataset.hpp"
#include "data/sampler.hpp"
#include "net/batch_queue.hpp"
#include "net/limits.hpp"
#include "net/protocol.hpp"
#include "net/round_state.hpp"
#include "net/run_checkpoint.hpp"
#include "net/run_config.hpp"
#include "optim/merger.hpp"
#include "wire/codec.hpp"

using namespace distro;
using namespace distro::net;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<uint8_t>;

// Requires that f() throws Error with this code and a message containing `words`.
template <class F>
void rejects(F&& f, Code code, const std::string& words) {
  try {
    f();
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.code() == code);
    CHECK(std::string(e.what()).find(words) != std::string::npos);
    return;
  }
  FAIL("accepted; expected a rejection mentioning '" << words << "'");
}

// Every proper prefix of a valid body is refused as truncated/corrupt, as is one trailing byte.
template <class D>
void strict_length(const Bytes& body, D decode) {
  for (size_t n = 0; n < body.size(); ++n) {
    Bytes cut(body.begin(), body.begin() + n);
    INFO("prefix of " << n << " bytes");
    CHECK_THROWS_AS(decode(cut), Error);
  }
  Bytes more = body;
  more.push_back(0);
  rejects([&] { decode(more); }, Code::corrupt, "");
}

RunInfo run_info() {
  RunInfo r;
  r.preset = "nano";
  r.vocab = 256;
  r.batch = 2;
  r.micro_batch = 1;
  r.seq = 4;
  r.clip = 1.0f;
  r.chunk = 64;
  r.topk = 4;
  r.decay = 0.999f;
  r.values = ValueMode::sign;
  r.seed = 7;
  r.total_steps = 100;
  r.nodes_per_round = 4;
  return r;
}

Welcome welcome() {
  Welcome w;
  w.node_id = 3;
  w.node_name = "alice";
  w.run_id = 0x1234;
  w.manifest_hash = 0xABCD;
  w.step = 12;
  w.param_hash = 0x5555;
  w.deadline_ms = 60000;
  w.run = run_info();
  return w;
}

RoundStart round_start() {
  RoundStart m;
  m.step = 13;
  m.lr = 0.003f;
  m.batch_id = 48;
  m.slot = 1;
  m.deadline_ms = 1000;
  m.batch = 2;
  m.seq = 4;
  for (int i = 0; i < 8; ++i) {
    m.tokens.push_back(i * 30);
    m.targets.push_back(i * 30 + 1);
  }
  return m;
}

// Byte offset helpers: set a little-endian field inside an encoded body.
void put(Bytes& b, size_t at, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b[at + i] = uint8_t(v >> (8 * i));
}

}  // namespace

TEST_CASE("net protocol: every message survives encode and decode", "[net]") {
  Hello h{kProtocolVersion, "secret-token-0123456789", "distro node"};
  Hello h2 = decode_hello(encode(h));
  CHECK(h2.token == h.token);
  CHECK(h2.agent == h.agent);

  Welcome w = welcome(), w2 = decode_welcome(encode(welcome()));
  CHECK(w2.node_id == w.node_id);
  CHECK(w2.node_name == w.node_name);
  CHECK(w2.run_id == w.run_id);
  CHECK(w2.manifest_hash == w.manifest_hash);
  CHECK(w2.step == w.step);
  CHECK(w2.param_hash == w.param_hash);
  CHECK(w2.run.preset == "nano");
  CHECK(w2.run.micro_batch == 1);
  CHECK(w2.run.decay == w.run.decay);
  CHECK(w2.run.nodes_per_round == 4);

  CHECK(decode_sync(encode(Sync{5, 6})).hash == 6);
  CHECK(decode_checkpoint_request(encode(CheckpointRequest{9})).have_step == 9);

  CheckpointInfo ci{4, 77, 2500000, kCheckpointChunkBytes, 3, {}};
  ci.sha256[0] = 0xEE;
  CheckpointInfo ci2 = decode_checkpoint_info(encode(ci), 1u << 30);
  CHECK(ci2.total_bytes == 2500000);
  CHECK(ci2.sha256[0] == 0xEE);
  CheckpointChunk ch{4, 2, Bytes(2500000 - 2 * kCheckpointChunkBytes, 7)};
  CHECK(decode_checkpoint_chunk(encode(ch), ci).data.size() == ch.data.size());

  RoundStart r2 = decode_round_start(encode(round_start()), run_info());
  CHECK(r2.tokens == round_start().tokens);
  CHECK(r2.targets == round_start().targets);
  CHECK(r2.lr == 0.003f);
  CHECK(r2.batch_id == 48);

  PayloadMsg p{13, 0x99, 1, 48, Bytes(100, 1)};
  PayloadMsg p2 = decode_payload_msg(encode(p), 1000);
  CHECK(p2.wire == p.wire);
  CHECK(p2.base_hash == 0x99);
  CHECK(p2.batch_id == 48);

  UpdateMsg u{13, {2, 5, 9}, Bytes(80, 3)};
  UpdateMsg u2 = decode_update_msg(encode(u), 1000, 4);
  CHECK(u2.contributors == u.contributors);
  CHECK(u2.wire == u.wire);

  CHECK(decode_hash_report(encode(HashReport{3, 4})).hash == 4);
  CHECK(decode_resync(encode(Resync{3, 4, "hash differs"})).reason == "hash differs");
  CHECK(decode_notice(encode(Notice{NoticeCode::run_complete, 50})).code == NoticeCode::run_complete);
  CHECK(decode_error(encode(ErrorMsg{ErrorCode::auth, "no"})).code == ErrorCode::auth);
  CHECK(decode_ping(encode(Ping{42})).nonce == 42);
}

TEST_CASE("net protocol: every decoder refuses short and long bodies", "[net]") {
  CheckpointInfo ci{4, 77, 100, 64, 2, {}};
  strict_length(encode(Hello{kProtocolVersion, "token-abcdefghijklmnop", "x"}), [](const Bytes& b) { decode_hello(b); });
  strict_length(encode(welcome()), [](const Bytes& b) { decode_welcome(b); });
  strict_length(encode(Sync{1, 2}), [](const Bytes& b) { decode_sync(b); });
  strict_length(encode(CheckpointRequest{1}), [](const Bytes& b) { decode_checkpoint_request(b); });
  strict_length(encode(ci), [](const Bytes& b) { decode_checkpoint_info(b, 1000); });
  strict_length(encode(CheckpointChunk{4, 1, Bytes(36, 1)}), [&](const Bytes& b) { decode_checkpoint_chunk(b, ci); });
  strict_length(encode(round_start()), [](const Bytes& b) { decode_round_start(b, run_info()); });
  strict_length(encode(HashReport{1, 2}), [](const Bytes& b) { decode_hash_report(b); });
  strict_length(encode(Resync{1, 2, "r"}), [](const Bytes& b) { decode_resync(b); });
  strict_length(encode(Notice{NoticeCode::node_paused, 1}), [](const Bytes& b) { decode_notice(b); });
  strict_length(encode(ErrorMsg{ErrorCode::busy, "r"}), [](const Bytes& b) { decode_error(b); });
  strict_length(encode(Ping{1}), [](const Bytes& b) { decode_ping(b); });
  // Payload and update bodies end in the wire message, so "long" means past the manifest's bound.
  Bytes pm = encode(PayloadMsg{1, 2, 0, 0, Bytes(48, 0)});
  for (size_t n = 0; n < pm.size(); ++n) CHECK_THROWS_AS(decode_payload_msg(Bytes(pm.begin(), pm.begin() + n), 48), Error);
  rejects([&] { Bytes b = pm; b.push_back(0); decode_payload_msg(b, 48); }, Code::corrupt, "expected 48..48");
  Bytes um = encode(UpdateMsg{1, {1}, Bytes(64, 0)});
  for (size_t n = 0; n < um.size(); ++n) CHECK_THROWS_AS(decode_update_msg(Bytes(um.begin(), um.begin() + n), 64, 1), Error);
  rejects([&] { Bytes b = um; b.push_back(0); decode_update_msg(b, 64, 1); }, Code::corrupt, "expected 64..64");
}

TEST_CASE("net protocol: hello refuses another version and bad tokens", "[net]") {
  Bytes b = encode(Hello{kProtocolVersion, "token-abcdefghijklmnop", ""});
  Bytes v = b;
  put(v, 0, 2, 2);
  rejects([&] { decode_hello(v); }, Code::mismatch, "protocol version 2");
  rejects([&] { decode_hello(encode(Hello{kProtocolVersion, "", ""})); }, Code::corrupt, "'token' is 0 bytes");
  rejects([&] { decode_hello(encode(Hello{kProtocolVersion, std::string(kMaxToken + 1, 'a'), ""})); }, Code::corrupt,
          "expected 1..256");
  rejects([&] { decode_hello(encode(Hello{kProtocolVersion, std::string("tok\x01zz", 6), ""})); }, Code::corrupt,
          "printable ASCII");
  // Agent text is made printable by the encoder rather than refused.
  CHECK(decode_hello(encode(Hello{kProtocolVersion, "t", "a\nb"})).agent == "a?b");
}

TEST_CASE("net protocol: welcome refuses settings out of range", "[net]") {
  auto with = [](auto change) {
    Welcome w = welcome();
    change(w);
    return encode(w);
  };
  rejects([&] { decode_welcome(with([](Welcome& w) { w.node_id = 0; })); }, Code::corrupt, "node id 0");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.deadline_ms = 0; })); }, Code::corrupt, "deadline");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.values = ValueMode(3); })); }, Code::corrupt, "value mode 3");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.batch = 0; })); }, Code::corrupt, "batch 0");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.batch = 65536, w.run.seq = 65536; })); }, Code::corrupt,
          "batch * seq");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.micro_batch = 3; })); }, Code::corrupt, "micro-batch 3");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.chunk = 0; })); }, Code::corrupt, "chunk 0");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.decay = 1.0f; })); }, Code::corrupt, "decay");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.clip = NAN; })); }, Code::corrupt, "clip");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.vocab = 0; })); }, Code::corrupt, "vocab 0");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.run.nodes_per_round = 0; })); }, Code::corrupt, "nodes per round 0");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.step = 101; })); }, Code::corrupt, "past the run's 100 steps");
  rejects([&] { decode_welcome(with([](Welcome& w) { w.node_name = ""; })); }, Code::corrupt, "'node name' is 0 bytes");
}

TEST_CASE("net protocol: checkpoint transfer messages are bounded by what the node expects", "[net]") {
  CheckpointInfo ci{4, 77, 1000, 300, 4, {}};
  CHECK(decode_checkpoint_info(encode(ci), 1000).chunks == 4);
  rejects([&] { decode_checkpoint_info(encode(ci), 999); }, Code::corrupt, "expected 1..999");
  CheckpointInfo zero = ci;
  zero.total_bytes = 0;
  rejects([&] { decode_checkpoint_info(encode(zero), 1000); }, Code::corrupt, "checkpoint of 0 bytes");
  CheckpointInfo big = ci;
  big.chunk_bytes = kCheckpointChunkBytes + 1;
  rejects([&] { decode_checkpoint_info(encode(big), 1000); }, Code::corrupt, "chunk size");
  CheckpointInfo count = ci;
  count.chunks = 5;
  rejects([&] { decode_checkpoint_info(encode(count), 1000); }, Code::corrupt, "5 chunks announced");

  CHECK(decode_checkpoint_chunk(encode(CheckpointChunk{4, 3, Bytes(100, 1)}), ci).index == 3);  // the short last piece
  rejects([&] { decode_checkpoint_chunk(encode(CheckpointChunk{5, 0, Bytes(300, 1)}), ci); }, Code::corrupt, "step 5");
  rejects([&] { decode_checkpoint_chunk(encode(CheckpointChunk{4, 4, Bytes(100, 1)}), ci); }, Code::corrupt, "piece 4 of");
  rejects([&] { decode_checkpoint_chunk(encode(CheckpointChunk{4, 0, Bytes(299, 1)}), ci); }, Code::corrupt, "expected 300");
  rejects([&] { decode_checkpoint_chunk(encode(CheckpointChunk{4, 3, Bytes(300, 1)}), ci); }, Code::corrupt, "expected 100");
}

TEST_CASE("net protocol: round start must match the run's batch and vocabulary", "[net]") {
  auto with = [](auto change) {
    RoundStart m = round_start();
    change(m);
    return m;
  };
  RunInfo run = run_info();
  rejects([&] { decode_round_start(encode(with([](RoundStart& m) { m.step = 0; })), run); }, Code::corrupt, "step 0");
  rejects([&] { decode_round_start(encode(with([](RoundStart& m) { m.lr = NAN; })), run); }, Code::corrupt, "lr");
  rejects([&] { decode_round_start(encode(with([](RoundStart& m) { m.slot = 4; })), run); }, Code::corrupt, "slot 4");
  rejects([&] { decode_round_start(encode(with([](RoundStart& m) { m.tokens[5] = 256; })), run); }, Code::corrupt,
          "token 256 at position 5");
  rejects([&] { decode_round_start(encode(with([](RoundStart& m) { m.targets[0] = -1; })), run); }, Code::corrupt,
          "token -1");
  // A batch of another shape is refused from its header, before the arrays are read.
  RoundStart other = round_start();
  other.batch = 1;
  other.seq = 8;
  rejects([&] { decode_round_start(encode(other), run); }, Code::corrupt, "a batch of 1 x 8 tokens");
  Bytes huge = encode(round_start());
  put(huge, 32, 4096, 4);  // seq field, so that batch * seq would be large
  rejects([&] { decode_round_start(huge, run); }, Code::corrupt, "the run trains 2 x 4");
}

TEST_CASE("net protocol: update contributor lists are bounded, sorted and distinct", "[net]") {
  rejects([] { decode_update_msg(encode(UpdateMsg{0, {1}, Bytes(64, 0)}), 100, 4); }, Code::corrupt, "step 0");
  rejects([] { decode_update_msg(encode(UpdateMsg{1, {}, Bytes(64, 0)}), 100, 4); }, Code::corrupt, "0 contributors");
  rejects([] { decode_update_msg(encode(UpdateMsg{1, {1, 2, 3, 4, 5}, Bytes(64, 0)}), 100, 4); }, Code::corrupt,
          "5 contributors; expected 1..4");
  rejects([] { decode_update_msg(encode(UpdateMsg{1, {2, 2}, Bytes(64, 0)}), 100, 4); }, Code::corrupt, "ascending");
  rejects([] { decode_update_msg(encode(UpdateMsg{1, {3, 1}, Bytes(64, 0)}), 100, 4); }, Code::corrupt, "ascending");
  rejects([] { decode_update_msg(encode(UpdateMsg{1, {1}, Bytes(63, 0)}), 100, 4); }, Code::corrupt, "wire update of 63");
  // A contributor count that claims more ids than there are bytes is refused before allocating.
  Bytes b = encode(UpdateMsg{1, {1}, Bytes(64, 0)});
  put(b, 8, 0xFFFFFFFF, 4);
  rejects([&] { decode_update_msg(b, 100, 0xFFFFFFFFu); }, Code::corrupt, "truncated contributor list");
}

TEST_CASE("net protocol: notices, errors and resyncs are checked", "[net]") {
  Bytes n = encode(Notice{NoticeCode::node_paused, 1});
  n[0] = 0;
  rejects([&] { decode_notice(n); }, Code::corrupt, "code 0");
  n[0] = kMaxNoticeCode + 1;
  rejects([&] { decode_notice(n); }, Code::corrupt, "code 9");
  Bytes e = encode(ErrorMsg{ErrorCode::busy, "x"});
  put(e, 0, kMaxErrorCode + 1, 2);
  rejects([&] { decode_error(e); }, Code::corrupt, "code 8");
  // Reasons are cut to their bound and made printable by the encoder.
  ErrorMsg long_reason = decode_error(encode(ErrorMsg{ErrorCode::protocol, std::string(5000, 'r') + "\x01"}));
  CHECK(long_reason.reason.size() == kMaxReason);
  CHECK(decode_resync(encode(Resync{1, 2, "a\tb"})).reason == "a?b");
  CHECK(is_fatal(ErrorCode::auth));
  CHECK(is_fatal(ErrorCode::version));
  CHECK_FALSE(is_fatal(ErrorCode::protocol));
  CHECK_FALSE(is_fatal(ErrorCode::busy));
}

TEST_CASE("net limits: each side accepts only the other side's kinds", "[net]") {
  Manifest m = make_manifest({{"w", {128, 128}}, {"v", {100}}}, 64, 4, ValueMode::sign);
  FrameLimits c = coordinator_frame_limits(m), n = node_frame_limits(run_info(), m), g = node_frame_limits();
  for (Kind k : {Kind::hello, Kind::sync, Kind::checkpoint_request, Kind::payload, Kind::hash_report}) {
    CHECK(c.max_body[uint8_t(k)] > 0);
    CHECK(n.max_body[uint8_t(k)] == 0);
  }
  for (Kind k : {Kind::welcome, Kind::checkpoint_info, Kind::checkpoint_chunk, Kind::round_start, Kind::update, Kind::resync}) {
    CHECK(c.max_body[uint8_t(k)] == 0);
    CHECK(n.max_body[uint8_t(k)] > 0);
    CHECK(g.max_body[uint8_t(k)] >= n.max_body[uint8_t(k)]);
  }
  for (Kind k : {Kind::notice, Kind::error, Kind::ping, Kind::pong}) {
    CHECK(c.max_body[uint8_t(k)] > 0);
    CHECK(n.max_body[uint8_t(k)] > 0);
  }
  for (int k = kKindCount; k < 256; ++k) CHECK(c.max_body[k] == 0);
  CHECK(c.max_body[0] == 0);
  CHECK(n.max_body[uint8_t(Kind::round_start)] == 36 + 8 * 2 * 4);
  // The limits fit the largest valid message exactly where they are fixed-size.
  CHECK(c.max_body[uint8_t(Kind::hello)] == encode(Hello{1, std::string(kMaxToken, 't'), std::string(kMaxAgent, 'a')}).size());
  Welcome w = welcome();
  w.node_name = std::string(kMaxNodeName, 'n');
  w.run.preset = std::string(kMaxPreset, 'p');
  CHECK(encode(w).size() <= n.max_body[uint8_t(Kind::welcome)]);
}

TEST_CASE("net limits: payload and update bounds hold for the largest messages", "[net]") {
  std::mt19937_64 rng(5);
  for (ValueMode mode : {ValueMode::sign, ValueMode::int8}) {
    Manifest m = make_manifest({{"a", {64, 128}}, {"b", {300}}, {"c", {3, 10, 10}}, {"d", {1}}}, 16, 5, mode);
    const uint64_t bound = max_payload_bytes(m);
    std::vector<PeerPayload> all;
    for (int trial = 0; trial < 40; ++trial) {
      // Worst cases for the code: every chunk an exception (k - 1 coefficients) or every chunk full,
      // with random spread-out indices.
      PeerPayload p;
      p.run_id = 1;
      p.step = 1;
      p.peer_id = uint32_t(trial);
      p.manifest_hash = m.hash;
      p.values = mode;
      for (const TensorPlan& t : m.tensors)
        for (uint64_t c = 0; c < t.chunks; ++c) {
          uint32_t cnt = trial % 2 ? t.k : (t.k > 1 ? t.k - 1 : 0);
          std::vector<uint16_t> idx;
          while (idx.size() < cnt) {
            uint16_t x = uint16_t(rng() % t.elems());
            if (std::find(idx.begin(), idx.end(), x) == idx.end()) idx.push_back(x);
          }
          std::sort(idx.begin(), idx.end());
          p.count.push_back(uint16_t(cnt));
          for (uint16_t x : idx) {
            p.index.push_back(x);
            p.value.push_back(mode == ValueMode::sign ? (rng() & 1 ? 1 : -1) : int8_t(int(rng() % 255) - 127));
          }
        }
      CHECK(encode_payload(m, p).size() <= bound);
      all.push_back(p);
    }
    Merger merger(m, 1, 1);
    for (auto& p : all) merger.add(p);
    CHECK(encode_update(m, merger.finish(0.01f, 0.0f, 0)).size() <= max_update_bytes(m, all.size()));
  }
  // Many one-element tensors: every tensor is a piece of its own, whose table entry and byte
  // padding outweigh its few bits (a bound summing bits over one stream is about 5x too small).
  std::vector<TensorSpec> specs;
  for (int t = 0; t < 200; ++t) specs.push_back({"t" + std::to_string(t), {1}});
  const Manifest m = make_manifest(specs, 16, 5, ValueMode::sign);
  PeerPayload p;
  p.run_id = 1, p.step = 1, p.peer_id = 0, p.manifest_hash = m.hash, p.values = ValueMode::sign;
  for (size_t t = 0; t < specs.size(); ++t) {
    p.count.push_back(1);
    p.index.push_back(0);
    p.value.push_back(t % 2 ? 1 : -1);
  }
  CHECK(encode_payload(m, p).size() <= max_payload_bytes(m));
  Merger merger(m, 1, 1);
  merger.add(p);
  CHECK(encode_update(m, merger.finish(0.01f, 0.0f, 0)).size() <= max_update_bytes(m, 1));
}

TEST_CASE("net batch queue: fresh batches in order, missed ones first again", "[net]") {
  BatchQueue q(4);
  CHECK(q.take(4) == std::vector<uint64_t>{0, 1, 2, 3});
  CHECK(q.take(2) == std::vector<uint64_t>{4, 5});
  q.give_back({5, 1});
  CHECK(q.owed() == std::vector<uint64_t>{1, 5});
  CHECK(q.take(3) == std::vector<uint64_t>{1, 5, 6});
  rejects([&] { q.give_back({7}); }, Code::invalid_argument, "never handed out");
  q.give_back({6});
  rejects([&] { q.give_back({6}); }, Code::invalid_argument, "owed already");
  // Batch b is what in-process peer b % N trains at step b / N + 1.
  BatchCoords c = q.coords(9);
  CHECK(c.step == 3);
  CHECK(c.peer == 1);
  CHECK(c.peers == 4);
  BatchQueue r(4, q.next_fresh(), q.owed());
  CHECK(r.take(2) == std::vector<uint64_t>{6, 7});
  rejects([] { BatchQueue(4, 3, {3}); }, Code::corrupt, "never handed out");
  rejects([] { BatchQueue(4, 9, {2, 2}); }, Code::corrupt, "listed twice");
  rejects([] { BatchQueue(0); }, Code::invalid_argument, "at least 1");
}

TEST_CASE("net batch queue: the batches of round s are the in-process step s batches", "[net]") {
  // The coordinator hands out sampler batches by id; without faults this is the Trainer's order.
  std::vector<uint16_t> toks(5000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = uint16_t((i * 7) % 256);
  Dataset data(toks, 0.1);
  Sampler s(data, 3, 8);
  BatchQueue q(4);
  std::vector<int32_t> a(16), at(16), b(16), bt(16);
  for (uint64_t step = 1; step <= 3; ++step) {
    auto as = assign_batches(q, {2, 5, 7, 9});
    REQUIRE(as.size() == 4);
    for (const Assignment& x : as) {
      BatchCoords c = q.coords(x.batch_id);
      s.train_batch(c.step, c.peer, c.peers, 2, a.data(), at.data());
      s.train_batch(step, x.slot, 4, 2, b.data(), bt.data());
      CHECK(a == b);
      CHECK(at == bt);
    }
  }
}

TEST_CASE("net slots: assignment and the shift after a missed batch", "[net]") {
  BatchQueue q(4);
  auto r1 = assign_batches(q, {3, 8, 11, 20, 21});  // 5 nodes, 4 slots: the 4 lowest ids train
  REQUIRE(r1.size() == 4);
  CHECK(r1[0].node == 3);
  CHECK(r1[3].node == 20);
  CHECK(r1[3].batch_id == 3);
  CHECK(r1[2].slot == 2);
  q.give_back({r1[1].batch_id});  // node 8 missed batch 1
  auto r2 = assign_batches(q, {3, 11, 20});  // node 8 gone: 3 nodes
  REQUIRE(r2.size() == 3);
  CHECK(r2[0].batch_id == 1);  // the missed batch goes first, to the lowest id
  CHECK(r2[1].batch_id == 4);
  CHECK(r2[2].batch_id == 5);
  CHECK(r2[2].node == 20);
  rejects([&] { assign_batches(q, {4, 2}); }, Code::invalid_argument, "ascending");
  CHECK(assign_batches(q, {}).empty());
}

TEST_CASE("net round state: payload rules", "[net]") {
  RoundState r;
  std::vector<Assignment> as = {{0, 10, 1}, {1, 11, 2}, {2, 12, 3}};
  r.begin(4, as);
  CHECK(r.open());
  CHECK(r.check(1, "node a", 4, 0, 10).verdict == Verdict::accept);
  r.accept(1, PeerPayload{}, 100);
  PayloadCheck again = r.check(1, "node a", 4, 0, 10);
  CHECK(again.verdict == Verdict::violation);
  CHECK(again.reason == "node a: a second payload for batch 10 of step 4 (replayed)");
  PayloadCheck ahead = r.check(2, "node b", 5, 1, 11);
  CHECK(ahead.verdict == Verdict::violation);
  CHECK(ahead.reason == "node b: payload for step 5 but the round is 4");
  PayloadCheck slot = r.check(2, "node b", 4, 2, 11);
  CHECK(slot.verdict == Verdict::violation);
  CHECK(slot.reason.find("but its batch is in slot 1") != std::string::npos);
  PayloadCheck other = r.check(2, "node b", 4, 1, 12);
  CHECK(other.verdict == Verdict::violation);
  CHECK(other.reason.find("a batch it was not given") != std::string::npos);
  PayloadCheck stranger = r.check(9, "node z", 4, 0, 10);
  CHECK(stranger.verdict == Verdict::violation);
  CHECK_THROWS_AS(r.accept(9, PeerPayload{}, 1), Error);
  CHECK_THROWS_AS(r.begin(5, {}), Error);  // one round at a time

  CHECK_FALSE(r.complete());
  CHECK(r.owes(2));
  r.drop(2, false);  // left without delivering: its batch is missed
  CHECK_FALSE(r.owes(2));
  CHECK_FALSE(r.complete());
  CHECK(r.check(3, "node c", 4, 2, 12).verdict == Verdict::accept);
  r.accept(3, PeerPayload{}, 50);
  CHECK(r.complete());
  RoundOutcome o = r.close();
  CHECK(o.step == 4);
  REQUIRE(o.accepted.size() == 2);
  CHECK(o.accepted[0].node == 1);  // slot order
  CHECK(o.accepted[1].node == 3);
  CHECK(o.payload_bytes == std::vector<uint64_t>{100, 50});
  REQUIRE(o.missed.size() == 1);
  CHECK(o.missed[0].batch_id == 11);

  // After the round: node 2's payload of batch 11 would be late; it left, so it counts as a violation.
  CHECK(r.check(2, "node b", 4, 1, 11).verdict == Verdict::violation);
  CHECK(r.check(1, "node a", 4, 0, 10).verdict == Verdict::violation);  // a copy of an accepted one
  PayloadCheck closed = r.check(1, "node a", 5, 0, 13);
  CHECK(closed.reason == "node a: payload for step 5 but no round is open (the last was 4)");
}

TEST_CASE("net round state: late payloads are dropped without blame, once", "[net]") {
  RoundState r;
  r.begin(7, {{0, 20, 1}, {1, 21, 2}});
  r.accept(1, PeerPayload{}, 10);
  RoundOutcome o = r.close();  // the deadline: node 2 owed batch 21
  CHECK(o.missed.size() == 1);
  PayloadCheck late = r.check(2, "node b", 7, 1, 21);
  CHECK(late.verdict == Verdict::late);
  CHECK(late.reason.find("arrived after its round closed") != std::string::npos);
  CHECK(r.check(2, "node b", 7, 1, 21).verdict == Verdict::violation);  // the same again is a replay
  // A late payload of round 7 arriving while round 8 is open is still late, not a wrong step, also
  // when the node has a batch in round 8.
  RoundState r2;
  r2.begin(7, {{0, 20, 1}, {1, 21, 2}});
  r2.close();
  r2.begin(8, {{0, 21, 1}, {1, 22, 2}});
  CHECK(r2.check(2, "node b", 7, 1, 21).verdict == Verdict::late);
  CHECK(r2.check(2, "node b", 8, 1, 22).verdict == Verdict::accept);
  CHECK(r2.check(1, "node a", 7, 0, 20).verdict == Verdict::late);
  CHECK(r2.check(1, "node a", 7, 0, 20).verdict == Verdict::violation);
  CHECK(r2.check(2, "node b", 6, 1, 21).verdict == Verdict::violation);  // never given at step 6
}

TEST_CASE("net round state: a violation discards a delivered payload, and a void round retries its step", "[net]") {
  RoundState r;
  r.begin(3, {{0, 5, 1}, {1, 6, 2}});
  r.accept(1, PeerPayload{}, 10);
  r.drop(1, true);  // cut off for a violation: its payload is out as well
  r.drop(2, false);
  CHECK(r.complete());
  RoundOutcome o = r.close();
  CHECK(o.accepted.empty());
  CHECK(o.missed.size() == 2);
  // Nothing merged: the same step is tried again, and a payload from the first try is late there.
  r.begin(3, {{0, 5, 2}, {1, 6, 1}});
  CHECK(r.check(2, "node b", 3, 0, 5).verdict == Verdict::accept);
  CHECK(r.check(1, "node a", 3, 1, 6).verdict == Verdict::accept);
  CHECK_THROWS_AS(RoundState().begin(0, {}), Error);
}

TEST_CASE("net overlap: welcome flag and the round start's base step", "[net]") {
  // Without overlap the welcome is the same bytes as before the option; with it, one byte 1 more.
  Welcome w = welcome();
  Bytes plain = encode(w);
  w.run.overlap = true;
  Bytes over = encode(w);
  REQUIRE(over.size() == plain.size() + 1);
  CHECK(Bytes(over.begin(), over.end() - 1) == plain);
  CHECK_FALSE(decode_welcome(plain).run.overlap);
  CHECK(decode_welcome(over).run.overlap);
  over.back() = 2;
  rejects([&] { decode_welcome(over); }, Code::corrupt, "overlap flag is not 1");
  over.back() = 1;
  over.push_back(1);
  rejects([&] { decode_welcome(over); }, Code::corrupt, "");

  RunInfo run = run_info();
  run.overlap = true;
  RoundStart m = round_start();  // step 13
  m.has_base = true;
  m.base_step = 11;
  RoundStart back = decode_round_start(encode(m), run);
  CHECK(back.has_base);
  CHECK(back.base_step == 11);
  CHECK(back.slot == m.slot);
  CHECK(back.tokens == m.tokens);
  strict_length(encode(m), [&](const Bytes& b) { decode_round_start(b, run); });
  m.base_step = 12;
  CHECK(decode_round_start(encode(m), run).base_step == 12);
  for (uint64_t b : {uint64_t(13), uint64_t(14), uint64_t(10), uint64_t(0)}) {
    m.base_step = b;
    rejects([&] { decode_round_start(encode(m), run); }, Code::corrupt, "base step " + std::to_string(b) + " for step 13");
  }
  // A round start without the base does not decode in an overlapped run, nor one with it in a plain run.
  rejects([&] { decode_round_start(encode(round_start()), run); }, Code::corrupt, "");
  m.base_step = 11;
  rejects([&] { decode_round_start(encode(m), run_info()); }, Code::corrupt, "");

  Manifest man = make_manifest({{"w", {128, 128}}}, 64, 4, ValueMode::sign);
  CHECK(node_frame_limits(run, man).max_body[uint8_t(Kind::round_start)] == 44 + 8 * 2 * 4);
  CHECK(encode(m).size() == 44 + 8 * 2 * 4);
  CHECK(node_frame_limits().max_body[uint8_t(Kind::round_start)] >= node_frame_limits(run, man).max_body[uint8_t(Kind::round_start)]);
}

TEST_CASE("net overlap: when the next round starts early and when a node holds an update back", "[net]") {
  // overlap, void, step, total, available, closed round's nodes, min_nodes, slots
  CHECK(start_next_round_early(true, false, 5, 30, 4, 4, 1, 4));
  CHECK_FALSE(start_next_round_early(false, false, 5, 30, 4, 4, 1, 4));  // option off
  CHECK_FALSE(start_next_round_early(true, true, 5, 30, 4, 4, 1, 4));    // a void round is retried after
  CHECK(start_next_round_early(true, false, 28, 30, 4, 4, 1, 4));        // round 30 exists
  CHECK_FALSE(start_next_round_early(true, false, 29, 30, 4, 4, 1, 4));  // round 31 does not
  CHECK_FALSE(start_next_round_early(true, false, 5, 30, 3, 4, 1, 4));   // a node was lost: wait for it
  CHECK(start_next_round_early(true, false, 5, 30, 3, 3, 1, 4));         // as many as the last round had
  CHECK(start_next_round_early(true, false, 5, 30, 4, 6, 1, 4));         // capped at the slots
  CHECK_FALSE(start_next_round_early(true, false, 5, 30, 2, 2, 3, 4));   // below min_nodes

  // update step, last trained step, run steps, leaving
  CHECK(hold_update(7, 7, 30, false));        // trained round 7, round 8 not yet: hold U_7
  CHECK(hold_update(7, 0, 30, false));        // trained nothing yet (a joiner, a paused node)
  CHECK_FALSE(hold_update(7, 8, 30, false));  // round 8's payload is made: apply U_7
  CHECK_FALSE(hold_update(30, 30, 30, false));  // the run's last update lands at once
  CHECK_FALSE(hold_update(7, 7, 30, true));   // leaving: nothing is held back
}

namespace {
struct TmpDir {
  fs::path dir;
  TmpDir() {
    dir = fs::temp_directory_path() / ("distro-net-" + std::to_string(::getpid()) + "-" + std::to_string(rand()));
    fs::create_directories(dir);
  }
  ~TmpDir() { fs::remove_all(dir); }
};
const char* kGoodConfig = R"({"data": "text.txt", "steps": 10, "batch": 2, "seq": 16,
  "tokens": {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}})";
}  // namespace

TEST_CASE("net run config: defaults, anchored paths and every error named", "[net]") {
  RunConfig c = parse_run_config(kGoodConfig, "/runs/a/run.json");
  CHECK(c.train.data == "/runs/a/text.txt");
  CHECK(c.state_dir == "/runs/a/state");
  CHECK(c.nodes_per_round == 4);
  CHECK(c.train.devices.size() == 4);
  CHECK(c.train.optimizer == "distro");
  CHECK(c.tokens.at("bob") == "bob-token-0123456789ab");
  CHECK(c.listen == "0.0.0.0:7600");

  auto with = [](const std::string& extra) {
    std::string s = kGoodConfig;
    return s.substr(0, s.size() - 1) + ", " + extra + "}";
  };
  auto bad = [&](const std::string& extra, const std::string& words) {
    INFO(extra);
    rejects([&] { parse_run_config(with(extra), "run.json"); }, Code::invalid_argument, words);
  };
  bad(R"("stepz": 3)", "unknown key 'stepz'; expected one of:");
  bad(R"("batch": -1)", "key 'batch' is -1; expected a whole number 1..65536");
  bad(R"("batch": 2.5)", "key 'batch' is 2.5");
  bad(R"("lr": "fast")", "key 'lr' is \"fast\"; expected a number");
  bad(R"("decay": 1.0)", "key 'decay' is 1.0");
  bad(R"("values": "fp4")", "key 'values' is \"fp4\"; expected \"sign\" or \"int8\"");
  bad(R"("nodes_per_round": 0)", "key 'nodes_per_round' is 0");
  bad(R"("min_nodes": 5)", "min_nodes is 5; expected 1..nodes_per_round (4)");
  bad(R"("round_deadline_s": 0)", "key 'round_deadline_s' is 0");
  bad(R"("listen": 7600)", "key 'listen' is 7600");
  bad(R"("micro_batch": 3)", "micro-batch is 3");
  bad(R"("overlap": 1)", "key 'overlap' is 1; expected true or false");
  CHECK_FALSE(c.train.overlap);
  CHECK(parse_run_config(with(R"("overlap": true)"), "run.json").train.overlap);
  rejects([] { parse_run_config(R"({"tokens": {"a": "aaaaaaaaaaaaaaaaaaaa"}})", "run.json"); }, Code::invalid_argument,
          "key 'data' is missing");
  rejects([] { parse_run_config(R"({"data": "x"})", "run.json"); }, Code::invalid_argument, "key 'tokens' is missing");
  rejects([] { parse_run_config(R"({"data": "x", "tokens": {"a": "short"}})", "run.json"); }, Code::invalid_argument,
          "the token of node 'a' must be 16..256");
  rejects([] { parse_run_config(R"({"data": "x", "tokens": {"a b": "aaaaaaaaaaaaaaaaaaaa"}})", "run.json"); },
          Code::invalid_argument, "node name 'a b'");
  rejects([] { parse_run_config(R"({"data": "x", "tokens": {"a": "aaaaaaaaaaaaaaaaaaaa", "b": "aaaaaaaaaaaaaaaaaaaa"}})", "run.json"); },
          Code::invalid_argument, "share a token");
  rejects([] { parse_run_config(R"({"data": "x", "tokens": {}})", "run.json"); }, Code::invalid_argument, "'tokens' is empty");
  rejects([] { parse_run_config("[1, 2]", "run.json"); }, Code::invalid_argument, "expected one JSON object");
  rejects([] { parse_run_config("{", "run.json"); }, Code::invalid_argument, "run.json is not valid JSON");

  TmpDir t;
  rejects([&] { load_run_config((t.dir / "missing.json").string()); }, Code::not_found, "missing.json");
  std::ofstream((t.dir / "run.json").string()) << with(R"("state_dir": "/abs/state")");
  RunConfig l = load_run_config((t.dir / "run.json").string());
  CHECK(l.state_dir == "/abs/state");
  CHECK(load_tokens((t.dir / "run.json").string()).size() == 2);
}

TEST_CASE("net run checkpoint: round trip, and damage refused", "[net]") {
  nlohmann::json meta = {{"step", 5}, {"param_hash", 77}, {"run_id", 3}, {"manifest_hash", 9}, {"extra", "x"}};
  std::vector<std::vector<float>> blocks = {{1.0f, 2.0f, -0.0f}, {3.5f}};
  Bytes b = encode_run_checkpoint(meta, blocks);
  RunCheckpoint c = decode_run_checkpoint(b, {3, 1}, "test");
  CHECK(c.step == 5);
  CHECK(c.param_hash == 77);
  CHECK(c.blocks == blocks);
  CHECK(std::signbit(c.blocks[0][2]));
  CHECK(c.meta.at("extra") == "x");

  rejects([&] { decode_run_checkpoint(b, {3, 2}, "test"); }, Code::corrupt, "this model's checkpoint");
  rejects([&] { decode_run_checkpoint(b, {2, 2}, "test"); }, Code::mismatch, "blocks of other sizes");
  Bytes flipped = b;
  flipped[flipped.size() - 40] ^= 1;
  rejects([&] { decode_run_checkpoint(flipped, {3, 1}, "test"); }, Code::corrupt, "SHA-256");
  rejects([&] { decode_run_checkpoint(Bytes(b.begin(), b.end() - 1), {3, 1}, "test"); }, Code::corrupt, "");
  Bytes magic = b;
  magic[0] = 'X';
  rejects([&] { decode_run_checkpoint(magic, {3, 1}, "test"); }, Code::corrupt, "DSTRNETC");
  Bytes version = b;
  version[8] = 9;
  rejects([&] { decode_run_checkpoint(version, {3, 1}, "test"); }, Code::mismatch, "version 9");
  Bytes header = b;
  put(header, 12, 0x7FFFFFFF, 4);
  rejects([&] { decode_run_checkpoint(header, {3, 1}, "test"); }, Code::corrupt, "header length");
  nlohmann::json no_step = {{"param_hash", 1}, {"run_id", 3}, {"manifest_hash", 9}};
  rejects([&] { decode_run_checkpoint(encode_run_checkpoint(no_step, blocks), {3, 1}, "test"); }, Code::corrupt, "'step'");

  TmpDir t;
  const std::string p = (t.dir / "sub" / "c.bin").string();
  write_file_atomic(p, b);
  CHECK(read_file(p, b.size()) == b);
  rejects([&] { read_file(p, b.size() - 1); }, Code::corrupt, "at most");
  rejects([&] { read_file((t.dir / "none").string(), 10); }, Code::not_found, "no file");
  CHECK_FALSE(fs::exists(p + ".tmp"));
}

// ---- A coordinator and nodes in this process, on loopback: the controls of the C++ API. ----

#include <chrono>
#include <mutex>
#include <thread>

#include "history/ledger.hpp"
#include "net/coordinator.hpp"
#include "net/node.hpp"

namespace {

struct Events {
  std::mutex mu;
  std::vector<NetEvent> all;
  EventHandler handler() {
    return [this](const NetEvent& e) {
      std::lock_guard<std::mutex> g(mu);
      all.push_back(e);
    };
  }
  size_t count(NetEvent::Kind k, const std::string& words = "") {
    std::lock_guard<std::mutex> g(mu);
    size_t n = 0;
    for (const auto& e : all) n += e.kind == k && e.message.find(words) != std::string::npos;
    return n;
  }
};

template <class F>
bool eventually(F&& f, double seconds = 30) {
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return f();
}

const char* kTokA = "node-a-token-0123456789";
const char* kTokB = "node-b-token-0123456789";

std::string loop_config(const fs::path& dir, uint64_t steps, const std::string& tokens_json) {
  return std::string(R"({"data": ")") + DISTRO_TEST_DATA + R"(/genesis.txt", "steps": )" + std::to_string(steps) +
         R"(, "batch": 1, "seq": 16, "nodes_per_round": 2, "listen": "127.0.0.1:0", "fill_wait_s": 0.2,
            "round_deadline_s": 20, "threads": 1, "state_dir": ")" + (dir / "state").string() + R"(", "tokens": )" +
         tokens_json + "}";
}

// Waits (at most 30 s) for the node to end by itself, then makes sure it is down, so that a
// failing test cannot hang.
void settle(Node& n) {
  eventually([&] {
    std::string st = n.status().state;
    return st == "complete" || st == "left" || st == "stopped" || st == "failed";
  });
  n.stop();
  n.wait();
}

NodeOptions node_options(uint16_t port, const std::string& token, const std::string& pin) {
  NodeOptions o;
  o.coordinator = "127.0.0.1:" + std::to_string(port);
  o.token = token;
  o.pin = pin;
  o.threads = 1;
  o.retry_min_s = 0.05;
  o.retry_max_s = 0.2;
  return o;
}

}  // namespace

TEST_CASE("net loopback: a run completes with every replica in agreement, and pause and resume hold rounds", "[net][loopback]") {
  TmpDir t;
  RunConfig cfg = parse_run_config(loop_config(t.dir, 8, std::string(R"({"a": ")") + kTokA + R"(", "b": ")" + kTokB + R"("})"), "");
  Coordinator c(cfg);
  Events ce, ae, be;
  c.set_event_handler(ce.handler());
  CHECK(c.status().state == "created");
  c.start();
  CHECK_THROWS_AS(c.start(), Error);
  CHECK(c.port() != 0);
  CHECK(c.fingerprint().rfind("sha256:", 0) == 0);
  Node a(node_options(c.port(), kTokA, c.fingerprint())), b(node_options(c.port(), kTokB, c.fingerprint()));
  a.set_event_handler(ae.handler());
  b.set_event_handler(be.handler());
  a.start();
  b.start();
  REQUIRE(eventually([&] { return c.status().step >= 2; }));
  c.pause();
  REQUIRE(eventually([&] { return c.status().state == "paused"; }));
  const uint64_t held = c.status().step;
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  CHECK(c.status().step <= held + 1);  // at most the round that was open
  CHECK(ae.count(NetEvent::Kind::info, "the run is paused") == 1);
  c.resume();
  c.wait();
  settle(a);
  settle(b);
  CoordinatorStatus s = c.status();
  CHECK(s.state == "complete");
  CHECK(s.step == 8);
  CHECK(s.rounds_done == 8);
  CHECK(s.bytes_up > 0);
  CHECK(s.bytes_down > s.bytes_up);
  for (Node* n : {&a, &b}) {
    NodeStatus ns = n->status();
    CHECK(ns.state == "complete");
    CHECK(ns.step == 8);
    CHECK(ns.param_hash == s.param_hash);
    CHECK(ns.rounds_trained == 8);
    CHECK(ns.rounds_accepted == 8);
    CHECK(ns.coordinator_fingerprint == c.fingerprint());
  }
  CHECK(ce.count(NetEvent::Kind::step_done) == 8);
  CHECK(ce.count(NetEvent::Kind::joined) == 2);
  CHECK(ae.count(NetEvent::Kind::step_done) == 8);
  CHECK(ce.count(NetEvent::Kind::info, "paused") == 1);
}

TEST_CASE("net loopback: a paused node takes no batches, a finishing node leaves, the run goes on", "[net][loopback]") {
  TmpDir t;
  RunConfig cfg = parse_run_config(loop_config(t.dir, 12, std::string(R"({"a": ")") + kTokA + R"(", "b": ")" + kTokB + R"("})"), "");
  Coordinator c(cfg);
  Events ce;
  c.set_event_handler(ce.handler());
  c.start();
  Node a(node_options(c.port(), kTokA, "")), b(node_options(c.port(), kTokB, ""));
  a.start();
  b.start();
  REQUIRE(eventually([&] { return c.status().step >= 2; }));
  b.pause();
  REQUIRE(eventually([&] { return ce.count(NetEvent::Kind::info, "node b paused") == 1; }));
  const uint64_t trained = b.status().rounds_trained;
  REQUIRE(eventually([&] { return c.status().step >= 6; }));
  CHECK(b.status().rounds_trained <= trained + 1);  // a round may have been given before the pause arrived
  CHECK(ce.count(NetEvent::Kind::step_done, "1 of 1 payloads (a)") >= 2);
  CHECK(b.status().step >= 5);  // it still follows the updates
  b.resume();
  b.finish();
  settle(b);
  CHECK(b.status().state == "left");
  c.wait();
  settle(a);
  CHECK(c.status().state == "complete");
  CHECK(a.status().param_hash == c.status().param_hash);
  CHECK(ce.count(NetEvent::Kind::left, "node b left") == 1);
}

TEST_CASE("net loopback: a revoked token disconnects its node for good", "[net][loopback]") {
  TmpDir t;
  const fs::path path = t.dir / "run.json";
  auto write = [&](const std::string& tokens) {
    std::ofstream f(path.string() + ".tmp");
    f << loop_config(t.dir, 1000, tokens);
    f.close();
    fs::rename(path.string() + ".tmp", path);
  };
  write(std::string(R"({"a": ")") + kTokA + R"(", "b": ")" + kTokB + R"("})");
  Coordinator c(load_run_config(path.string()));
  Events ce;
  c.set_event_handler(ce.handler());
  c.start();
  Node a(node_options(c.port(), kTokA, "")), b(node_options(c.port(), kTokB, ""));
  a.start();
  b.start();
  REQUIRE(eventually([&] { return c.status().step >= 1; }));
  write(std::string(R"({"a": ")") + kTokA + R"("})");
  c.reload_tokens();
  settle(b);
  NodeStatus bs = b.status();
  CHECK(bs.state == "failed");
  CHECK(bs.error.find("revoked") != std::string::npos);
  CHECK(ce.count(NetEvent::Kind::error, "node b: token revoked") == 1);
  const uint64_t at = c.status().step;
  REQUIRE(eventually([&] { return c.status().step >= at + 2; }));  // the run goes on with a
  c.finish();
  c.wait();
  a.stop();
  a.wait();
  CHECK(c.status().state == "stopped");
  CHECK_THROWS_AS(c.set_default_limits(-1, 0), Error);
  CHECK_THROWS_AS(a.set_limits(0, NAN), Error);
  // A restarted coordinator resumes at the step it finished with; the ledger has every round.
  Coordinator again(load_run_config(path.string()));
  CHECK(again.status().step == c.status().step);
  CHECK(Ledger((t.dir / "state" / "ledger.sqlite").string()).last_round() == c.status().step);
  // ... but not with other arithmetic: the state folder belongs to the run it was made by.
  RunConfig other = load_run_config(path.string());
  other.train.seed = 2;
  rejects([&] { Coordinator x(other); }, Code::mismatch, "belongs to another run");
  other = load_run_config(path.string());
  other.train.clip = 0.5f;
  rejects([&] { Coordinator x(other); }, Code::mismatch, "was made with clip = 1.0; the configuration says 0.5");
}

TEST_CASE("net loopback: a node past the deadline is left out, its batch goes to the next round", "[net][loopback]") {
  TmpDir t;
  RunConfig cfg = parse_run_config(loop_config(t.dir, 5, std::string(R"({"a": ")") + kTokA + R"(", "b": ")" + kTokB + R"("})"), "");
  cfg.round_deadline_s = 1.0;
  cfg.fill_wait_s = 5.0;  // both nodes take part in every round they can
  Coordinator c(cfg);
  Events ce, be;
  c.set_event_handler(ce.handler());
  c.start();
  Node a(node_options(c.port(), kTokA, ""));
  NodeOptions ob = node_options(c.port(), kTokB, "");
  ob.misbehave = "late";  // test switch: its first payload comes 0.5 s after the deadline
  Node b(ob);
  b.set_event_handler(be.handler());
  a.start();
  b.start();
  c.wait();
  settle(a);
  settle(b);
  CHECK(c.status().state == "complete");
  CHECK(ce.count(NetEvent::Kind::info, "node b missed the deadline of step 1 (batch") == 1);
  CHECK(ce.count(NetEvent::Kind::info, "node b: payload for batch") == 1);  // "... arrived after its round closed; dropped"
  CHECK(ce.count(NetEvent::Kind::step_done, "step 1/5: 1 of 2 payloads") == 1);
  CHECK(ce.count(NetEvent::Kind::step_done, "2 of 2 payloads") == 4);
  CHECK(a.status().param_hash == c.status().param_hash);
  CHECK(b.status().param_hash == c.status().param_hash);
  CHECK(b.status().state == "complete");  // late is not hostile: it stayed connected
  CHECK(ce.count(NetEvent::Kind::left) == 0);
  CHECK(b.status().rounds_accepted == b.status().rounds_trained - 1);
}

TEST_CASE("net loopback: rate caps of the coordinator and of the node report when they hold traffic back", "[net][loopback]") {
  for (bool node_side : {false, true}) {
    INFO((node_side ? "the node's download cap" : "the coordinator's default cap of what it sends"));
    TmpDir t;
    RunConfig cfg = parse_run_config(loop_config(t.dir, 5, std::string(R"({"a": ")") + kTokA + R"("})"), "");
    cfg.nodes_per_round = 1;
    cfg.train.devices = {"cpu"};
    cfg.train.batch = 8;  // round starts of 4 KB: the run moves well over the caps' 16 KiB burst
    cfg.train.seq = 64;
    if (!node_side) cfg.node_down_limit = 4000;
    Coordinator c(cfg);
    Events ce, ae;
    c.set_event_handler(ce.handler());
    c.start();
    NodeOptions o = node_options(c.port(), kTokA, "");
    if (node_side) o.down_limit = 4000;
    Node a(o);
    a.set_event_handler(ae.handler());
    a.start();
    c.wait();
    settle(a);
    CHECK(a.status().state == "complete");
    CHECK(a.status().bytes_down > 16384 + 8000);
    if (node_side) {
      CHECK(ae.count(NetEvent::Kind::limit_hit, "rate cap held traffic back") >= 1);
      CHECK(ce.count(NetEvent::Kind::limit_hit) == 0);
    } else {
      CHECK(ce.count(NetEvent::Kind::limit_hit, "node a: rate cap held traffic back") >= 1);
    }
  }
}

#include "net/protocol.hpp"

#include <cmath>

#include "core/error.hpp"
#include "net/byte_io.hpp"

namespace distro::net {

const char* kind_name(uint8_t kind) {
  static const char* names[kKindCount] = {"unknown",     "hello",   "welcome",  "sync",
                                          "checkpoint request", "checkpoint info", "checkpoint chunk",
                                          "round start", "payload", "update",   "hash report",
                                          "resync",      "notice",  "error",    "ping", "pong"};
  return kind < kKindCount ? names[kind] : "unknown";
}

const char* notice_name(NoticeCode c) {
  switch (c) {
    case NoticeCode::node_paused: return "node paused";
    case NoticeCode::node_resumed: return "node resumed";
    case NoticeCode::node_leaving: return "node leaving";
    case NoticeCode::run_paused: return "run paused";
    case NoticeCode::run_resumed: return "run resumed";
    case NoticeCode::run_complete: return "run complete";
    case NoticeCode::shutting_down: return "coordinator shutting down";
    case NoticeCode::in_sync: return "in sync";
  }
  return "unknown";
}

namespace {

[[noreturn]] void bad(const char* msg, const std::string& what) {
  fail(Code::corrupt, std::string(msg) + " message: " + what);
}

// Reasons travel as printable ASCII: anything else becomes '?', and long ones are cut.
std::string printable(const std::string& s, size_t max) {
  std::string out = s.substr(0, max);
  for (char& c : out)
    if (uint8_t(c) < 0x20 || uint8_t(c) > 0x7e) c = '?';
  return out;
}

void check_version(uint16_t v, const char* msg) {
  if (v != kProtocolVersion)
    fail(Code::mismatch, std::string(msg) + " message speaks protocol version " + std::to_string(v) +
                             "; this build speaks version " + std::to_string(kProtocolVersion));
}

}  // namespace

TrainConfig peer_config(const RunInfo& r, const std::string& device, unsigned threads, const std::string& data) {
  TrainConfig c;
  c.preset = r.preset;
  c.vocab = int(r.vocab);
  c.batch = int(r.batch);
  c.micro_batch = int(r.micro_batch);
  c.seq = int(r.seq);
  c.clip = r.clip;
  c.chunk = r.chunk;
  c.topk = r.topk;
  c.decay = r.decay;
  c.values = r.values;
  c.seed = r.seed;
  c.steps = r.total_steps;
  c.optimizer = "distro";
  c.threads = threads;
  c.devices = {device};
  c.data = data;
  return c;
}

void check_run_info(const RunInfo& r) {
  auto no = [](const std::string& what) { bad("welcome", what); };
  if (r.preset.empty() || r.preset.size() > kMaxPreset) no("preset name must be 1.." + std::to_string(kMaxPreset) + " bytes");
  if (r.vocab < 1 || r.vocab > (1u << 20)) no("vocab " + std::to_string(r.vocab) + " is outside 1..2^20");
  if (r.batch < 1 || r.batch > 65536) no("batch " + std::to_string(r.batch) + " is outside 1..65536");
  if (r.seq < 1 || r.seq > (1u << 20)) no("seq " + std::to_string(r.seq) + " is outside 1..2^20");
  if (uint64_t(r.batch) * r.seq > kMaxBatchTokens)
    no("batch * seq = " + std::to_string(uint64_t(r.batch) * r.seq) + " exceeds " + std::to_string(kMaxBatchTokens));
  if (r.micro_batch > r.batch || (r.micro_batch > 0 && r.batch % r.micro_batch != 0))
    no("micro-batch " + std::to_string(r.micro_batch) + " is neither 0 nor a divisor of the batch");
  if (!std::isfinite(r.clip) || r.clip < 0.0f) no("clip must be finite and >= 0");
  if (r.chunk < 1 || r.chunk > kMaxChunk) no("chunk " + std::to_string(r.chunk) + " is outside 1.." + std::to_string(kMaxChunk));
  if (r.topk < 1 || r.topk > 65535) no("topk " + std::to_string(r.topk) + " is outside 1..65535");
  if (!(r.decay >= 0.0f && r.decay < 1.0f)) no("decay must be in [0, 1)");
  if (r.values != ValueMode::sign && r.values != ValueMode::int8)
    no("value mode " + std::to_string(int(r.values)) + " is neither 1 (sign) nor 2 (int8)");
  if (r.total_steps < 1 || r.total_steps > (uint64_t(1) << 40)) no("total steps outside 1..2^40");
  if (r.nodes_per_round < 1 || r.nodes_per_round > 4096)
    no("nodes per round " + std::to_string(r.nodes_per_round) + " is outside 1..4096");
}

// ---- encoders ----

std::vector<uint8_t> encode(const Hello& m) {
  ByteWriter w;
  w.u16(m.version);
  w.str(m.token);
  w.str(printable(m.agent, kMaxAgent));
  return w.take();
}

std::vector<uint8_t> encode(const Welcome& m) {
  ByteWriter w;
  w.u16(m.version);
  w.u32(m.node_id);
  w.str(m.node_name);
  w.u64(m.run_id);
  w.u64(m.manifest_hash);
  w.u64(m.step);
  w.u64(m.param_hash);
  w.u32(m.deadline_ms);
  const RunInfo& r = m.run;
  w.str(r.preset);
  w.u32(r.vocab);
  w.u32(r.batch);
  w.u32(r.micro_batch);
  w.u32(r.seq);
  w.f32(r.clip);
  w.u32(r.chunk);
  w.u32(r.topk);
  w.f32(r.decay);
  w.u8(uint8_t(r.values));
  w.u64(r.seed);
  w.u64(r.total_steps);
  w.u32(r.nodes_per_round);
  if (r.overlap) w.u8(1);
  return w.take();
}

std::vector<uint8_t> encode(const Sync& m) {
  ByteWriter w;
  w.u64(m.step);
  w.u64(m.hash);
  return w.take();
}

std::vector<uint8_t> encode(const CheckpointRequest& m) {
  ByteWriter w;
  w.u64(m.have_step);
  return w.take();
}

std::vector<uint8_t> encode(const CheckpointInfo& m) {
  ByteWriter w;
  w.u64(m.step);
  w.u64(m.param_hash);
  w.u64(m.total_bytes);
  w.u32(m.chunk_bytes);
  w.u32(m.chunks);
  w.bytes(m.sha256);
  return w.take();
}

std::vector<uint8_t> encode(const CheckpointChunk& m) {
  ByteWriter w;
  w.u64(m.step);
  w.u32(m.index);
  w.bytes(m.data);
  return w.take();
}

std::vector<uint8_t> encode(const RoundStart& m) {
  const size_t n = size_t(m.batch) * m.seq;
  if (m.tokens.size() != n || m.targets.size() != n)
    fail(Code::invalid_argument, "round start: tokens and targets must hold batch * seq = " + std::to_string(n) + " values");
  ByteWriter w;
  w.u64(m.step);
  if (m.has_base) w.u64(m.base_step);
  w.f32(m.lr);
  w.u64(m.batch_id);
  w.u32(m.slot);
  w.u32(m.deadline_ms);
  w.u32(m.batch);
  w.u32(m.seq);
  for (int32_t t : m.tokens) w.i32(t);
  for (int32_t t : m.targets) w.i32(t);
  return w.take();
}

std::vector<uint8_t> encode(const PayloadMsg& m) {
  ByteWriter w;
  w.u64(m.step);
  w.u64(m.base_hash);
  w.u32(m.slot);
  w.u64(m.batch_id);
  w.bytes(m.wire);
  return w.take();
}

std::vector<uint8_t> encode(const UpdateMsg& m) {
  ByteWriter w;
  w.u64(m.step);
  w.u32(uint32_t(m.contributors.size()));
  for (uint32_t id : m.contributors) w.u32(id);
  w.bytes(m.wire);
  return w.take();
}

std::vector<uint8_t> encode(const HashReport& m) {
  ByteWriter w;
  w.u64(m.step);
  w.u64(m.hash);
  return w.take();
}

std::vector<uint8_t> encode(const Resync& m) {
  ByteWriter w;
  w.u64(m.step);
  w.u64(m.expected_hash);
  w.str(printable(m.reason, kMaxReason));
  return w.take();
}

std::vector<uint8_t> encode(const Notice& m) {
  ByteWriter w;
  w.u8(uint8_t(m.code));
  w.u64(m.step);
  return w.take();
}

std::vector<uint8_t> encode(const ErrorMsg& m) {
  ByteWriter w;
  w.u16(uint16_t(m.code));
  w.str(printable(m.reason, kMaxReason));
  return w.take();
}

std::vector<uint8_t> encode(const Ping& m) {
  ByteWriter w;
  w.u64(m.nonce);
  return w.take();
}

// ---- decoders ----

Hello decode_hello(std::span<const uint8_t> body) {
  ByteReader r(body, "hello");
  Hello m;
  m.version = r.u16("version");
  check_version(m.version, "hello");
  m.token = r.str("token", kMaxToken, 1);
  m.agent = r.str("agent", kMaxAgent);
  r.finish();
  return m;
}

Welcome decode_welcome(std::span<const uint8_t> body) {
  ByteReader r(body, "welcome");
  Welcome m;
  m.version = r.u16("version");
  check_version(m.version, "welcome");
  m.node_id = r.u32("node id");
  if (m.node_id == 0) bad("welcome", "node id 0 is reserved; expected >= 1");
  m.node_name = r.str("node name", kMaxNodeName, 1);
  m.run_id = r.u64("run id");
  m.manifest_hash = r.u64("manifest hash");
  m.step = r.u64("step");
  m.param_hash = r.u64("parameter hash");
  m.deadline_ms = r.u32("deadline");
  if (m.deadline_ms == 0) bad("welcome", "round deadline 0 ms; expected at least 1");
  RunInfo& i = m.run;
  i.preset = r.str("preset", kMaxPreset, 1);
  i.vocab = r.u32("vocab");
  i.batch = r.u32("batch");
  i.micro_batch = r.u32("micro-batch");
  i.seq = r.u32("seq");
  i.clip = r.f32("clip");
  i.chunk = r.u32("chunk");
  i.topk = r.u32("topk");
  i.decay = r.f32("decay");
  i.values = ValueMode(r.u8("value mode"));
  i.seed = r.u64("seed");
  i.total_steps = r.u64("total steps");
  i.nodes_per_round = r.u32("nodes per round");
  if (r.left() > 0) {
    if (r.u8("overlap") != 1) bad("welcome", "overlap flag is not 1; expected 1 or no byte at all");
    i.overlap = true;
  }
  r.finish();
  check_run_info(i);
  if (m.step > i.total_steps)
    bad("welcome", "step " + std::to_string(m.step) + " is past the run's " + std::to_string(i.total_steps) + " steps");
  return m;
}

Sync decode_sync(std::span<const uint8_t> body) {
  ByteReader r(body, "sync");
  Sync m;
  m.step = r.u64("step");
  m.hash = r.u64("hash");
  r.finish();
  return m;
}

CheckpointRequest decode_checkpoint_request(std::span<const uint8_t> body) {
  ByteReader r(body, "checkpoint request");
  CheckpointRequest m;
  m.have_step = r.u64("have step");
  r.finish();
  return m;
}

CheckpointInfo decode_checkpoint_info(std::span<const uint8_t> body, uint64_t max_total_bytes) {
  ByteReader r(body, "checkpoint info");
  CheckpointInfo m;
  m.step = r.u64("step");
  m.param_hash = r.u64("parameter hash");
  m.total_bytes = r.u64("total bytes");
  m.chunk_bytes = r.u32("chunk bytes");
  m.chunks = r.u32("chunks");
  auto d = r.bytes(32, "sha256");
  std::copy(d.begin(), d.end(), m.sha256.begin());
  r.finish();
  if (m.total_bytes < 1 || m.total_bytes > max_total_bytes)
    bad("checkpoint info", "checkpoint of " + std::to_string(m.total_bytes) + " bytes; expected 1.." +
                               std::to_string(max_total_bytes) + " for this run's model");
  if (m.chunk_bytes < 1 || m.chunk_bytes > kCheckpointChunkBytes)
    bad("checkpoint info", "chunk size " + std::to_string(m.chunk_bytes) + " is outside 1.." + std::to_string(kCheckpointChunkBytes));
  uint64_t want = (m.total_bytes + m.chunk_bytes - 1) / m.chunk_bytes;
  if (m.chunks != want)
    bad("checkpoint info", std::to_string(m.chunks) + " chunks announced; " + std::to_string(m.total_bytes) + " bytes in " +
                               std::to_string(m.chunk_bytes) + "-byte chunks make " + std::to_string(want));
  return m;
}

CheckpointChunk decode_checkpoint_chunk(std::span<const uint8_t> body, const CheckpointInfo& info) {
  ByteReader r(body, "checkpoint chunk");
  CheckpointChunk m;
  m.step = r.u64("step");
  m.index = r.u32("index");
  if (m.step != info.step)
    bad("checkpoint chunk", "piece of the checkpoint of step " + std::to_string(m.step) + "; the transfer is of step " +
                                std::to_string(info.step));
  if (m.index >= info.chunks)
    bad("checkpoint chunk", "piece " + std::to_string(m.index) + " of a checkpoint of " + std::to_string(info.chunks) + " pieces");
  uint64_t begin = uint64_t(m.index) * info.chunk_bytes;
  uint64_t want = std::min<uint64_t>(info.chunk_bytes, info.total_bytes - begin);
  if (r.left() != want)
    bad("checkpoint chunk", "piece " + std::to_string(m.index) + " holds " + std::to_string(r.left()) + " bytes; expected " +
                                std::to_string(want));
  auto d = r.rest();
  m.data.assign(d.begin(), d.end());
  return m;
}

RoundStart decode_round_start(std::span<const uint8_t> body, const RunInfo& run) {
  ByteReader r(body, "round start");
  RoundStart m;
  m.step = r.u64("step");
  if (m.step < 1) bad("round start", "step 0; rounds count from 1");
  if (run.overlap) {
    m.has_base = true;
    m.base_step = r.u64("base step");
    if (m.base_step >= m.step || m.base_step + 2 < m.step)
      bad("round start", "base step " + std::to_string(m.base_step) + " for step " + std::to_string(m.step) +
                             "; an overlapped round trains on step - 1 or step - 2");
  }
  m.lr = r.f32("lr");
  if (!std::isfinite(m.lr) || m.lr < 0.0f || m.lr > 10.0f) bad("round start", "lr " + std::to_string(m.lr) + " is outside 0..10");
  m.batch_id = r.u64("batch id");
  m.slot = r.u32("slot");
  if (m.slot >= run.nodes_per_round)
    bad("round start", "slot " + std::to_string(m.slot) + " of a round of " + std::to_string(run.nodes_per_round) + " slots");
  m.deadline_ms = r.u32("deadline");
  m.batch = r.u32("batch");
  m.seq = r.u32("seq");
  if (m.batch != run.batch || m.seq != run.seq)
    bad("round start", "a batch of " + std::to_string(m.batch) + " x " + std::to_string(m.seq) + " tokens; the run trains " +
                           std::to_string(run.batch) + " x " + std::to_string(run.seq));
  const size_t n = size_t(m.batch) * m.seq;  // bounded by check_run_info
  if (r.left() != 8 * n)
    bad("round start", std::to_string(r.left()) + " bytes of tokens and targets; expected " + std::to_string(8 * n));
  m.tokens.resize(n);
  m.targets.resize(n);
  for (auto* v : {&m.tokens, &m.targets})
    for (size_t i = 0; i < n; ++i) {
      int32_t t = r.i32("token");
      if (t < 0 || uint32_t(t) >= run.vocab)
        bad("round start", "token " + std::to_string(t) + " at position " + std::to_string(i) + " is outside the vocabulary 0.." +
                               std::to_string(run.vocab - 1));
      (*v)[i] = t;
    }
  r.finish();
  return m;
}

PayloadMsg decode_payload_msg(std::span<const uint8_t> body, uint64_t wire_max) {
  ByteReader r(body, "payload");
  PayloadMsg m;
  m.step = r.u64("step");
  m.base_hash = r.u64("base hash");
  m.slot = r.u32("slot");
  m.batch_id = r.u64("batch id");
  if (r.left() < kWirePayloadMin || r.left() > wire_max)
    bad("payload", "wire payload of " + std::to_string(r.left()) + " bytes; expected " + std::to_string(kWirePayloadMin) +
                       ".." + std::to_string(wire_max) + " for this run's manifest");
  auto d = r.rest();
  m.wire.assign(d.begin(), d.end());
  return m;
}

UpdateMsg decode_update_msg(std::span<const uint8_t> body, uint64_t wire_max, uint32_t max_contributors) {
  ByteReader r(body, "update");
  UpdateMsg m;
  m.step = r.u64("step");
  if (m.step < 1) bad("update", "step 0; updates count from 1");
  uint32_t n = r.u32("contributor count");
  if (n < 1 || n > max_contributors)
    bad("update", std::to_string(n) + " contributors; expected 1.." + std::to_string(max_contributors));
  if (r.left() < uint64_t(n) * 4) bad("update", "truncated contributor list");
  m.contributors.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    m.contributors[i] = r.u32("contributor");
    if (i > 0 && m.contributors[i] <= m.contributors[i - 1]) bad("update", "contributor ids are not ascending and distinct");
  }
  if (r.left() < kWireUpdateMin || r.left() > wire_max)
    bad("update", "wire update of " + std::to_string(r.left()) + " bytes; expected " + std::to_string(kWireUpdateMin) + ".." +
                      std::to_string(wire_max) + " for this run's manifest");
  auto d = r.rest();
  m.wire.assign(d.begin(), d.end());
  return m;
}

HashReport decode_hash_report(std::span<const uint8_t> body) {
  ByteReader r(body, "hash report");
  HashReport m;
  m.step = r.u64("step");
  m.hash = r.u64("hash");
  r.finish();
  return m;
}

Resync decode_resync(std::span<const uint8_t> body) {
  ByteReader r(body, "resync");
  Resync m;
  m.step = r.u64("step");
  m.expected_hash = r.u64("expected hash");
  m.reason = r.str("reason", kMaxReason);
  r.finish();
  return m;
}

Notice decode_notice(std::span<const uint8_t> body) {
  ByteReader r(body, "notice");
  Notice m;
  uint8_t c = r.u8("code");
  if (c < 1 || c > kMaxNoticeCode) bad("notice", "code " + std::to_string(c) + " is outside 1.." + std::to_string(kMaxNoticeCode));
  m.code = NoticeCode(c);
  m.step = r.u64("step");
  r.finish();
  return m;
}

ErrorMsg decode_error(std::span<const uint8_t> body) {
  ByteReader r(body, "error");
  ErrorMsg m;
  uint16_t c = r.u16("code");
  if (c < 1 || c > kMaxErrorCode) bad("error", "code " + std::to_string(c) + " is outside 1.." + std::to_string(kMaxErrorCode));
  m.code = ErrorCode(c);
  m.reason = r.str("reason", kMaxReason);
  r.finish();
  return m;
}

Ping decode_ping(std::span<const uint8_t> body) {
  ByteReader r(body, "ping");
  Ping m;
  m.nonce = r.u64("nonce");
  r.finish();
  return m;
}

}  // namespace distro::net

// The network protocol between the coordinator and its nodes, version 1 (docs/network.md). Each
// message travels as one frame (net/frame.hpp) whose kind byte is a Kind below; the structs here are
// the frame bodies, little-endian, field by field. Every decoder is strict: exact lengths, enums in
// range, bounded strings and counts checked before anything is allocated, no trailing bytes. It
// throws Error(corrupt) naming the message and the field. Rules that need the run's state (the
// current step, replays, who may send what when) live in net/round_state.hpp and the coordinator.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "optim/manifest.hpp"
#include "train/trainer.hpp"

namespace distro::net {

inline constexpr uint16_t kProtocolVersion = 1;

enum class Kind : uint8_t {
  hello = 1,               // node -> coordinator: version, token
  welcome = 2,             // coordinator -> node: node id, run settings, current step and hash
  sync = 3,                // node -> coordinator: "my replica is at step s with hash h"
  checkpoint_request = 4,  // node -> coordinator: send me the current checkpoint
  checkpoint_info = 5,     // coordinator -> node: step, size, SHA-256 of the checkpoint that follows
  checkpoint_chunk = 6,    // coordinator -> node: one piece of it
  round_start = 7,         // coordinator -> node: step, lr, this node's batch, deadline
  payload = 8,             // node -> coordinator: the wire-format payload of its batch
  update = 9,              // coordinator -> node: the wire-format merged update of a step
  hash_report = 10,        // node -> coordinator: its parameter hash after applying a step
  resync = 11,             // coordinator -> node: your replica disagrees; fetch the checkpoint
  notice = 12,             // either way: pause, resume, leave, run complete
  error = 13,              // either way, before closing: why
  ping = 14,               // either way: liveness; answered with pong
  pong = 15,
};
inline constexpr uint8_t kKindCount = 16;  // kinds are 1..15
const char* kind_name(uint8_t kind);

// Field bounds (bytes).
inline constexpr size_t kMaxToken = 256;
inline constexpr size_t kMaxAgent = 64;
inline constexpr size_t kMaxNodeName = 127;
inline constexpr size_t kMaxPreset = 32;
inline constexpr size_t kMaxReason = 1024;
inline constexpr uint32_t kCheckpointChunkBytes = 1u << 20;  // 1 MiB pieces
inline constexpr uint64_t kMaxBatchTokens = uint64_t(1) << 22;  // batch * seq of one round's batch

struct Hello {
  uint16_t version = kProtocolVersion;
  std::string token;  // 1..kMaxToken printable ASCII
  std::string agent;  // free text for logs: program, version, device (0..kMaxAgent)
};

// What a node needs to build the same replica as everyone else (train/replica.hpp).
struct RunInfo {
  std::string preset;  // model preset name
  uint32_t vocab = 0;  // the model's vocabulary
  uint32_t batch = 0, micro_batch = 0, seq = 0;
  float clip = 0.0f;
  uint32_t chunk = 0, topk = 0;
  float decay = 0.0f;
  ValueMode values = ValueMode::sign;
  uint64_t seed = 0;
  uint64_t total_steps = 0;
  uint32_t nodes_per_round = 0;
  // Overlapped rounds (docs/network.md, "Overlapped rounds"): on the wire an optional trailing
  // u8 1 of the welcome, so a welcome without overlap is the same bytes as before.
  bool overlap = false;
};
// Throws Error(corrupt) naming the first field out of its range (same ranges as train's validate()).
void check_run_info(const RunInfo& r);
// The training settings a peer of this run uses (train/replica.hpp): the run's arithmetic, one peer on
// `device` with `threads` CPU threads; `data` only names where the batches come from.
TrainConfig peer_config(const RunInfo& r, const std::string& device, unsigned threads, const std::string& data);

struct Welcome {
  uint16_t version = kProtocolVersion;
  uint32_t node_id = 0;  // this node's peer id in payloads (>= 1, stable for its name)
  std::string node_name;
  uint64_t run_id = 0;
  uint64_t manifest_hash = 0;
  uint64_t step = 0;        // steps applied so far (the last completed round)
  uint64_t param_hash = 0;  // the coordinator's parameter hash at that step
  uint32_t deadline_ms = 0;  // round deadline
  RunInfo run;
};

struct Sync {
  uint64_t step = 0, hash = 0;
};

struct CheckpointRequest {
  uint64_t have_step = 0;  // informational: where the node stands
};

struct CheckpointInfo {
  uint64_t step = 0, param_hash = 0;
  uint64_t total_bytes = 0;
  uint32_t chunk_bytes = 0, chunks = 0;  // chunks == ceil(total_bytes / chunk_bytes)
  std::array<uint8_t, 32> sha256{};
};

struct CheckpointChunk {
  uint64_t step = 0;
  uint32_t index = 0;
  std::vector<uint8_t> data;
};

struct RoundStart {
  uint64_t step = 0;  // the step this round produces (steps done + 1)
  float lr = 0.0f;
  uint64_t batch_id = 0;  // which batch of the run's stream (docs/network.md, "batches")
  uint32_t slot = 0;      // position of this batch in the round
  uint32_t deadline_ms = 0;
  uint32_t batch = 0, seq = 0;
  std::vector<int32_t> tokens, targets;  // batch * seq each
  // Overlapped runs only (encoded after the step when has_base): the step whose parameters the
  // batch must be trained on (step - 2 when the round started before step - 1 was merged, else
  // step - 1).
  bool has_base = false;
  uint64_t base_step = 0;
};

struct PayloadMsg {
  uint64_t step = 0;
  uint64_t base_hash = 0;  // the node's parameter hash it trained on (after step - 1)
  uint32_t slot = 0;
  uint64_t batch_id = 0;      // the batch it trained on (as the round start named it)
  std::vector<uint8_t> wire;  // wire/codec payload
};

struct UpdateMsg {
  uint64_t step = 0;
  std::vector<uint32_t> contributors;  // node ids whose payloads were merged, ascending
  std::vector<uint8_t> wire;           // wire/codec merged update
};

struct HashReport {
  uint64_t step = 0, hash = 0;
};

struct Resync {
  uint64_t step = 0, expected_hash = 0;
  std::string reason;
};

enum class NoticeCode : uint8_t {
  node_paused = 1,    // node: assign me no batches for now (I still follow the updates)
  node_resumed = 2,   // node: I take batches again
  node_leaving = 3,   // node: I am leaving after this
  run_paused = 4,     // coordinator: no new rounds until resumed
  run_resumed = 5,
  run_complete = 6,   // coordinator: the run reached its last step
  shutting_down = 7,  // coordinator: it is stopping; reconnect later
  in_sync = 8,        // coordinator: your sync is good (the catch-up updates came before this)
};
inline constexpr uint8_t kMaxNoticeCode = 8;
const char* notice_name(NoticeCode c);

struct Notice {
  NoticeCode code = NoticeCode::node_paused;
  uint64_t step = 0;
};

// Error codes sent with an error message; reconnecting cannot cure the "fatal" ones.
enum class ErrorCode : uint16_t {
  protocol = 1,   // malformed, oversized, replayed or out-of-order message
  auth = 2,       // unknown or revoked token (fatal)
  version = 3,    // protocol version mismatch (fatal)
  busy = 4,       // the name is connected already, or the run is full
  shutdown = 5,   // the coordinator is stopping
  internal = 6,
  mismatch = 7,   // the node's replica disagrees with the run (fatal: e.g. a model it cannot build)
};
inline constexpr uint16_t kMaxErrorCode = 7;
inline bool is_fatal(ErrorCode c) { return c == ErrorCode::auth || c == ErrorCode::version || c == ErrorCode::mismatch; }

struct ErrorMsg {
  ErrorCode code = ErrorCode::protocol;
  std::string reason;  // up to kMaxReason bytes, printable ASCII
};

struct Ping {
  uint64_t nonce = 0;
};

// Encoders: the frame body of each message (the kind goes in the frame header).
std::vector<uint8_t> encode(const Hello&);
std::vector<uint8_t> encode(const Welcome&);
std::vector<uint8_t> encode(const Sync&);
std::vector<uint8_t> encode(const CheckpointRequest&);
std::vector<uint8_t> encode(const CheckpointInfo&);
std::vector<uint8_t> encode(const CheckpointChunk&);
std::vector<uint8_t> encode(const RoundStart&);
std::vector<uint8_t> encode(const PayloadMsg&);
std::vector<uint8_t> encode(const UpdateMsg&);
std::vector<uint8_t> encode(const HashReport&);
std::vector<uint8_t> encode(const Resync&);
std::vector<uint8_t> encode(const Notice&);
std::vector<uint8_t> encode(const ErrorMsg&);
std::vector<uint8_t> encode(const Ping&);

// Decoders. The ones with bounds take them from what the receiver already knows (its run settings),
// never from the message itself.
Hello decode_hello(std::span<const uint8_t> body);
Welcome decode_welcome(std::span<const uint8_t> body);
Sync decode_sync(std::span<const uint8_t> body);
CheckpointRequest decode_checkpoint_request(std::span<const uint8_t> body);
// total_bytes must be 1..max_total_bytes and chunk_bytes 1..kCheckpointChunkBytes.
CheckpointInfo decode_checkpoint_info(std::span<const uint8_t> body, uint64_t max_total_bytes);
// The chunk must be piece `info`-consistent: index < info.chunks, the exact size that piece has.
CheckpointChunk decode_checkpoint_chunk(std::span<const uint8_t> body, const CheckpointInfo& info);
// batch and seq must equal the run's, every token and target in [0, vocab).
RoundStart decode_round_start(std::span<const uint8_t> body, const RunInfo& run);
// The wire part must be wire_min..wire_max bytes (wire_max from max_payload_bytes()).
PayloadMsg decode_payload_msg(std::span<const uint8_t> body, uint64_t wire_max);
// At most max_contributors ids, ascending and distinct.
UpdateMsg decode_update_msg(std::span<const uint8_t> body, uint64_t wire_max, uint32_t max_contributors);
HashReport decode_hash_report(std::span<const uint8_t> body);
Resync decode_resync(std::span<const uint8_t> body);
Notice decode_notice(std::span<const uint8_t> body);
ErrorMsg decode_error(std::span<const uint8_t> body);
Ping decode_ping(std::span<const uint8_t> body);

// Smallest possible wire payload/update (header and checksum).
inline constexpr uint64_t kWirePayloadMin = 48, kWireUpdateMin = 64;

}  // namespace distro::net

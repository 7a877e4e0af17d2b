// Private to the coordinator (coordinator*.cpp): its state, all of it owned by the io thread except
// the status snapshot.
#pragma once

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "data/dataset.hpp"
#include "data/sampler.hpp"
#include "history/ledger.hpp"
#include "net/batch_queue.hpp"
#include "net/connection.hpp"
#include "net/coordinator.hpp"
#include "net/listener.hpp"
#include "net/protocol.hpp"
#include "net/round_state.hpp"
#include "net/tls.hpp"
#include "train/replica.hpp"

namespace distro::net {

using Clock = std::chrono::steady_clock;

struct Session {
  std::shared_ptr<Connection> conn;
  enum class State { hello, welcomed, syncing, in_sync } state = State::hello;
  std::string name, token;
  uint32_t id = 0;
  bool paused = false, leaving = false, closing = false;
  Clock::time_point opened, last_rx;
  double throttled_seen = 0.0;
  Clock::time_point last_limit_event{};
  // checkpoint transfer in progress
  std::shared_ptr<const std::vector<uint8_t>> xfer;
  uint32_t xfer_next = 0, xfer_chunks = 0;
  uint64_t xfer_step = 0;
  std::unique_ptr<asio::steady_timer> xfer_timer;
  std::string label() const { return name.empty() ? "connection from " + conn->peer() : "node " + name; }
};

// A round's ledger rows, kept in the checkpoint until the ledger has them.
struct PendingRound {
  RoundRecord round;
  std::vector<Contribution> contributions;
};

struct Coordinator::Impl {
  explicit Impl(const RunConfig& c);
  ~Impl();

  // ---- run (coordinator.cpp) ----
  RunConfig cfg;
  EventHandler on_event;
  std::unique_ptr<Dataset> data;
  std::unique_ptr<Sampler> sampler;
  LlamaConfig model_cfg;
  uint64_t run_id = 0;
  std::unique_ptr<Replica> own;  // the coordinator's copy of the parameters
  Manifest manifest;
  std::vector<uint64_t> block_sizes;
  uint64_t step = 0;
  BatchQueue queue;
  RoundState round;
  std::map<uint64_t, uint64_t> hashes;  // step -> parameter hash, the last update_history + 1 steps
  std::map<uint64_t, std::shared_ptr<const std::vector<uint8_t>>> updates;  // step -> update message body
  std::map<std::string, uint32_t> node_ids;
  uint32_t next_node_id = 1;
  std::vector<PendingRound> ledger_pending;
  uint64_t last_durable = 0;
  std::unique_ptr<Ledger> ledger;
  std::shared_ptr<const std::vector<uint8_t>> public_ckpt;  // served to joiners
  uint64_t public_ckpt_step = 0;
  std::array<uint8_t, 32> public_ckpt_sha{};
  uint64_t payload_wire_max = 0;
  FrameLimits limits;

  // ---- network ----
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread thread;
  std::mutex wait_mu;
  TlsIdentity identity;
  std::string fp;
  std::shared_ptr<asio::ssl::context> tls;
  std::unique_ptr<Listener> listener;
  uint16_t bound_port = 0;
  std::map<Connection*, std::shared_ptr<Session>> sessions;
  std::map<uint32_t, Session*> by_node;  // sessions past hello, by node id
  // Closed connections still flushing their queue (a connection reports on_close at once and
  // sends what was queued before closing); held so that stopping waits for them.
  std::vector<std::shared_ptr<Connection>> draining;
  void prune_draining();
  std::map<std::string, std::string> tokens;  // name -> token
  std::filesystem::file_time_type config_mtime{};
  double up_limit = 0, down_limit = 0;  // node's upload to us, our sending to it
  uint64_t closed_bytes_up = 0, closed_bytes_down = 0;

  // ---- rounds ----
  std::atomic<bool> started{false};
  bool paused = false, finishing = false, stopping = false, complete = false, failed = false;
  asio::steady_timer deadline_timer, fill_timer, tick_timer, stop_timer;
  bool fill_armed = false;
  Clock::time_point idle_since, round_started, stop_began;
  float round_lr = 0.0f;
  // The step whose parameters the open round trains on: the coordinator's step when the round
  // started (step - 1 of the round, or step - 2 for a round started before its previous round was
  // merged, which only overlapped runs do).
  uint64_t round_base = 0;
  uint64_t round_serial = 0, rounds_done = 0;
  double last_round_seconds = 0.0;
  std::map<uint32_t, uint64_t> round_down_bytes;  // node -> bytes of its round start frame
  std::map<uint32_t, std::string> round_reasons;  // node -> why its batch is missing

  mutable std::mutex status_mu;
  CoordinatorStatus st;

  // coordinator.cpp
  void load_or_resume();
  nlohmann::json settings_json() const;
  void write_checkpoint();
  void commit_ledger();
  void build_public_checkpoint();
  void emit(NetEvent::Kind kind, uint64_t step, const std::string& node, const std::string& message);
  void update_status();
  std::string state_name() const;
  void tick();
  void reload_tokens_now(bool quiet_if_same);
  void begin_stop(const std::string& why);
  void poll_stopped();
  // coordinator_rounds.cpp
  // eager: called from close_round before the closed round is merged (overlapped runs): starts the
  // next round at once if as many nodes as the closed round had are available, else leaves it to
  // the normal start after the merge.
  void maybe_start_round(bool eager = false, size_t eager_nodes = 0);
  void start_round(const std::vector<uint32_t>& nodes, uint64_t s);
  void close_round();
  void complete_run();
  void finish_now();
  std::vector<uint32_t> available_nodes() const;
  // coordinator_sessions.cpp
  void on_accept(std::shared_ptr<Connection> conn);
  void on_frame(Session& s, Frame&& f);
  void on_closed(Connection* c, const std::string& reason);
  void violation(Session& s, const std::string& reason, ErrorCode code = ErrorCode::protocol);
  void on_hello(Session& s, const Frame& f);
  void on_sync(Session& s, const Sync& m);
  void on_checkpoint_request(Session& s);
  void pump_transfer(const std::shared_ptr<Session>& s);
  void on_payload(Session& s, const Frame& f);
  void on_hash_report(Session& s, const HashReport& m);
  void on_notice(Session& s, const Notice& m);
  void send_resync(Session& s, const std::string& reason);
  void send(Session& s, Kind kind, std::vector<uint8_t> body);
  void set_in_sync(Session& s);
  std::string name_of(uint32_t id) const;
};

}  // namespace distro::net

// Private to the node (node*.cpp). The io thread owns the connection state; the worker thread owns
// the replica and the local ledger. They talk through the worker's task queue and asio::post.
#pragma once

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "history/ledger.hpp"
#include "net/connection.hpp"
#include "net/node.hpp"
#include "net/protocol.hpp"
#include "train/replica.hpp"

namespace distro::net {

struct Node::Impl {
  explicit Impl(const NodeOptions& o);

  NodeOptions opt;
  std::string host;
  uint16_t port = 0;
  EventHandler on_event;

  // ---- io thread ----
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread io_thread;
  std::atomic<bool> started{false};
  std::mutex wait_mu;
  std::shared_ptr<asio::ssl::context> tls;
  std::shared_ptr<Connection> conn;
  std::shared_ptr<Connection> draining;  // the last closed connection, while it flushes its queue
  uint64_t epoch = 0;  // per connection; frames and tasks of an older one are ignored
  enum class Link { idle, connecting, hello, syncing, in_sync } link = Link::idle;
  bool have_welcome = false;
  Welcome welcome;
  FrameLimits limits;
  uint64_t update_wire_max = 256u << 20;
  uint64_t max_ckpt_bytes = 0;
  bool ckpt_active = false;
  CheckpointInfo ckpt_info;
  std::vector<uint8_t> ckpt_buf;
  uint32_t ckpt_next = 0;
  uint32_t attempts = 0;
  uint32_t ticks = 0;
  double throttled_seen = 0.0;
  std::chrono::steady_clock::time_point last_limit_event{};
  asio::steady_timer retry_timer, ping_timer, stop_timer;
  std::chrono::steady_clock::time_point last_rx, stop_began;
  bool paused = false, finishing = false, stopping = false, run_paused = false, run_done = false;
  uint64_t final_step = 0;  // the run's last step, once it is complete
  std::string end_state;  // "complete", "left", "stopped", "failed"
  uint64_t assigned_step = 0;  // the last round this node was given
  uint64_t applied_step = 0;   // as the worker last reported
  uint64_t closed_bytes_up = 0, closed_bytes_down = 0;
  std::mt19937_64 rng;

  void connect();
  void on_connected(const std::string& error, std::shared_ptr<Connection> c);
  void on_frame(uint64_t ep, Frame&& f);
  void on_close(uint64_t ep, const std::string& reason);
  void drop_link(const std::string& reason);  // protocol trouble: close, reconnect
  void schedule_reconnect(const std::string& why);
  void tick();  // every second: pings, silence, rate-cap reports
  void send(Kind k, std::vector<uint8_t> body);
  void begin_stop(const std::string& end, const std::string& why);
  void poll_stopped();
  void maybe_leave();
  void emit(NetEvent::Kind k, uint64_t step, const std::string& msg);
  void update_status();
  std::string state_name() const;

  // ---- worker thread ----
  std::thread worker;
  std::mutex q_mu;
  std::condition_variable q_cv;
  struct Task {
    bool bound;      // bound to its connection: dropped once that connection is gone
    uint64_t epoch;
    std::function<void()> fn;
  };
  std::deque<Task> tasks;
  bool worker_quit = false;
  std::atomic<uint64_t> live_epoch{0};
  std::atomic<bool> worker_done{false};  // the worker drained its queue and exited
  std::atomic<uint64_t> sync_gen{0};  // bumped by a resync: queued rounds of before are dropped
  // bound = true: training and anything that only makes sense on this connection. Updates and
  // checkpoints are the run's, valid whatever connection brought them, so they are not bound.
  void post_work(std::function<void()> fn, bool bound);
  void worker_loop();

  // Owned by the worker.
  std::unique_ptr<Replica> replica;
  Welcome built_for;  // the settings the replica was built from
  uint64_t replica_step = 0, replica_hash = 0;
  std::unique_ptr<Ledger> ledger;
  struct Trained {
    uint64_t up = 0, down = 0, tokens = 0;
  };
  std::map<uint64_t, Trained> trained;  // step -> what this node moved for its batch of that step
  bool misbehaved = false;
  std::vector<uint64_t> block_sizes;
  void w_prepare(const Welcome& w);
  void w_train(const RoundStart& m, uint64_t frame_bytes, uint64_t gen);
  void w_apply(const UpdateMsg& m, uint64_t frame_bytes);
  // Overlapped runs (docs/network.md, "Overlapped rounds"): the newest update is held back until
  // this node has made its payload for the next round (or a round needs it, a newer update comes,
  // the run's last step, or the node leaves), so that the next round trains without it.
  std::optional<UpdateMsg> held;
  uint64_t held_bytes = 0;
  uint64_t last_trained = 0;  // the step of the last round this node trained
  uint64_t run_steps = 0;     // the run's total steps, as the last welcome said
  std::atomic<bool> release_held{false};  // leaving or the run is complete: hold nothing back
  void w_apply_now(const UpdateMsg& m, uint64_t frame_bytes);
  void w_release();  // applies the held update, if any
  void w_load_checkpoint(std::vector<uint8_t> bytes, CheckpointInfo info);
  void w_fail_link(const std::string& reason);  // from the worker: drop the link (on the io thread)

  mutable std::mutex status_mu;
  NodeStatus st;  // the snapshot (fields the worker owns are written under status_mu)
};

}  // namespace distro::net

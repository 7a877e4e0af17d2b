// A contributor node of a network run (docs/network.md): it joins a coordinator over TLS with its
// token, builds its replica from the run's settings (or downloads the current checkpoint and
// verifies it), then per round trains the batch it is given, uploads its payload, applies the merged
// update and reports its parameter hash. After any network error it reconnects with exponential
// backoff (with jitter, capped) and resyncs.
//
// Threading: an io thread runs the connection and the event handler; a worker thread trains and
// applies. Public calls are thread-safe; status() reads a snapshot.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "net/events.hpp"

namespace distro::net {

struct NodeOptions {
  std::string coordinator;  // "host:port"
  std::string token;
  std::string device = "cpu";
  std::string pin;          // "sha256:<64 hex>" to require that certificate; "" = accept any (and log it)
  double up_limit = 0.0;    // bytes/s we send, 0 = unlimited
  double down_limit = 0.0;  // bytes/s we receive, 0 = unlimited
  std::string history;      // local ledger file of this node's contributions ("" = none)
  unsigned threads = 0;     // CPU threads of a CPU device, 0 = all cores
  double retry_min_s = 0.5, retry_max_s = 30.0;  // reconnect backoff: first delay and cap
  std::string agent;        // free text the coordinator logs ("distro node" by default)
  std::string misbehave;    // test switch (docs/network.md): replay, wrong-step, oversized, garbage, drift, late
};

struct NodeStatus {
  std::string state;  // "created", "connecting", "syncing", "training", "paused", "leaving", "complete", "left", "stopped", "failed"
  std::string node_name;
  uint32_t node_id = 0;
  uint64_t step = 0;  // steps applied to this node's replica
  uint64_t total_steps = 0;
  uint64_t param_hash = 0;
  uint64_t rounds_trained = 0;   // batches this node trained and uploaded
  uint64_t rounds_accepted = 0;  // of those, merged into an update
  uint64_t bytes_up = 0, bytes_down = 0;  // all connections of this process
  double last_loss = 0.0;
  double last_train_seconds = 0.0;
  uint32_t reconnects = 0;
  std::string coordinator_fingerprint;
  std::string error;  // why it failed (state "failed")
};

class Node {
 public:
  // Checks the options (Error(invalid_argument) naming the bad one); connects nothing yet.
  explicit Node(const NodeOptions& options);
  ~Node();  // stop() and wait()
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  void start();   // starts the threads and the first connection
  void pause();   // takes no new batches (it still follows the updates and stays in sync)
  void resume();
  void finish();  // finishes the round it is in (if any), then leaves
  void stop();    // leaves now
  void wait();    // until it left, the run completed, or it failed
  void set_limits(double up_bps, double down_bps);  // live
  NodeStatus status() const;
  void set_event_handler(EventHandler handler);  // set before start()

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace distro::net

// The coordinator of a network run (docs/network.md): it owns the run (data, schedule, its own
// copy of the parameters, the batch queue), accepts nodes over TLS with their tokens, runs rounds
// with a deadline, merges the payloads into the update every replica applies, checks the nodes'
// hashes, serves checkpoints to joiners, and keeps durable state (checkpoint + ledger) in its
// state folder so that a restart resumes from the last durable round.
//
// Threading: one io thread runs the network, the rounds and the event handler. The public calls are
// thread-safe (they post to that thread); status() reads a snapshot.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "net/events.hpp"
#include "net/run_config.hpp"

namespace distro::net {

struct CoordinatorStatus {
  uint64_t step = 0;          // steps applied (the last completed round)
  uint64_t total_steps = 0;
  uint64_t rounds_done = 0;   // rounds completed by this process (void rounds not counted)
  uint32_t nodes_connected = 0;
  uint32_t nodes_in_sync = 0;
  uint64_t bytes_up = 0;      // received from nodes, all connections of this process
  uint64_t bytes_down = 0;    // sent to nodes
  double last_round_seconds = 0.0;
  uint64_t param_hash = 0;
  std::string state;          // "created", "waiting", "training", "paused", "finishing", "complete", "stopped", "failed"
};

class Coordinator {
 public:
  // Validates the configuration, loads the data, builds the model and, when state_dir holds a
  // checkpoint of this run, resumes from it (Error(mismatch) when it belongs to a run with other
  // settings). Nothing listens yet.
  explicit Coordinator(const RunConfig& config);
  ~Coordinator();  // stop() and wait()
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Binds the listen address (port 0 = any free port; Error(io) when it cannot) and starts the io
  // thread. Error(state) when called twice.
  void start();
  uint16_t port() const;
  std::string fingerprint() const;  // of the TLS certificate nodes should pin
  void pause();   // no new rounds (the open one completes)
  void resume();
  void finish();  // end after the open round: checkpoint, tell the nodes, stop
  void stop();    // stop now; the durable state is the last checkpoint
  void wait();    // until stopped (by stop, finish, the run completing or a fatal error)
  // Default caps for every node, live: up = what a node may send us, down = what we send it,
  // bytes/s, 0 = unlimited.
  void set_default_limits(double up_bps, double down_bps);
  CoordinatorStatus status() const;
  void set_event_handler(EventHandler handler);  // set before start()
  // Re-reads the tokens of the configuration file now (also done by itself when the file changes);
  // nodes whose token is gone or changed are disconnected.
  void reload_tokens();

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace distro::net

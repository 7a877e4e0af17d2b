// One round of a run, as a state machine without sockets (docs/network.md, "rounds"): which node
// trains which batch, which payloads arrived, and the rules a payload must pass to count:
//   - it is for the open round's step, from a node with a batch in it, for that batch (id and slot),
//     and the first one for that batch;
//   - a payload for a batch the node was given earlier (a round that closed without it, or an
//     earlier attempt at the same step) and that never arrived is "late": dropped without blame (the
//     node was slow, not hostile);
//   - anything else (a step or batch the node was not given, a future step, a second payload for a
//     batch) is a violation: the coordinator closes that node's connection with the reason given.
// A round that closes without any payload is void: the step is tried again (begin() with the same
// step), with the batches given back to the queue.
// The coordinator owns one RoundState and calls it from its io thread only.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "net/batch_queue.hpp"
#include "wire/messages.hpp"

namespace distro::net {

struct Assignment {
  uint32_t slot = 0;
  uint64_t batch_id = 0;
  uint32_t node = 0;  // node id
};

// Gives the round's batches to nodes: with n = min(nodes, slots), the n smallest owed/fresh batch ids
// of the queue go, in ascending order, to the first n node ids in ascending order; slot i holds the
// i-th. nodes must be ascending and distinct (Error(invalid_argument) otherwise).
std::vector<Assignment> assign_batches(BatchQueue& queue, const std::vector<uint32_t>& nodes);

// Overlapped rounds (docs/network.md, "Overlapped rounds"). The coordinator starts round
// `step + 2` before merging the round `step + 1` it just closed only if that round was not void, the
// run has that step, and as many nodes are available as the closed round had (at least min_nodes;
// capped at slots): otherwise the next round starts after the merge, on the merged parameters.
bool start_next_round_early(bool overlap, bool closed_round_void, uint64_t step, uint64_t total_steps, size_t available,
                            size_t closed_round_nodes, uint32_t min_nodes, uint32_t slots);
// A node of an overlapped run holds the update of `update_step` back (applies it later) unless it
// already trained the round after it, the run ends with it, or the node is leaving.
bool hold_update(uint64_t update_step, uint64_t last_trained_step, uint64_t run_steps, bool leaving);

enum class Verdict { accept, late, violation };
struct PayloadCheck {
  Verdict verdict = Verdict::violation;
  std::string reason;  // for late and violation: says what was wrong
};

struct RoundOutcome {
  uint64_t step = 0;
  // Accepted payloads in slot order, with who sent them.
  std::vector<Assignment> accepted;
  std::vector<PeerPayload> payloads;
  std::vector<uint64_t> payload_bytes;
  // Assignments that produced nothing (their batches go back to the queue).
  std::vector<Assignment> missed;
};

class RoundState {
 public:
  bool open() const { return open_; }
  uint64_t step() const { return step_; }
  const std::vector<Assignment>& assignments() const { return assigned_; }

  // Opens the round of `step` (>= the previous one; equal after a void round). Throws Error(state)
  // while one is open.
  void begin(uint64_t step, std::vector<Assignment> assignments);
  // The state rules above; `who` names the node in the reason. Marks a late payload as seen, so
  // that a copy of it is a replay.
  PayloadCheck check(uint32_t node, const std::string& who, uint64_t step, uint32_t slot, uint64_t batch_id);
  // Stores a payload that check() accepted. Throws Error(state) if it was not.
  void accept(uint32_t node, PeerPayload payload, uint64_t bytes);
  // The node left (discard = false: a payload it delivered still counts) or was cut off for a
  // violation (discard = true: its payload of this round is dropped too). An undelivered batch is
  // missed.
  void drop(uint32_t node, bool discard);
  // Every assignment has its payload or was dropped.
  bool complete() const;
  // Whether node has a batch in the open round that it has not delivered (and was not dropped).
  bool owes(uint32_t node) const;
  // Closes the round (complete or at its deadline).
  RoundOutcome close();

 private:
  // The batches a node was given in its recent rounds, newest last, at most kRemembered: a payload
  // for one of them that is not the open round's is late; for anything else, a violation.
  struct Given {
    uint64_t step = 0, batch_id = 0;
    bool received = false;
  };
  static constexpr size_t kRemembered = 16;
  Given* find(uint32_t node, uint64_t step, uint64_t batch_id);
  void mark_received(uint32_t node, uint64_t batch_id);
  struct Slot {
    Assignment a;
    bool have = false, dropped = false;
    PeerPayload payload;
    uint64_t bytes = 0;
  };
  bool open_ = false;
  uint64_t step_ = 0;
  std::vector<Assignment> assigned_;
  std::vector<Slot> slots_;
  std::map<uint32_t, std::vector<Given>> seen_;
};

}  // namespace distro::net

#include "net/round_state.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace distro::net {

std::vector<Assignment> assign_batches(BatchQueue& queue, const std::vector<uint32_t>& nodes) {
  for (size_t i = 1; i < nodes.size(); ++i)
    if (nodes[i] <= nodes[i - 1]) fail(Code::invalid_argument, "node ids for a round must be ascending and distinct");
  const size_t n = std::min<size_t>(nodes.size(), queue.slots());
  std::vector<uint64_t> ids = queue.take(n);
  std::vector<Assignment> out;
  for (size_t i = 0; i < n; ++i) out.push_back({uint32_t(i), ids[i], nodes[i]});
  return out;
}

bool start_next_round_early(bool overlap, bool closed_round_void, uint64_t step, uint64_t total_steps, size_t available,
                            size_t closed_round_nodes, uint32_t min_nodes, uint32_t slots) {
  if (!overlap || closed_round_void || step + 2 > total_steps) return false;
  return available >= min_nodes && available >= std::min<size_t>(closed_round_nodes, slots);
}

bool hold_update(uint64_t update_step, uint64_t last_trained_step, uint64_t run_steps, bool leaving) {
  return !(last_trained_step > update_step || update_step >= run_steps || leaving);
}

void RoundState::begin(uint64_t step, std::vector<Assignment> assignments) {
  if (open_) fail(Code::state, "round " + std::to_string(step_) + " is still open; close it before starting another");
  if (step < step_ || step == 0)
    fail(Code::state, "round " + std::to_string(step) + " would not follow round " + std::to_string(step_));
  open_ = true;
  step_ = step;
  assigned_ = std::move(assignments);
  slots_.clear();
  for (const Assignment& a : assigned_) {
    slots_.push_back({a, false, false, {}, 0});
    std::vector<Given>& g = seen_[a.node];
    g.push_back({step, a.batch_id, false});
    if (g.size() > kRemembered) g.erase(g.begin());
  }
}

RoundState::Given* RoundState::find(uint32_t node, uint64_t step, uint64_t batch_id) {
  auto it = seen_.find(node);
  if (it == seen_.end()) return nullptr;
  for (Given& g : it->second)
    if (g.step == step && g.batch_id == batch_id) return &g;
  return nullptr;
}

void RoundState::mark_received(uint32_t node, uint64_t batch_id) {
  if (Given* g = find(node, step_, batch_id)) g->received = true;
}

PayloadCheck RoundState::check(uint32_t node, const std::string& who, uint64_t step, uint32_t slot, uint64_t batch_id) {
  const std::string s = std::to_string(step), b = std::to_string(batch_id);
  Given* given = find(node, step, batch_id);
  if (!given) {
    if (open_ && step == step_)
      return {Verdict::violation, who + ": payload for batch " + b + " of step " + s + ", a batch it was not given"};
    if (!open_)
      return {Verdict::violation, who + ": payload for step " + s + " but no round is open (the last was " +
                                      std::to_string(step_) + ")"};
    return {Verdict::violation, who + ": payload for step " + s + " but the round is " + std::to_string(step_)};
  }
  if (given->received) return {Verdict::violation, who + ": a second payload for batch " + b + " of step " + s + " (replayed)"};
  if (open_ && step == step_)
    for (const Slot& x : slots_) {
      if (x.a.node != node || x.a.batch_id != batch_id || x.dropped) continue;
      if (x.a.slot != slot)
        return {Verdict::violation, who + ": payload for slot " + std::to_string(slot) + " of step " + s +
                                        " but its batch is in slot " + std::to_string(x.a.slot)};
      return {Verdict::accept, ""};
    }
  given->received = true;
  return {Verdict::late, who + ": payload for batch " + b + " of step " + s + " arrived after its round closed; dropped"};
}

void RoundState::accept(uint32_t node, PeerPayload payload, uint64_t bytes) {
  if (!open_) fail(Code::state, "no round is open");
  for (Slot& x : slots_)
    if (x.a.node == node && !x.have && !x.dropped) {
      x.have = true;
      x.payload = std::move(payload);
      x.bytes = bytes;
      mark_received(node, x.a.batch_id);
      return;
    }
  fail(Code::state, "node " + std::to_string(node) + " has no open batch in round " + std::to_string(step_));
}

void RoundState::drop(uint32_t node, bool discard) {
  if (!open_) return;
  for (Slot& x : slots_)
    if (x.a.node == node && !x.dropped && (discard || !x.have)) {
      x.dropped = true;
      x.have = false;
      x.payload = {};
      x.bytes = 0;
      mark_received(node, x.a.batch_id);  // anything later for it is not "late" but a violation
    }
}

bool RoundState::complete() const {
  if (!open_) return false;
  for (const Slot& x : slots_)
    if (!x.have && !x.dropped) return false;
  return true;
}

bool RoundState::owes(uint32_t node) const {
  if (!open_) return false;
  for (const Slot& x : slots_)
    if (x.a.node == node && !x.have && !x.dropped) return true;
  return false;
}

RoundOutcome RoundState::close() {
  if (!open_) fail(Code::state, "no round is open");
  RoundOutcome o;
  o.step = step_;
  for (Slot& x : slots_) {  // slots_ is in slot order
    if (x.have) {
      o.accepted.push_back(x.a);
      o.payloads.push_back(std::move(x.payload));
      o.payload_bytes.push_back(x.bytes);
    } else {
      o.missed.push_back(x.a);
    }
  }
  open_ = false;
  slots_.clear();
  return o;
}

}  // namespace distro::net

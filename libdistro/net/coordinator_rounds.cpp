// The coordinator's rounds (docs/network.md, "the round state machine"): waiting for nodes, the
// round start with each node's batch, the deadline, the merge in slot order, the apply on the
// coordinator's own copy, the durable checkpoint and ledger rows, and the broadcast.
#include <algorithm>

#include "core/error.hpp"
#include "net/format.hpp"
#include "net/coordinator_impl.hpp"
#include "optim/merger.hpp"
#include "train/schedule.hpp"
#include "wire/codec.hpp"

namespace distro::net {

namespace {
int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

std::vector<uint32_t> Coordinator::Impl::available_nodes() const {
  std::vector<uint32_t> out;
  for (const auto& [id, s] : by_node)
    if (s->state == Session::State::in_sync && !s->paused && !s->leaving && !s->closing) out.push_back(id);
  return out;  // by_node is ordered by id
}

void Coordinator::Impl::maybe_start_round(bool eager, size_t eager_nodes) {
  if (stopping || complete || round.open() || paused || finishing) return;
  if (eager) {
    // Overlap: round step + 2 goes out now, trained on the parameters of `step`, while round
    // step + 1 (just closed) is merged and broadcast.
    auto nodes = available_nodes();
    if (!start_next_round_early(cfg.train.overlap, false, step, cfg.train.steps, nodes.size(), eager_nodes, cfg.min_nodes,
                                cfg.nodes_per_round))
      return;
    fill_timer.cancel();
    return start_round(nodes, step + 2);
  }
  if (step >= cfg.train.steps) return complete_run();
  auto nodes = available_nodes();
  if (nodes.size() < cfg.min_nodes) return;
  if (nodes.size() < cfg.nodes_per_round) {
    // Not every slot can be filled: give missing nodes fill_wait_s (from the end of the last round)
    // to arrive, then go on with those present.
    auto waited = Clock::now() - idle_since;
    auto need = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.fill_wait_s));
    if (waited < need) {
      if (!fill_armed) {
        fill_armed = true;
        fill_timer.expires_after(need - waited);
        fill_timer.async_wait([this](const asio::error_code& ec) {
          fill_armed = false;
          if (!ec) maybe_start_round();
        });
      }
      return;
    }
  }
  fill_timer.cancel();
  start_round(nodes, step + 1);
}

void Coordinator::Impl::start_round(const std::vector<uint32_t>& nodes, uint64_t s) {
  const TrainConfig& t = cfg.train;
  round_base = step;
  const uint64_t warmup = t.warmup ? t.warmup : std::min<uint64_t>(100, t.steps / 10);
  const float peak = t.lr > 0.0f ? t.lr : default_lr(t.optimizer, t.preset);
  round_lr = scheduled_lr(s, t.steps, warmup, peak, t.min_lr_ratio);
  std::vector<Assignment> as = assign_batches(queue, nodes);
  round.begin(s, as);
  round_started = Clock::now();
  round_down_bytes.clear();
  round_reasons.clear();
  ++round_serial;
  const uint32_t deadline_ms = uint32_t(std::min(cfg.round_deadline_s * 1000.0, 4.0e9));
  const size_t n = size_t(t.batch) * t.seq;
  for (const Assignment& a : as) {
    BatchCoords bc = queue.coords(a.batch_id);
    RoundStart m;
    m.step = s;
    m.has_base = t.overlap;
    m.base_step = round_base;
    m.lr = round_lr;
    m.batch_id = a.batch_id;
    m.slot = a.slot;
    m.deadline_ms = deadline_ms;
    m.batch = uint32_t(t.batch);
    m.seq = uint32_t(t.seq);
    m.tokens.resize(n);
    m.targets.resize(n);
    sampler->train_batch(bc.step, bc.peer, bc.peers, t.batch, m.tokens.data(), m.targets.data());
    auto body = encode(m);
    round_down_bytes[a.node] = body.size() + kFrameHeaderBytes;
    send(*by_node.at(a.node), Kind::round_start, std::move(body));
  }
  deadline_timer.expires_after(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.round_deadline_s)));
  deadline_timer.async_wait([this, serial = round_serial](const asio::error_code& ec) {
    if (ec || serial != round_serial || !round.open()) return;
    for (const Assignment& a : round.assignments())
      if (round.owes(a.node)) {
        round_reasons[a.node] = "missed the deadline of " + std::to_string(cfg.round_deadline_s).substr(0, 6) + " s";
        emit(NetEvent::Kind::info, round.step(), name_of(a.node),
             "node " + name_of(a.node) + " missed the deadline of step " + std::to_string(round.step()) + " (batch " +
                 std::to_string(a.batch_id) + " goes to the next round)");
      }
    close_round();
  });
  update_status();
}

void Coordinator::Impl::close_round() {
  deadline_timer.cancel();
  RoundOutcome o = round.close();
  std::vector<uint64_t> missed;
  for (const Assignment& a : o.missed) missed.push_back(a.batch_id);
  queue.give_back(missed);
  idle_since = Clock::now();
  // What the merge below needs of the closed round, kept before an eager start reuses the fields.
  const float lr = round_lr;
  const auto started_at = round_started;
  auto down_bytes = std::move(round_down_bytes);
  auto reasons = std::move(round_reasons);
  round_down_bytes.clear();
  round_reasons.clear();
  // Overlap: the next round's batches go out before this one is merged. A void round is not
  // overlapped: its step is tried again on the current parameters.
  if (cfg.train.overlap && !o.accepted.empty()) maybe_start_round(true, o.accepted.size() + o.missed.size());
  if (o.accepted.empty()) {
    emit(NetEvent::Kind::info, o.step, "", "round " + std::to_string(o.step) + " closed without a payload; the step is tried again");
    update_status();
    if (finishing) return finish_now();
    return maybe_start_round();
  }
  const TrainConfig& t = cfg.train;
  Merger merger(manifest, run_id, o.step);
  for (PeerPayload& p : o.payloads) merger.add(std::move(p));  // slot order
  const uint64_t prev = hashes.at(step);
  MergedUpdate u = merger.finish(lr, t.weight_decay, prev);
  std::vector<uint8_t> wire = encode_update(manifest, u);
  own->apply(wire);
  step = o.step;
  const uint64_t h = own->hash();
  hashes[step] = h;
  while (hashes.size() > size_t(cfg.update_history) + 1) hashes.erase(hashes.begin());
  UpdateMsg um;
  um.step = step;
  for (const Assignment& a : o.accepted) um.contributors.push_back(a.node);
  std::sort(um.contributors.begin(), um.contributors.end());
  um.wire = std::move(wire);
  auto body = std::make_shared<const std::vector<uint8_t>>(encode(um));
  updates[step] = body;
  while (updates.size() > cfg.update_history) updates.erase(updates.begin());
  const uint64_t update_frame = body->size() + kFrameHeaderBytes;

  // Ledger rows: every node that had a batch, with what it moved for this round.
  PendingRound pr;
  pr.round = {step, uint32_t(o.accepted.size()), um.wire.size(), h, now_unix_ms()};
  auto row = [&](const Assignment& a, bool ok, uint64_t up) {
    Contribution c;
    c.node = name_of(a.node);
    c.step = step;
    c.bytes_up = up;
    c.bytes_down = down_bytes[a.node] + update_frame;
    c.tokens = ok ? uint64_t(t.batch) * uint64_t(t.seq) : 0;
    c.accepted = ok;
    c.reason = ok ? "" : (reasons.count(a.node) ? reasons[a.node] : "no payload");
    c.unix_ms = pr.round.unix_ms;
    pr.contributions.push_back(std::move(c));
  };
  for (size_t i = 0; i < o.accepted.size(); ++i) row(o.accepted[i], true, o.payload_bytes[i]);
  for (const Assignment& a : o.missed) row(a, false, 0);
  ledger_pending.push_back(std::move(pr));

  // Durable before anyone hears of the step: a restarted coordinator never lags its nodes when
  // checkpoint_every is 1.
  if (step % cfg.checkpoint_every == 0 || step >= t.steps || finishing) {
    try {
      write_checkpoint();
      commit_ledger();
    } catch (const Error& e) {
      emit(NetEvent::Kind::error, step, "", std::string("durable state not saved (it is retried after the next round): ") + e.what());
    }
  }
  for (auto& [id, s] : by_node)
    if (s->state == Session::State::in_sync && !s->closing) s->conn->send(uint8_t(Kind::update), *body);

  ++rounds_done;
  last_round_seconds = std::chrono::duration<double>(Clock::now() - started_at).count();
  std::string who;
  for (const Assignment& a : o.accepted) who += (who.empty() ? "" : ",") + name_of(a.node);
  emit(NetEvent::Kind::step_done, step, "",
       "step " + std::to_string(step) + "/" + std::to_string(t.steps) + ": " + std::to_string(o.accepted.size()) + " of " +
           std::to_string(o.accepted.size() + o.missed.size()) + " payloads (" + who + "), update " +
           std::to_string(um.wire.size()) + " B, hash " + hex16(h) + ", " + std::to_string(last_round_seconds).substr(0, 6) + " s");
  update_status();
  if (step >= t.steps) return complete_run();
  if (finishing) return finish_now();
  maybe_start_round();
}

void Coordinator::Impl::complete_run() {
  if (complete) return;
  complete = true;
  if (last_durable != step) {
    try {
      write_checkpoint();
      commit_ledger();
    } catch (const Error& e) {
      emit(NetEvent::Kind::error, step, "", std::string("final checkpoint not saved: ") + e.what());
    }
  }
  for (auto& [c, s] : sessions)
    if (!s->closing && !s->name.empty()) c->send(uint8_t(Kind::notice), encode(Notice{NoticeCode::run_complete, step}));
  emit(NetEvent::Kind::info, step, "", "run complete at step " + std::to_string(step) + ", hash " + hex16(hashes.at(step)));
  begin_stop("the run is complete");
}

void Coordinator::Impl::finish_now() {
  if (last_durable != step) {
    try {
      write_checkpoint();
      commit_ledger();
    } catch (const Error& e) {
      emit(NetEvent::Kind::error, step, "", std::string("checkpoint not saved: ") + e.what());
    }
  }
  begin_stop("finished at step " + std::to_string(step));
}

}  // namespace distro::net

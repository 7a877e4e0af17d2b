// The node's worker thread: it owns the replica, builds it from the run's settings, trains the
// batches it is given, applies the updates in step order, loads checkpoints (verified twice: SHA-256
// of the bytes, then the parameter hash), and writes the local contribution history.
#include <asio/post.hpp>

#include <algorithm>

#include "core/error.hpp"
#include "net/format.hpp"
#include "net/limits.hpp"
#include "net/node_impl.hpp"
#include "net/round_state.hpp"
#include "net/run_checkpoint.hpp"

namespace distro::net {

namespace {


int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool same_run(const Welcome& a, const Welcome& b) {
  const RunInfo &x = a.run, &y = b.run;
  return a.run_id == b.run_id && a.manifest_hash == b.manifest_hash && a.node_id == b.node_id && x.preset == y.preset &&
         x.vocab == y.vocab && x.batch == y.batch && x.micro_batch == y.micro_batch && x.seq == y.seq && x.clip == y.clip &&
         x.chunk == y.chunk && x.topk == y.topk && x.decay == y.decay && x.values == y.values && x.seed == y.seed && x.overlap == y.overlap;
}

}  // namespace

void Node::Impl::post_work(std::function<void()> fn, bool bound) {
  {
    std::lock_guard<std::mutex> g(q_mu);
    tasks.push_back({bound, epoch, std::move(fn)});
  }
  q_cv.notify_one();
}

void Node::Impl::worker_loop() {
  for (;;) {
    Task t;
    {
      std::unique_lock<std::mutex> lk(q_mu);
      q_cv.wait(lk, [&] { return worker_quit || !tasks.empty(); });
      if (tasks.empty()) {  // quitting, and nothing left to apply
        worker_done = true;
        return;
      }
      t = std::move(tasks.front());
      tasks.pop_front();
      // Once quitting, only the run's updates and checkpoints are still applied (the final hash).
      if (t.bound && (worker_quit || t.epoch != live_epoch.load())) continue;
    }
    try {
      t.fn();
    } catch (const std::exception& e) {
      w_fail_link(e.what());
    }
  }
}

void Node::Impl::w_fail_link(const std::string& reason) {
  const uint64_t ep = live_epoch.load();
  asio::post(io, [this, ep, reason] {
    if (ep == epoch) drop_link(reason);
  });
}

void Node::Impl::w_prepare(const Welcome& w) {
  if (!replica || !same_run(built_for, w)) {
    TrainConfig c = peer_config(w.run, opt.device, opt.threads, "(batches come from the coordinator)");
    try {
      LlamaConfig lc = llama_preset(c.preset, c.vocab);
      if (c.seq > lc.max_seq)
        fail(Code::mismatch, "the run's sequence length " + std::to_string(c.seq) + " exceeds the " + c.preset +
                                 " model's maximum of " + std::to_string(lc.max_seq));
      replica.reset();
      replica = std::make_unique<Replica>(c, lc, w.node_id, w.run_id, opt.device);
      if (replica->optimizer().manifest().hash != w.manifest_hash)
        fail(Code::mismatch, "this node builds a model whose manifest hash is " + hex16(replica->optimizer().manifest().hash) +
                                 "; the run's is " + hex16(w.manifest_hash) + " (is the coordinator another libdistro version?)");
      if (!opt.history.empty() && !ledger) ledger = std::make_unique<Ledger>(opt.history);
    } catch (const std::exception& e) {
      replica.reset();
      std::string why = std::string("cannot take part in this run: ") + e.what();
      asio::post(io, [this, why] { begin_stop("failed", why); });
      return;
    }
    built_for = w;
    held.reset();
    last_trained = 0;
    replica_step = 0;
    replica_hash = replica->hash();
    trained.clear();
    block_sizes.clear();
    for (const auto& t : replica->model().tensors()) block_sizes.push_back(t.numel);
    const Manifest m = replica->optimizer().manifest();
    const uint64_t params = replica->model().num_params();
    const RunInfo run = w.run;
    asio::post(io, [this, m, run, params] {
      // The exact bounds of this run, for every later connection (the current one keeps the
      // protocol-wide caps it was opened with; the decoders check the exact sizes either way).
      limits = node_frame_limits(run, m);
      update_wire_max = max_update_bytes(m, run.nodes_per_round);
      max_ckpt_bytes = max_checkpoint_bytes(params);
    });
  }
  run_steps = w.run.total_steps;
  // A held update is the run's (the coordinator made it durable before sending it): apply it, so
  // the sync reports everything this node has.
  w_release();
  const uint64_t ep = live_epoch.load(), s = replica_step, h = replica_hash;
  asio::post(io, [this, ep, s, h] {
    applied_step = s;
    if (ep == epoch && conn) send(Kind::sync, encode(Sync{s, h}));
  });
}

void Node::Impl::w_train(const RoundStart& m, uint64_t frame_bytes, uint64_t gen) {
  if (gen != sync_gen.load() || !replica) return;
  const uint64_t ep = live_epoch.load();
  if (built_for.run.overlap) {
    // Train on the round's base: apply a held update the base includes, never one it does not.
    if (held && held->step <= m.base_step) w_release();
    if (replica_step != m.base_step) {
      std::string why = "round start for step " + std::to_string(m.step) + " trains on step " + std::to_string(m.base_step) +
                        " but this replica is at step " + std::to_string(replica_step) + "; batch skipped";
      asio::post(io, [this, why, s = m.step] { emit(NetEvent::Kind::error, s, why); });
      return;
    }
  } else if (m.step != replica_step + 1) {
    std::string why = "round start for step " + std::to_string(m.step) + " but this replica is at step " +
                      std::to_string(replica_step) + "; batch skipped";
    asio::post(io, [this, why, s = m.step] { emit(NetEvent::Kind::error, s, why); });
    return;
  }
  auto t0 = std::chrono::steady_clock::now();
  GradStats g = replica->train_batch(m.tokens.data(), m.targets.data());
  PayloadMsg p;
  p.step = m.step;
  p.base_hash = replica_hash;
  p.slot = m.slot;
  p.batch_id = m.batch_id;
  p.wire = replica->compress(m.step, m.lr);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<std::vector<uint8_t>> bodies;
  std::string trick;
  if (!opt.misbehave.empty() && opt.misbehave != "drift" && !misbehaved) {
    // Test switch (docs/network.md): one bad payload, then this node behaves again.
    misbehaved = true;
    trick = opt.misbehave;
    if (trick == "replay") {
      bodies = {encode(p), encode(p)};
    } else if (trick == "wrong-step") {
      PayloadMsg q = p;
      q.step = m.step + 1;
      bodies = {encode(q)};
    } else if (trick == "garbage") {
      PayloadMsg q = p;
      for (size_t i = 40; i < q.wire.size(); i += 7) q.wire[i] ^= 0x5A;
      bodies = {encode(q)};
    } else if (trick == "late") {
      // Past the round's deadline: the coordinator closes the round without this batch.
      std::this_thread::sleep_for(std::chrono::milliseconds(m.deadline_ms) + std::chrono::milliseconds(500));
      bodies = {encode(p)};
    } else if (trick == "oversized") {
      uint32_t cap = coordinator_frame_limits(replica->optimizer().manifest()).max_body[uint8_t(Kind::payload)];
      bodies = {std::vector<uint8_t>(size_t(cap) + 1, 0xAB)};
    }
  }
  if (bodies.empty()) bodies = {encode(p)};
  trained[m.step] = {bodies[0].size() + kFrameHeaderBytes, frame_bytes, uint64_t(m.batch) * m.seq};
  {
    std::lock_guard<std::mutex> lk(status_mu);
    ++st.rounds_trained;
    st.last_loss = g.loss;
    st.last_train_seconds = secs;
  }
  const size_t wire_bytes = p.wire.size();
  asio::post(io, [this, ep, gen, bodies = std::move(bodies), m_step = m.step, batch = m.batch_id, g, secs, wire_bytes, trick] {
    if (ep != epoch || !conn || gen != sync_gen.load()) return;
    for (const auto& b : bodies) conn->send(uint8_t(Kind::payload), b);
    char line[200];
    std::snprintf(line, sizeof line, "step %llu: trained batch %llu, loss %.4f, grad norm %.3f, payload %zu B, %.2f s",
                  (unsigned long long)m_step, (unsigned long long)batch, g.loss, g.grad_norm, wire_bytes, secs);
    emit(NetEvent::Kind::info, m_step, line);
    if (!trick.empty()) emit(NetEvent::Kind::info, m_step, "misbehaving on purpose (test switch): " + trick);
  });
  last_trained = std::max(last_trained, m.step);
  // Overlap: the payload is out, so the previous round's update may land now.
  if (built_for.run.overlap) w_release();
}

void Node::Impl::w_release() {
  if (!held || !replica) return;
  UpdateMsg m = std::move(*held);
  held.reset();
  w_apply_now(m, held_bytes);
}

void Node::Impl::w_apply(const UpdateMsg& m, uint64_t frame_bytes) {
  if (!replica) return;
  if (!built_for.run.overlap) return w_apply_now(m, frame_bytes);
  if (m.step <= replica_step || (held && m.step <= held->step)) return;  // already here (a catch-up overlapping)
  w_release();  // an older held update lands first
  // Held back unless this node already trained the round after it, the run ends with it, or the
  // node is leaving.
  if (!hold_update(m.step, last_trained, run_steps, release_held.load())) return w_apply_now(m, frame_bytes);
  if (m.step != replica_step + 1)
    return w_fail_link("update for step " + std::to_string(m.step) + " but this replica is at step " + std::to_string(replica_step));
  held = m;
  held_bytes = frame_bytes;
}

void Node::Impl::w_apply_now(const UpdateMsg& m, uint64_t frame_bytes) {
  if (!replica) return;
  if (m.step <= replica_step) return;  // already applied (a catch-up overlapping a checkpoint)
  if (m.step != replica_step + 1)
    return w_fail_link("update for step " + std::to_string(m.step) + " but this replica is at step " + std::to_string(replica_step));
  replica->apply(m.wire);  // decodes and checks it first; a bad update changes nothing
  replica_step = m.step;
  replica_hash = replica->hash();
  if (opt.misbehave == "drift" && !misbehaved && replica_step >= 3) {
    // Test switch: disagree with the run once, to be told and resync.
    misbehaved = true;
    std::vector<float> p0 = replica->params(0);
    p0[0] += 0.5f;
    replica->set_params(0, p0);
    replica_hash = replica->hash();
  }
  const bool mine = std::binary_search(m.contributors.begin(), m.contributors.end(), built_for.node_id);
  {
    std::lock_guard<std::mutex> lk(status_mu);
    st.step = replica_step;
    st.param_hash = replica_hash;
    if (mine && trained.count(m.step)) ++st.rounds_accepted;
  }
  if (ledger && trained.count(m.step)) {
    const Trained& t = trained[m.step];
    Contribution c;
    c.node = built_for.node_name;
    c.step = m.step;
    c.bytes_up = t.up;
    c.bytes_down = t.down + frame_bytes;
    c.tokens = mine ? t.tokens : 0;
    c.accepted = mine;
    c.reason = mine ? "" : "not merged (late, or dropped by the coordinator)";
    c.unix_ms = unix_ms();
    try {
      ledger->commit_round({m.step, uint32_t(m.contributors.size()), m.wire.size(), replica_hash, c.unix_ms}, {c});
    } catch (const std::exception& e) {
      std::string why = std::string("history not recorded for step ") + std::to_string(m.step) + ": " + e.what();
      asio::post(io, [this, why, s = m.step] { emit(NetEvent::Kind::error, s, why); });
    }
  }
  trained.erase(trained.begin(), trained.upper_bound(m.step));
  const uint64_t s = replica_step, h = replica_hash;
  const size_t n = m.contributors.size(), u = m.wire.size();
  asio::post(io, [this, s, h, n, u, mine] {
    applied_step = s;
    if (conn && (link == Link::in_sync || link == Link::syncing)) send(Kind::hash_report, encode(HashReport{s, h}));
    emit(NetEvent::Kind::step_done, s,
         "step " + std::to_string(s) + ": applied the update of " + std::to_string(n) + " payloads (" + std::to_string(u) +
             " B" + (mine ? ", ours included" : "") + "), hash " + hex16(h));
    maybe_leave();
    update_status();
  });
}

void Node::Impl::w_load_checkpoint(std::vector<uint8_t> bytes, CheckpointInfo info) {
  if (!replica) return;
  RunCheckpoint c = decode_run_checkpoint(bytes, block_sizes, "the checkpoint from the coordinator");
  if (c.step != info.step || c.run_id != built_for.run_id || c.manifest_hash != built_for.manifest_hash)
    return w_fail_link("the checkpoint is of step " + std::to_string(c.step) + " of run " + std::to_string(c.run_id) +
                       "; expected step " + std::to_string(info.step) + " of run " + std::to_string(built_for.run_id));
  std::vector<std::vector<float>> before;
  for (size_t t = 0; t < c.blocks.size(); ++t) {
    before.push_back(replica->params(t));
    replica->set_params(t, c.blocks[t]);
  }
  const uint64_t h = replica->hash();
  if (h != info.param_hash || h != c.param_hash) {
    for (size_t t = 0; t < before.size(); ++t) replica->set_params(t, before[t]);  // keep what we had
    return w_fail_link("the checkpoint's parameters hash to " + hex16(h) + "; the coordinator announced " + hex16(info.param_hash));
  }
  replica_step = c.step;
  replica_hash = h;
  held.reset();  // the coordinator sends whatever follows the checkpoint after the next sync
  {
    std::lock_guard<std::mutex> lk(status_mu);
    st.step = replica_step;
    st.param_hash = h;
  }
  const uint64_t ep = live_epoch.load(), s = replica_step;
  const std::string sha = hex(info.sha256);
  asio::post(io, [this, ep, s, h, sha] {
    applied_step = s;
    emit(NetEvent::Kind::info, s, "checkpoint of step " + std::to_string(s) + " verified (sha256 " + sha.substr(0, 16) +
                                      "..., parameter hash " + hex16(h) + ")");
    if (ep == epoch && conn && link == Link::syncing) send(Kind::sync, encode(Sync{s, h}));
  });
}

}  // namespace distro::net

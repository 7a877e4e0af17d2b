// The coordinator's side of the protocol, one connection at a time (docs/network.md, "messages"):
// hello and token check, sync (catch-up or checkpoint), checkpoint transfer, payload checks, hash
// reports, notices. Anything malformed, out of place or out of order closes that connection only,
// with the reason in an error event and in an error message to the node.
#include <openssl/crypto.h>

#include <algorithm>

#include "core/error.hpp"
#include "net/format.hpp"
#include "net/coordinator_impl.hpp"
#include "wire/codec.hpp"

namespace distro::net {

std::string Coordinator::Impl::name_of(uint32_t id) const {
  for (const auto& [name, i] : node_ids)
    if (i == id) return name;
  return "#" + std::to_string(id);
}

void Coordinator::Impl::send(Session& s, Kind kind, std::vector<uint8_t> body) {
  if (!s.closing) s.conn->send(uint8_t(kind), std::move(body));
}

void Coordinator::Impl::on_accept(std::shared_ptr<Connection> conn) {
  if (stopping) {
    conn->abort("coordinator stopping");
    return;
  }
  auto s = std::make_shared<Session>();
  s->conn = conn;
  s->opened = s->last_rx = Clock::now();
  Connection* key = conn.get();
  sessions[key] = s;
  conn->set_rates(down_limit, up_limit);
  Connection::Handlers h;
  h.on_frame = [this, key](Frame&& f) {
    auto it = sessions.find(key);
    if (it == sessions.end()) return;
    std::shared_ptr<Session> keep = it->second;  // the handler may close and erase it
    on_frame(*keep, std::move(f));
  };
  h.on_close = [this, key](const std::string& reason) { on_closed(key, reason); };
  conn->start(std::move(h));
  if (sessions.size() > cfg.max_nodes) {
    ErrorMsg e{ErrorCode::busy, "the coordinator serves " + std::to_string(cfg.max_nodes) + " connections at most"};
    conn->send(uint8_t(Kind::error), encode(e));
    s->closing = true;
    conn->close(e.reason);
  }
}

void Coordinator::Impl::on_closed(Connection* c, const std::string& reason) {
  auto it = sessions.find(c);
  if (it == sessions.end()) return;
  std::shared_ptr<Session> s = it->second;
  draining.push_back(s->conn);
  auto x = c->stats();
  closed_bytes_up += x.bytes_received;
  closed_bytes_down += x.bytes_sent;
  sessions.erase(it);
  if (s->xfer_timer) s->xfer_timer->cancel();
  if (s->id != 0) {
    auto b = by_node.find(s->id);
    if (b != by_node.end() && b->second == s.get()) {
      by_node.erase(b);
      if (round.owes(s->id) && !round_reasons.count(s->id)) round_reasons[s->id] = "left during the round: " + reason;
      round.drop(s->id, false);
      if (!stopping)
        emit(NetEvent::Kind::left, step, s->name, s->label() + " left: " + reason);
    }
  } else if (!stopping && !s->closing) {
    emit(NetEvent::Kind::info, step, "", s->label() + " closed before joining: " + reason);
  }
  update_status();
  if (stopping) return;
  if (round.open() && round.complete()) close_round();
}

void Coordinator::Impl::violation(Session& s, const std::string& reason, ErrorCode code) {
  if (s.closing) return;
  emit(NetEvent::Kind::error, step, s.name, reason + " (connection closed)");
  if (s.id != 0 && by_node.count(s.id) && by_node[s.id] == &s) {
    if (round.owes(s.id) || round.open()) round_reasons[s.id] = "cut off: " + reason;
    round.drop(s.id, true);
  }
  s.conn->send(uint8_t(Kind::error), encode(ErrorMsg{code, reason}));
  s.closing = true;
  s.conn->close(reason);
  if (round.open() && round.complete()) close_round();
}

void Coordinator::Impl::on_frame(Session& s, Frame&& f) {
  if (s.closing || stopping) return;
  s.last_rx = Clock::now();
  const Kind k = Kind(f.kind);
  try {
    if (s.state == Session::State::hello && k != Kind::hello && k != Kind::error)
      return violation(s, s.label() + ": " + kind_name(f.kind) + " before hello");
    switch (k) {
      case Kind::hello:
        if (s.state != Session::State::hello) return violation(s, s.label() + ": a second hello");
        return on_hello(s, f);
      case Kind::sync:
        if (s.state == Session::State::in_sync) return violation(s, s.label() + ": sync while already in sync");
        return on_sync(s, decode_sync(f.body));
      case Kind::checkpoint_request:
        decode_checkpoint_request(f.body);
        if (s.state == Session::State::in_sync) return violation(s, s.label() + ": checkpoint request while in sync");
        return on_checkpoint_request(s);
      case Kind::payload:
        if (s.state == Session::State::syncing) {
          // Trained before our resync reached it: nothing to blame, nothing to merge.
          decode_payload_msg(f.body, payload_wire_max);
          return emit(NetEvent::Kind::info, step, s.name, s.label() + ": payload ignored while it resyncs");
        }
        if (s.state != Session::State::in_sync) return violation(s, s.label() + ": payload before it was in sync");
        return on_payload(s, f);
      case Kind::hash_report: {
        HashReport m = decode_hash_report(f.body);
        if (s.state != Session::State::in_sync) return;  // a report racing a resync: nothing to check
        return on_hash_report(s, m);
      }
      case Kind::notice:
        return on_notice(s, decode_notice(f.body));
      case Kind::error: {
        ErrorMsg m = decode_error(f.body);
        emit(NetEvent::Kind::info, step, s.name, s.label() + " says: " + m.reason);
        return;
      }
      case Kind::ping:
        return send(s, Kind::pong, encode(decode_ping(f.body)));
      case Kind::pong:
        decode_ping(f.body);
        return;
      default:
        return violation(s, s.label() + ": message kind " + std::to_string(f.kind) + " is not one a node sends");
    }
  } catch (const Error& e) {
    if (e.code() == Code::mismatch && k == Kind::hello) return violation(s, s.label() + ": " + e.what(), ErrorCode::version);
    violation(s, s.label() + ": " + e.what());
  }
}

void Coordinator::Impl::on_hello(Session& s, const Frame& f) {
  Hello h = decode_hello(f.body);
  // Compare against every token in constant time per token, so timing tells nothing about a prefix.
  std::string name;
  for (const auto& [n, tok] : tokens)
    if (tok.size() == h.token.size() && CRYPTO_memcmp(tok.data(), h.token.data(), tok.size()) == 0) name = n;
  if (name.empty()) return violation(s, s.label() + ": unknown or revoked token (rejected)", ErrorCode::auth);
  if (auto it = node_ids.find(name); it == node_ids.end()) node_ids[name] = next_node_id++;
  const uint32_t id = node_ids[name];
  if (auto b = by_node.find(id); b != by_node.end()) {
    // A node that reconnects before its old connection noticed the break: the new one wins.
    Session* old = b->second;
    by_node.erase(b);
    if (round.owes(id)) round_reasons[id] = "replaced by a new connection";
    round.drop(id, false);
    old->closing = true;
    old->conn->send(uint8_t(Kind::error), encode(ErrorMsg{ErrorCode::busy, "replaced by a new connection of node " + name}));
    old->conn->close("replaced by a new connection of the same node");
    emit(NetEvent::Kind::info, step, name, "node " + name + " reconnected; its old connection is closed");
  }
  s.name = name;
  s.token = h.token;
  s.id = id;
  s.state = Session::State::welcomed;
  by_node[id] = &s;
  const TrainConfig& t = cfg.train;
  Welcome w;
  w.node_id = id;
  w.node_name = name;
  w.run_id = run_id;
  w.manifest_hash = manifest.hash;
  w.step = step;
  w.param_hash = hashes.at(step);
  w.deadline_ms = uint32_t(std::min(cfg.round_deadline_s * 1000.0, 4.0e9));
  w.run.preset = t.preset;
  w.run.vocab = uint32_t(model_cfg.vocab);
  w.run.batch = uint32_t(t.batch);
  w.run.micro_batch = uint32_t(t.micro_batch);
  w.run.seq = uint32_t(t.seq);
  w.run.clip = t.clip;
  w.run.chunk = t.chunk;
  w.run.topk = t.topk;
  w.run.decay = t.decay;
  w.run.values = t.values;
  w.run.seed = t.seed;
  w.run.total_steps = t.steps;
  w.run.nodes_per_round = cfg.nodes_per_round;
  w.run.overlap = t.overlap;
  send(s, Kind::welcome, encode(w));
  emit(NetEvent::Kind::info, step, name, "node " + name + " (id " + std::to_string(id) + ", " + s.conn->peer() +
                                             (h.agent.empty() ? "" : ", " + h.agent) + ") authenticated");
  update_status();
}

void Coordinator::Impl::send_resync(Session& s, const std::string& reason) {
  s.state = Session::State::syncing;
  round.drop(s.id, true);
  send(s, Kind::resync, encode(Resync{step, hashes.at(step), reason}));
  emit(NetEvent::Kind::info, step, s.name, s.label() + ": resync from the checkpoint: " + reason);
}

void Coordinator::Impl::set_in_sync(Session& s) {
  s.state = Session::State::in_sync;
  emit(NetEvent::Kind::joined, step, s.name, s.label() + " is in sync at step " + std::to_string(step));
  update_status();
  maybe_start_round();
}

void Coordinator::Impl::on_sync(Session& s, const Sync& m) {
  if (m.step > step)
    return send_resync(s, "your replica is at step " + std::to_string(m.step) + ", ahead of the run at step " +
                              std::to_string(step) + " (the coordinator resumed from an older checkpoint)");
  auto h = hashes.find(m.step);
  if (h == hashes.end())
    return send_resync(s, "step " + std::to_string(m.step) + " is older than the " + std::to_string(cfg.update_history) +
                              " steps of updates this coordinator keeps");
  if (h->second != m.hash)
    return send_resync(s, "your parameters at step " + std::to_string(m.step) + " hash to " + hex16(m.hash) +
                              "; the run's hash there is " + hex16(h->second));
  for (uint64_t x = m.step + 1; x <= step; ++x) s.conn->send(uint8_t(Kind::update), *updates.at(x));
  send(s, Kind::notice, encode(Notice{NoticeCode::in_sync, step}));
  set_in_sync(s);
}

void Coordinator::Impl::on_checkpoint_request(Session& s) {
  if (s.xfer) return violation(s, s.label() + ": a second checkpoint request while one is being sent");
  build_public_checkpoint();
  s.state = Session::State::syncing;
  s.xfer = public_ckpt;
  s.xfer_step = public_ckpt_step;
  s.xfer_next = 0;
  const uint64_t total = s.xfer->size();
  s.xfer_chunks = uint32_t((total + kCheckpointChunkBytes - 1) / kCheckpointChunkBytes);
  CheckpointInfo info{public_ckpt_step, hashes.at(public_ckpt_step), total, kCheckpointChunkBytes, s.xfer_chunks, public_ckpt_sha};
  send(s, Kind::checkpoint_info, encode(info));
  emit(NetEvent::Kind::info, step, s.name,
       s.label() + ": sending the checkpoint of step " + std::to_string(s.xfer_step) + " (" + std::to_string(total) + " B)");
  auto it = sessions.find(s.conn.get());
  if (it != sessions.end()) pump_transfer(it->second);
}

void Coordinator::Impl::pump_transfer(const std::shared_ptr<Session>& s) {
  // A few pieces at a time, so a large checkpoint is never copied whole into the send queue.
  if (s->closing || !s->xfer) return;
  constexpr size_t kWindow = 4u << 20;
  while (s->xfer_next < s->xfer_chunks && s->conn->queued_bytes() < kWindow) {
    const uint64_t begin = uint64_t(s->xfer_next) * kCheckpointChunkBytes;
    const uint64_t n = std::min<uint64_t>(kCheckpointChunkBytes, s->xfer->size() - begin);
    CheckpointChunk c;
    c.step = s->xfer_step;
    c.index = s->xfer_next++;
    c.data.assign(s->xfer->begin() + begin, s->xfer->begin() + begin + n);
    s->conn->send(uint8_t(Kind::checkpoint_chunk), encode(c));
  }
  if (s->xfer_next >= s->xfer_chunks) {
    s->xfer.reset();
    return;
  }
  if (!s->xfer_timer) s->xfer_timer = std::make_unique<asio::steady_timer>(io);
  s->xfer_timer->expires_after(std::chrono::milliseconds(5));
  std::weak_ptr<Session> w = s;
  s->xfer_timer->async_wait([this, w](const asio::error_code& ec) {
    if (auto p = w.lock(); p && !ec) pump_transfer(p);
  });
}

void Coordinator::Impl::on_payload(Session& s, const Frame& f) {
  PayloadMsg m = decode_payload_msg(f.body, payload_wire_max);
  PayloadCheck c = round.check(s.id, s.label(), m.step, m.slot, m.batch_id);
  if (c.verdict == Verdict::violation) return violation(s, c.reason);
  if (c.verdict == Verdict::late) return emit(NetEvent::Kind::info, step, s.name, c.reason);
  // The round's base is the coordinator's step when it started: step itself, or step - 1 for an
  // overlapped round that went out before the previous one was merged.
  const uint64_t base = hashes.at(round_base);
  if (m.base_hash != base) {
    // Trained on parameters that are not the run's: the payload would steer the update wrongly.
    round_reasons[s.id] = "trained on parameters that disagree with the run";
    return send_resync(s, "your payload for step " + std::to_string(m.step) + " was trained on parameters with hash " +
                              hex16(m.base_hash) + "; the run's at step " + std::to_string(round_base) + " is " + hex16(base));
  }
  PeerPayload p;
  try {
    p = decode_payload(manifest, m.wire);
  } catch (const Error& e) {
    return violation(s, s.label() + ": payload for step " + std::to_string(m.step) + " does not decode: " + e.what());
  }
  if (p.run_id != run_id || p.step != m.step || p.peer_id != s.id)
    return violation(s, s.label() + ": the wire payload says run " + std::to_string(p.run_id) + ", step " +
                            std::to_string(p.step) + ", peer " + std::to_string(p.peer_id) + "; expected run " +
                            std::to_string(run_id) + ", step " + std::to_string(m.step) + ", peer " + std::to_string(s.id));
  round.accept(s.id, std::move(p), f.body.size() + kFrameHeaderBytes);
  if (round.complete()) close_round();
}

void Coordinator::Impl::on_hash_report(Session& s, const HashReport& m) {
  auto h = hashes.find(m.step);
  if (m.step > step) return violation(s, s.label() + ": hash report for step " + std::to_string(m.step) + " but the run is at " + std::to_string(step));
  if (h == hashes.end()) return;  // too old to check
  if (h->second != m.hash)
    send_resync(s, "after step " + std::to_string(m.step) + " your parameters hash to " + hex16(m.hash) + "; the run's hash is " +
                       hex16(h->second));
}

void Coordinator::Impl::on_notice(Session& s, const Notice& m) {
  switch (m.code) {
    case NoticeCode::node_paused:
      s.paused = true;
      emit(NetEvent::Kind::info, step, s.name, s.label() + " paused");
      break;
    case NoticeCode::node_resumed:
      s.paused = false;
      emit(NetEvent::Kind::info, step, s.name, s.label() + " resumed");
      maybe_start_round();
      break;
    case NoticeCode::node_leaving:
      s.leaving = true;
      emit(NetEvent::Kind::info, step, s.name, s.label() + " is leaving after its current round");
      break;
    default:
      return violation(s, s.label() + ": notice '" + notice_name(m.code) + "' is not one a node sends");
  }
  update_status();
}

}  // namespace distro::net

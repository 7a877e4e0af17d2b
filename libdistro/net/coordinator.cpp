// The coordinator's life cycle, its durable state and its public calls. Rounds are in
// coordinator_rounds.cpp, the per-node protocol in coordinator_sessions.cpp.
#include "net/coordinator.hpp"

#include <asio/post.hpp>

#include "core/error.hpp"
#include "net/coordinator_impl.hpp"
#include "net/dial.hpp"
#include "net/limits.hpp"
#include "net/run_checkpoint.hpp"
#include "optim/hash_mix.hpp"

namespace distro::net {

namespace fs = std::filesystem;
using nlohmann::json;

const char* event_kind_name(NetEvent::Kind k) {
  switch (k) {
    case NetEvent::Kind::step_done: return "step";
    case NetEvent::Kind::joined: return "joined";
    case NetEvent::Kind::left: return "left";
    case NetEvent::Kind::error: return "error";
    case NetEvent::Kind::limit_hit: return "limit";
    case NetEvent::Kind::info: return "info";
  }
  return "event";
}

namespace {

std::string ckpt_path(const RunConfig& c) { return (fs::path(c.state_dir) / "checkpoint.bin").string(); }

json round_to_json(const PendingRound& p) {
  json cs = json::array();
  for (const Contribution& c : p.contributions)
    cs.push_back({{"node", c.node}, {"bytes_up", c.bytes_up}, {"bytes_down", c.bytes_down}, {"tokens", c.tokens},
                  {"accepted", c.accepted}, {"reason", c.reason}, {"unix_ms", c.unix_ms}});
  return {{"step", p.round.step},           {"contributors", p.round.contributors},
          {"update_bytes", p.round.update_bytes}, {"param_hash", p.round.param_hash},
          {"unix_ms", p.round.unix_ms},     {"contributions", cs}};
}

PendingRound round_from_json(const json& j) {
  PendingRound p;
  p.round.step = j.at("step").get<uint64_t>();
  p.round.contributors = j.at("contributors").get<uint32_t>();
  p.round.update_bytes = j.at("update_bytes").get<uint64_t>();
  p.round.param_hash = j.at("param_hash").get<uint64_t>();
  p.round.unix_ms = j.at("unix_ms").get<int64_t>();
  for (const json& c : j.at("contributions")) {
    Contribution x;
    x.node = c.at("node").get<std::string>();
    x.step = p.round.step;
    x.bytes_up = c.at("bytes_up").get<uint64_t>();
    x.bytes_down = c.at("bytes_down").get<uint64_t>();
    x.tokens = c.at("tokens").get<uint64_t>();
    x.accepted = c.at("accepted").get<bool>();
    x.reason = c.at("reason").get<std::string>();
    x.unix_ms = c.at("unix_ms").get<int64_t>();
    p.contributions.push_back(std::move(x));
  }
  return p;
}

}  // namespace

Coordinator::Impl::Impl(const RunConfig& c)
    : cfg(c), queue(c.nodes_per_round), deadline_timer(io), fill_timer(io), tick_timer(io), stop_timer(io) {
  validate(cfg);
  const TrainConfig& t = cfg.train;
  data = std::make_unique<Dataset>(load_dataset(t.data, t.val_fraction));
  model_cfg = llama_preset(t.preset, t.vocab > 0 ? t.vocab : int(data->vocab()));
  if (model_cfg.vocab < int(data->vocab()))
    fail(Code::invalid_argument, "vocab " + std::to_string(model_cfg.vocab) + " is smaller than the data's " +
                                     std::to_string(data->vocab()));
  if (t.seq > model_cfg.max_seq)
    fail(Code::invalid_argument, "sequence length " + std::to_string(t.seq) + " exceeds the " + t.preset +
                                     " model's maximum of " + std::to_string(model_cfg.max_seq));
  sampler = std::make_unique<Sampler>(*data, t.seed, t.seq);
  run_id = mix64(t.seed ^ 0xD15780ull);  // as train/trainer.cpp, so payloads match the in-process run's
  own = std::make_unique<Replica>(t, model_cfg, 0, run_id, "cpu");
  manifest = own->optimizer().manifest();
  for (const auto& x : own->model().tensors()) block_sizes.push_back(x.numel);
  payload_wire_max = max_payload_bytes(manifest);
  limits = coordinator_frame_limits(manifest);
  up_limit = cfg.node_up_limit;
  down_limit = cfg.node_down_limit;
  tokens = cfg.tokens;
  std::error_code ec;
  fs::create_directories(cfg.state_dir, ec);
  if (ec) fail(Code::io, "cannot create the state folder " + cfg.state_dir + ": " + ec.message());
  ledger = std::make_unique<Ledger>((fs::path(cfg.state_dir) / "ledger.sqlite").string());
  load_or_resume();
  identity = load_or_create_identity((fs::path(cfg.state_dir) / "tls" / "cert.pem").string(),
                                     (fs::path(cfg.state_dir) / "tls" / "key.pem").string(), "distro-coordinator");
  fp = certificate_fingerprint(identity.cert_pem);
  if (!cfg.path.empty()) config_mtime = fs::last_write_time(cfg.path, ec);
  update_status();
}

Coordinator::Impl::~Impl() = default;

json Coordinator::Impl::settings_json() const {
  const TrainConfig& t = cfg.train;
  // What fixes the arithmetic of the run; "steps" may change between restarts (as in distro train).
  json j = {{"preset", t.preset},  {"vocab", model_cfg.vocab},   {"seed", t.seed},   {"batch", t.batch},
          {"micro_batch", t.micro_batch}, {"seq", t.seq},      {"nodes_per_round", cfg.nodes_per_round},
          {"chunk", t.chunk},    {"topk", t.topk},             {"decay", t.decay}, {"clip", t.clip},
          {"values", t.values == ValueMode::sign ? "sign" : "int8"}, {"lr", t.lr}, {"warmup", t.warmup},
          {"min_lr_ratio", t.min_lr_ratio}, {"weight_decay", t.weight_decay}, {"data_tokens", data->size()},
          {"val_fraction", t.val_fraction}};
  // Only when on, so that checkpoints of runs made before the option still match.
  if (t.overlap) j["overlap"] = true;
  return j;
}

void Coordinator::Impl::load_or_resume() {
  hashes[0] = own->hash();
  const std::string path = ckpt_path(cfg);
  std::error_code ec;
  if (!fs::exists(path, ec)) return;
  auto bytes = read_file(path, max_checkpoint_bytes(own->model().num_params()));
  RunCheckpoint c = decode_run_checkpoint(bytes, block_sizes, "checkpoint " + path);
  if (c.run_id != run_id || c.manifest_hash != manifest.hash)
    fail(Code::mismatch, "checkpoint " + path + " belongs to another run (run id or model manifest differ); "
                         "use another state_dir or remove it to start afresh");
  try {
    json saved = c.meta.at("settings"), now = settings_json();
    for (auto it = now.begin(); it != now.end(); ++it)
      if (!saved.contains(it.key()) || saved.at(it.key()) != it.value())
        fail(Code::mismatch, "checkpoint " + path + " was made with " + it.key() + " = " +
                                 (saved.contains(it.key()) ? saved.at(it.key()).dump() : "(none)") + "; the configuration says " +
                                 it.value().dump() + "; a resumed run keeps its settings (only steps may change)");
    if (saved.value("overlap", false) != cfg.train.overlap)
      fail(Code::mismatch, "checkpoint " + path + " was made with overlap = " + (saved.value("overlap", false) ? "true" : "false") +
                               "; the configuration says " + (cfg.train.overlap ? "true" : "false") +
                               "; a resumed run keeps its settings (only steps may change)");
    if (c.step > cfg.train.steps)
      fail(Code::mismatch, "checkpoint " + path + " is at step " + std::to_string(c.step) + ", past the configured " +
                               std::to_string(cfg.train.steps) + " steps");
    for (size_t t = 0; t < c.blocks.size(); ++t) own->set_params(t, c.blocks[t]);
    uint64_t h = own->hash();
    if (h != c.param_hash)
      fail(Code::corrupt, "checkpoint " + path + ": its parameters hash to " + std::to_string(h) + ", not the recorded " +
                              std::to_string(c.param_hash));
    const json& q = c.meta.at("queue");
    queue = BatchQueue(cfg.nodes_per_round, q.at("next").get<uint64_t>(), q.at("owed").get<std::vector<uint64_t>>());
    node_ids = c.meta.at("nodes").get<std::map<std::string, uint32_t>>();
    next_node_id = c.meta.at("next_node_id").get<uint32_t>();
    for (const json& p : c.meta.at("ledger_pending")) ledger_pending.push_back(round_from_json(p));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(Code::corrupt, "checkpoint " + path + " has a malformed coordinator header: " + e.what());
  }
  step = c.step;
  last_durable = c.step;
  hashes.clear();
  hashes[step] = c.param_hash;
  commit_ledger();  // rows that a crash kept from the ledger
}

void Coordinator::Impl::write_checkpoint() {
  json meta = {{"kind", "coordinator"}, {"step", step},        {"param_hash", hashes.at(step)},
               {"run_id", run_id},      {"manifest_hash", manifest.hash}, {"settings", settings_json()},
               {"queue", {{"next", queue.next_fresh()}, {"owed", queue.owed()}}},
               {"nodes", node_ids},     {"next_node_id", next_node_id}};
  json pend = json::array();
  for (const auto& p : ledger_pending) pend.push_back(round_to_json(p));
  meta["ledger_pending"] = pend;
  std::vector<std::vector<float>> blocks;
  for (size_t t = 0; t < own->tensor_count(); ++t) blocks.push_back(own->params(t));
  auto bytes = encode_run_checkpoint(meta, blocks);
  write_file_atomic(ckpt_path(cfg), bytes);
  last_durable = step;
}

void Coordinator::Impl::commit_ledger() {
  // Checkpoint first, ledger second: the checkpoint holds these rows until the ledger has them, so
  // a crash in between is repaired at the next start.
  while (!ledger_pending.empty()) {
    const PendingRound& p = ledger_pending.front();
    // An identical round at last_round() is a no-op for the ledger (the crash came after its commit).
    if (p.round.step >= ledger->last_round()) ledger->commit_round(p.round, p.contributions);
    ledger_pending.erase(ledger_pending.begin());
  }
}

void Coordinator::Impl::build_public_checkpoint() {
  if (public_ckpt && public_ckpt_step == step) return;
  json meta = {{"kind", "public"}, {"step", step}, {"param_hash", hashes.at(step)}, {"run_id", run_id},
               {"manifest_hash", manifest.hash}};
  std::vector<std::vector<float>> blocks;
  for (size_t t = 0; t < own->tensor_count(); ++t) blocks.push_back(own->params(t));
  auto bytes = std::make_shared<std::vector<uint8_t>>(encode_run_checkpoint(meta, blocks));
  public_ckpt_sha = sha256_of(*bytes);
  public_ckpt = std::move(bytes);
  public_ckpt_step = step;
}

void Coordinator::Impl::emit(NetEvent::Kind kind, uint64_t s, const std::string& node, const std::string& message) {
  if (!on_event) return;
  try {
    on_event(NetEvent{kind, s, node, message});
  } catch (...) {
    // A host's handler must not take the coordinator down.
  }
}

std::string Coordinator::Impl::state_name() const {
  if (failed) return "failed";
  if (complete) return "complete";
  if (stopping) return "stopped";
  if (!started) return "created";
  if (finishing) return "finishing";
  if (paused) return "paused";
  if (round.open()) return "training";
  return "waiting";
}

void Coordinator::Impl::update_status() {
  CoordinatorStatus s;
  s.step = step;
  s.total_steps = cfg.train.steps;
  s.rounds_done = rounds_done;
  s.last_round_seconds = last_round_seconds;
  s.param_hash = hashes.count(step) ? hashes.at(step) : 0;
  s.bytes_up = closed_bytes_up;
  s.bytes_down = closed_bytes_down;
  for (const auto& [c, sess] : sessions) {
    auto x = c->stats();
    s.bytes_up += x.bytes_received;
    s.bytes_down += x.bytes_sent;
    if (!sess->name.empty()) ++s.nodes_connected;
    if (sess->state == Session::State::in_sync) ++s.nodes_in_sync;
  }
  s.state = state_name();
  std::lock_guard<std::mutex> g(status_mu);
  st = s;
}

void Coordinator::Impl::tick() {
  if (stopping) return;
  const auto now = Clock::now();
  std::vector<std::pair<Session*, std::string>> idle;
  for (auto& [c, s] : sessions) {
    if (s->closing) continue;
    if (s->state == Session::State::hello && now - s->opened > std::chrono::seconds(10))
      idle.push_back({s.get(), s->label() + ": no hello within 10 s"});
    else if (now - s->last_rx > std::chrono::seconds(30))
      idle.push_back({s.get(), s->label() + ": silent for 30 s"});
    // A cap that held traffic back this last second, reported at most every 10 s per node.
    double th = c->stats().seconds_throttled;
    if (th - s->throttled_seen > 0.05 && now - s->last_limit_event > std::chrono::seconds(10)) {
      emit(NetEvent::Kind::limit_hit, step, s->name,
           s->label() + ": rate cap held traffic back for " + std::to_string(th - s->throttled_seen).substr(0, 5) +
               " s (caps: node upload " + std::to_string(int64_t(up_limit)) + " B/s, download " +
               std::to_string(int64_t(down_limit)) + " B/s)");
      s->last_limit_event = now;
    }
    s->throttled_seen = th;
  }
  for (auto& [s, why] : idle) {
    emit(NetEvent::Kind::error, step, s->name, why);
    s->closing = true;
    s->conn->close(why);
  }
  prune_draining();
  if (!cfg.path.empty()) {
    std::error_code ec;
    auto m = fs::last_write_time(cfg.path, ec);
    if (!ec && m != config_mtime) {
      config_mtime = m;
      reload_tokens_now(true);
    }
  }
  update_status();
  tick_timer.expires_after(std::chrono::seconds(1));
  tick_timer.async_wait([this](const asio::error_code& ec) {
    if (!ec) tick();
  });
}

void Coordinator::Impl::reload_tokens_now(bool quiet_if_same) {
  if (cfg.path.empty()) {
    emit(NetEvent::Kind::error, step, "", "tokens cannot be reloaded: the configuration did not come from a file");
    return;
  }
  std::map<std::string, std::string> fresh;
  try {
    fresh = load_tokens(cfg.path);
  } catch (const Error& e) {
    emit(NetEvent::Kind::error, step, "", std::string("tokens not reloaded, the old ones stay: ") + e.what());
    return;
  }
  if (fresh == tokens && quiet_if_same) return;
  tokens = fresh;
  emit(NetEvent::Kind::info, step, "", "tokens reloaded from " + cfg.path + ": " + std::to_string(tokens.size()) + " nodes");
  for (auto& [c, s] : sessions) {
    if (s->name.empty() || s->closing) continue;
    auto it = tokens.find(s->name);
    if (it == tokens.end() || it->second != s->token) {
      ErrorMsg e{ErrorCode::auth, "your token was revoked"};
      s->conn->send(uint8_t(Kind::error), encode(e));
      violation(*s, s->label() + ": token revoked", ErrorCode::auth);
    }
  }
}

void Coordinator::Impl::begin_stop(const std::string& why) {
  if (stopping) return;
  stopping = true;
  emit(NetEvent::Kind::info, step, "", "coordinator stopping: " + why);
  if (listener) listener->close();
  deadline_timer.cancel();
  fill_timer.cancel();
  tick_timer.cancel();
  for (auto& [c, s] : sessions) {
    if (s->xfer_timer) s->xfer_timer->cancel();
    if (!s->closing) {
      if (!complete) s->conn->send(uint8_t(Kind::notice), encode(Notice{NoticeCode::shutting_down, step}));
      s->closing = true;
      s->conn->close("coordinator stopping: " + why);
    }
  }
  stop_began = Clock::now();
  update_status();
  poll_stopped();
}

void Coordinator::Impl::prune_draining() {
  // A connection whose asynchronous work is over is held by this list alone.
  std::erase_if(draining, [](const std::shared_ptr<Connection>& c) { return c.use_count() == 1; });
}

void Coordinator::Impl::poll_stopped() {
  // Closing connections send what they hold first (at most Connection::kLinger, then the TLS
  // close), so that nodes hear the last update and why we stop.
  prune_draining();
  if ((sessions.empty() && draining.empty()) || Clock::now() - stop_began > std::chrono::seconds(7)) {
    for (auto& [c, s] : sessions) c->abort("coordinator stopped");
    for (auto& c : draining) c->abort("coordinator stopped");
    draining.clear();
    work.reset();
    io.stop();
    return;
  }
  stop_timer.expires_after(std::chrono::milliseconds(20));
  stop_timer.async_wait([this](const asio::error_code&) { poll_stopped(); });
}

// ---- public calls ----

Coordinator::Coordinator(const RunConfig& config) : impl_(std::make_shared<Impl>(config)) {}

Coordinator::~Coordinator() {
  try {
    stop();
    wait();
  } catch (...) {
  }
}

void Coordinator::start() {
  Impl& I = *impl_;
  if (I.started.exchange(true)) fail(Code::state, "this coordinator was started already");
  try {
    auto [host, port] = parse_host_port(I.cfg.listen);
    I.tls = server_tls_context(I.identity);
    I.listener = std::make_unique<Listener>(
        I.io, host, port, I.tls, I.limits, [&I](std::shared_ptr<Connection> c) { I.on_accept(std::move(c)); },
        [&I](const std::string& why) { I.emit(NetEvent::Kind::error, I.step, "", "refused a connection: " + why); });
  } catch (...) {
    I.started = false;  // nothing runs yet: start() may be tried again (another port, say)
    throw;
  }
  I.bound_port = I.listener->port();
  I.idle_since = Clock::now();
  I.work.emplace(I.io.get_executor());
  asio::post(I.io, [&I] {
    I.emit(NetEvent::Kind::info, I.step, "",
           "coordinator listening on port " + std::to_string(I.bound_port) + ", certificate " + I.fp + ", at step " +
               std::to_string(I.step) + " of " + std::to_string(I.cfg.train.steps));
    I.tick();
    if (I.step >= I.cfg.train.steps) I.complete_run();
  });
  I.thread = std::thread([&I] {
    for (;;) {
      try {
        I.io.run();
        return;
      } catch (const std::exception& e) {
        // Handlers catch their own errors; this is the last line, so the host never sees a throw.
        I.failed = true;
        I.emit(NetEvent::Kind::error, I.step, "", std::string("coordinator failed: ") + e.what());
        I.begin_stop("internal error");
      }
    }
  });
}

uint16_t Coordinator::port() const { return impl_->bound_port; }
std::string Coordinator::fingerprint() const { return impl_->fp; }

void Coordinator::pause() {
  asio::post(impl_->io, [I = impl_.get()] {
    if (I->paused || I->stopping) return;
    I->paused = true;
    for (auto& [c, s] : I->sessions)
      if (!s->name.empty() && !s->closing) c->send(uint8_t(Kind::notice), encode(Notice{NoticeCode::run_paused, I->step}));
    I->emit(NetEvent::Kind::info, I->step, "", "paused: no new rounds until resumed");
    I->update_status();
  });
}

void Coordinator::resume() {
  asio::post(impl_->io, [I = impl_.get()] {
    if (!I->paused || I->stopping) return;
    I->paused = false;
    for (auto& [c, s] : I->sessions)
      if (!s->name.empty() && !s->closing) c->send(uint8_t(Kind::notice), encode(Notice{NoticeCode::run_resumed, I->step}));
    I->emit(NetEvent::Kind::info, I->step, "", "resumed");
    I->idle_since = Clock::now();
    I->maybe_start_round();
    I->update_status();
  });
}

void Coordinator::finish() {
  asio::post(impl_->io, [I = impl_.get()] {
    if (I->stopping || I->finishing) return;
    I->finishing = true;
    I->emit(NetEvent::Kind::info, I->step, "", "finishing: the run ends after the open round");
    if (!I->round.open()) I->finish_now();
    I->update_status();
  });
}

void Coordinator::stop() {
  if (!impl_->started) {
    impl_->stopping = true;
    impl_->update_status();
    return;
  }
  asio::post(impl_->io, [I = impl_.get()] { I->begin_stop("stopped by its host"); });
}

void Coordinator::wait() {
  std::lock_guard<std::mutex> g(impl_->wait_mu);
  if (impl_->thread.joinable()) impl_->thread.join();
}

void Coordinator::set_default_limits(double up_bps, double down_bps) {
  if (!(up_bps >= 0) || !(down_bps >= 0) || !std::isfinite(up_bps) || !std::isfinite(down_bps))
    fail(Code::invalid_argument, "rate limits must be finite and >= 0 bytes/s (0 = unlimited)");
  asio::post(impl_->io, [I = impl_.get(), up_bps, down_bps] {
    I->up_limit = up_bps;
    I->down_limit = down_bps;
    for (auto& [c, s] : I->sessions) c->set_rates(down_bps, up_bps);
    I->emit(NetEvent::Kind::info, I->step, "",
            "default node caps now: upload " + std::to_string(int64_t(up_bps)) + " B/s, download " +
                std::to_string(int64_t(down_bps)) + " B/s (0 = unlimited)");
  });
}

CoordinatorStatus Coordinator::status() const {
  std::lock_guard<std::mutex> g(impl_->status_mu);
  return impl_->st;
}

void Coordinator::set_event_handler(EventHandler handler) {
  if (impl_->started) fail(Code::state, "set the event handler before start()");
  impl_->on_event = std::move(handler);
}

void Coordinator::reload_tokens() {
  asio::post(impl_->io, [I = impl_.get()] { I->reload_tokens_now(false); });
}

}  // namespace distro::net

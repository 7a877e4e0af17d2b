// The node's connection side (io thread): dialing with backoff, the protocol with the coordinator,
// the checkpoint download, pause/resume/finish/stop. Training and applying run on the worker
// (node_worker.cpp).
#include "net/node.hpp"

#include <asio/post.hpp>

#include <cmath>

#include "core/error.hpp"
#include "net/dial.hpp"
#include "net/limits.hpp"
#include "net/node_impl.hpp"
#include "net/run_checkpoint.hpp"

namespace distro::net {

using Clock = std::chrono::steady_clock;

Node::Impl::Impl(const NodeOptions& o) : opt(o), retry_timer(io), ping_timer(io), stop_timer(io), rng(std::random_device{}()) {
  auto bad = [](const std::string& what) { fail(Code::invalid_argument, what); };
  std::tie(host, port) = parse_host_port(opt.coordinator);
  if (port == 0) bad("coordinator address " + opt.coordinator + " has port 0; expected the coordinator's port");
  if (opt.token.empty() || opt.token.size() > kMaxToken)
    bad("the token must be 1.." + std::to_string(kMaxToken) + " characters");
  for (unsigned char c : opt.token)
    if (c < 0x21 || c > 0x7e) bad("the token must be printable ASCII without spaces");
  if (opt.device.empty()) bad("no device given; expected e.g. cpu or cuda:0");
  if (!(opt.up_limit >= 0) || !(opt.down_limit >= 0) || !std::isfinite(opt.up_limit) || !std::isfinite(opt.down_limit))
    bad("rate limits must be finite and >= 0 bytes/s (0 = unlimited)");
  if (!(opt.retry_min_s > 0) || !(opt.retry_max_s >= opt.retry_min_s) || opt.retry_max_s > 86400)
    bad("reconnect delays must satisfy 0 < min <= max <= 86400 s");
  if (opt.threads > 4096) bad("threads must be 0..4096");
  const std::string modes = ",replay,wrong-step,oversized,garbage,drift,late,";
  if (!opt.misbehave.empty() && modes.find("," + opt.misbehave + ",") == std::string::npos)
    bad("--misbehave '" + opt.misbehave + "' is unknown; expected one of replay, wrong-step, oversized, garbage, drift, late");
  if (opt.agent.empty()) opt.agent = "distro node, device " + opt.device;
  tls = client_tls_context(opt.pin);  // checks the pin's form
  limits = node_frame_limits();
  st.state = "created";
}

void Node::Impl::emit(NetEvent::Kind k, uint64_t step, const std::string& msg) {
  if (!on_event) return;
  try {
    on_event(NetEvent{k, step, welcome.node_name, msg});
  } catch (...) {
  }
}

std::string Node::Impl::state_name() const {
  if (!end_state.empty()) return end_state;
  if (stopping) return "stopping";
  if (finishing) return "leaving";
  switch (link) {
    case Link::idle:
    case Link::connecting:
    case Link::hello: return "connecting";
    case Link::syncing: return "syncing";
    case Link::in_sync: return paused || run_paused ? "paused" : "training";
  }
  return "connecting";
}

void Node::Impl::update_status() {
  std::lock_guard<std::mutex> g(status_mu);
  st.state = state_name();
  st.node_name = welcome.node_name;
  st.node_id = welcome.node_id;
  st.total_steps = have_welcome ? welcome.run.total_steps : 0;
  st.bytes_up = closed_bytes_up;
  st.bytes_down = closed_bytes_down;
  if (conn) {
    auto x = conn->stats();
    st.bytes_up += x.bytes_sent;
    st.bytes_down += x.bytes_received;
  }
}

void Node::Impl::send(Kind k, std::vector<uint8_t> body) {
  if (conn) conn->send(uint8_t(k), std::move(body));
}

void Node::Impl::connect() {
  if (stopping) return;
  link = Link::connecting;
  update_status();
  dial(io, host, port, tls, limits, std::chrono::seconds(15),
       [this](const std::string& error, std::shared_ptr<Connection> c) { on_connected(error, std::move(c)); });
}

void Node::Impl::on_connected(const std::string& error, std::shared_ptr<Connection> c) {
  if (stopping) {
    if (c) c->abort("node stopping");
    return;
  }
  if (!error.empty() || !c) {
    // A certificate that is not the pinned one will not become it by retrying.
    if (error.find("does not match the pinned fingerprint") != std::string::npos)
      return begin_stop("failed", "refusing the coordinator: " + error);
    return schedule_reconnect(error.empty() ? "cannot connect" : error);
  }
  conn = std::move(c);
  const uint64_t ep = ++epoch;
  live_epoch = ep;
  conn->set_rates(opt.up_limit, opt.down_limit);
  {
    std::lock_guard<std::mutex> g(status_mu);
    st.coordinator_fingerprint = conn->peer_fingerprint();
  }
  Connection::Handlers h;
  h.on_frame = [this, ep](Frame&& f) { on_frame(ep, std::move(f)); };
  h.on_close = [this, ep](const std::string& reason) { on_close(ep, reason); };
  conn->start(std::move(h));
  throttled_seen = 0.0;
  emit(NetEvent::Kind::info, applied_step,
       "connected to " + opt.coordinator + ", certificate " + conn->peer_fingerprint() +
           (opt.pin.empty() ? " (not pinned; pass --pin " + conn->peer_fingerprint() + " to require it)" : " (pinned)"));
  link = Link::hello;
  last_rx = Clock::now();
  send(Kind::hello, encode(Hello{kProtocolVersion, opt.token, opt.agent}));
  update_status();
}

void Node::Impl::schedule_reconnect(const std::string& why) {
  if (stopping) return;
  link = Link::idle;
  // Exponential backoff with "equal jitter": half the delay fixed, half random, so that nodes cut
  // off together do not all come back in the same instant.
  double base = std::min(opt.retry_max_s, opt.retry_min_s * std::pow(2.0, double(std::min<uint32_t>(attempts, 30))));
  double delay = base / 2 + std::uniform_real_distribution<double>(0, base / 2)(rng);
  ++attempts;
  {
    std::lock_guard<std::mutex> g(status_mu);
    ++st.reconnects;
  }
  emit(NetEvent::Kind::info, applied_step, why + "; reconnecting in " + std::to_string(delay).substr(0, 5) + " s");
  retry_timer.expires_after(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(delay)));
  retry_timer.async_wait([this](const asio::error_code& ec) {
    if (!ec) connect();
  });
  update_status();
}

void Node::Impl::drop_link(const std::string& reason) {
  if (!conn) return;
  emit(NetEvent::Kind::error, applied_step, reason);
  conn->send(uint8_t(Kind::error), encode(ErrorMsg{ErrorCode::protocol, reason}));
  conn->close(reason);  // on_close follows and reconnects
}

void Node::Impl::on_close(uint64_t ep, const std::string& reason) {
  if (ep != epoch) return;
  if (conn) {
    auto x = conn->stats();
    closed_bytes_up += x.bytes_sent;
    closed_bytes_down += x.bytes_received;
  }
  draining = std::move(conn);
  live_epoch = ++epoch;  // frames and worker tasks of this connection are void now
  ckpt_active = false;
  ckpt_buf.clear();
  assigned_step = 0;
  if (stopping) return;
  if (run_done) return begin_stop("complete", "the run is complete");
  if (finishing) return begin_stop("left", "left the run");
  schedule_reconnect("connection closed: " + reason);
}

void Node::Impl::on_frame(uint64_t ep, Frame&& f) {
  if (ep != epoch || stopping || !conn) return;
  last_rx = Clock::now();
  const Kind k = Kind(f.kind);
  try {
    if (link == Link::hello && k != Kind::welcome && k != Kind::error && k != Kind::notice && k != Kind::ping && k != Kind::pong)
      return drop_link(std::string("coordinator sent ") + kind_name(f.kind) + " before its welcome");
    switch (k) {
      case Kind::welcome: {
        if (link != Link::hello) return drop_link("coordinator sent a second welcome");
        Welcome w = decode_welcome(f.body);
        if (have_welcome && (w.run_id != welcome.run_id || w.manifest_hash != welcome.manifest_hash))
          emit(NetEvent::Kind::info, w.step, "the coordinator now runs another run; rebuilding the replica");
        welcome = w;
        have_welcome = true;
        attempts = 0;
        link = Link::syncing;
        emit(NetEvent::Kind::joined, w.step,
             "joined as " + w.node_name + " (id " + std::to_string(w.node_id) + "): " + w.run.preset + " model, step " +
                 std::to_string(w.step) + " of " + std::to_string(w.run.total_steps));
        post_work([this, w] { w_prepare(w); }, true);
        break;
      }
      case Kind::round_start: {
        if (!have_welcome) return drop_link("round start before a welcome");
        RoundStart m = decode_round_start(f.body, welcome.run);
        if (link != Link::in_sync) return;  // a round that raced our resync; the coordinator drops it
        assigned_step = m.step;
        const uint64_t bytes = f.body.size() + kFrameHeaderBytes, gen = sync_gen.load();
        post_work([this, m = std::move(m), bytes, gen] { w_train(m, bytes, gen); }, true);
        break;
      }
      case Kind::update: {
        if (!have_welcome) return drop_link("update before a welcome");
        UpdateMsg m = decode_update_msg(f.body, update_wire_max, welcome.run.nodes_per_round);
        const uint64_t bytes = f.body.size() + kFrameHeaderBytes;
        post_work([this, m = std::move(m), bytes] { w_apply(m, bytes); }, false);
        break;
      }
      case Kind::resync: {
        Resync m = decode_resync(f.body);
        emit(NetEvent::Kind::info, m.step, "told to resync: " + m.reason);
        link = Link::syncing;
        ++sync_gen;
        ckpt_active = false;
        send(Kind::checkpoint_request, encode(CheckpointRequest{applied_step}));
        break;
      }
      case Kind::checkpoint_info: {
        if (max_ckpt_bytes == 0) return drop_link("checkpoint offered before this node knows the model");
        CheckpointInfo info = decode_checkpoint_info(f.body, max_ckpt_bytes);
        ckpt_info = info;
        ckpt_active = true;
        ckpt_next = 0;
        ckpt_buf.clear();
        ckpt_buf.reserve(info.total_bytes);
        emit(NetEvent::Kind::info, info.step,
             "downloading the checkpoint of step " + std::to_string(info.step) + " (" + std::to_string(info.total_bytes) + " B)");
        break;
      }
      case Kind::checkpoint_chunk: {
        if (!ckpt_active) return drop_link("checkpoint piece without a checkpoint transfer");
        CheckpointChunk c = decode_checkpoint_chunk(f.body, ckpt_info);
        if (c.index != ckpt_next)
          return drop_link("checkpoint piece " + std::to_string(c.index) + " arrived; expected piece " + std::to_string(ckpt_next));
        ckpt_buf.insert(ckpt_buf.end(), c.data.begin(), c.data.end());
        if (++ckpt_next == ckpt_info.chunks) {
          ckpt_active = false;
          if (sha256_of(ckpt_buf) != ckpt_info.sha256)
            return drop_link("the downloaded checkpoint's SHA-256 is " + hex(sha256_of(ckpt_buf)) + ", not the announced " +
                             hex(ckpt_info.sha256));
          post_work([this, b = std::move(ckpt_buf), info = ckpt_info]() mutable { w_load_checkpoint(std::move(b), info); }, false);
          ckpt_buf = {};
        }
        break;
      }
      case Kind::notice: {
        Notice n = decode_notice(f.body);
        switch (n.code) {
          case NoticeCode::run_complete:
            emit(NetEvent::Kind::info, n.step, "the run is complete at step " + std::to_string(n.step));
            run_done = true;
            final_step = n.step;
            finishing = true;
            release_held = true;
            post_work([this] { w_release(); }, false);
            maybe_leave();
            return;
          case NoticeCode::in_sync:
            link = Link::in_sync;
            emit(NetEvent::Kind::info, n.step, "in sync with the run at step " + std::to_string(n.step));
            if (paused) send(Kind::notice, encode(Notice{NoticeCode::node_paused, n.step}));
            if (finishing) send(Kind::notice, encode(Notice{NoticeCode::node_leaving, n.step}));
            break;
          case NoticeCode::shutting_down:
            emit(NetEvent::Kind::info, n.step, "the coordinator is shutting down; this node will reconnect");
            break;
          case NoticeCode::run_paused: run_paused = true; emit(NetEvent::Kind::info, n.step, "the run is paused"); break;
          case NoticeCode::run_resumed: run_paused = false; emit(NetEvent::Kind::info, n.step, "the run resumed"); break;
          default: return drop_link(std::string("coordinator sent the notice '") + notice_name(n.code) + "', which is a node's");
        }
        break;
      }
      case Kind::error: {
        ErrorMsg e = decode_error(f.body);
        if (is_fatal(e.code)) return begin_stop("failed", "the coordinator refused this node: " + e.reason);
        emit(NetEvent::Kind::error, applied_step, "the coordinator closes the connection: " + e.reason);
        break;
      }
      case Kind::ping: send(Kind::pong, encode(decode_ping(f.body))); break;
      case Kind::pong: decode_ping(f.body); break;
      default: return drop_link(std::string("coordinator sent a ") + kind_name(f.kind) + " message, which only nodes send");
    }
  } catch (const Error& e) {
    drop_link(std::string("bad message from the coordinator: ") + e.what());
  }
  update_status();
}

void Node::Impl::maybe_leave() {
  // Leave once the round we were given (if any), or the run's last step, has been applied. (If the
  // connection goes first, on_close ends it; the worker still applies what it holds.)
  if (!finishing || stopping) return;
  if (conn && assigned_step > applied_step) return;
  if (conn && run_done && final_step > applied_step && link == Link::in_sync) return;
  begin_stop(run_done ? "complete" : "left", run_done ? "the run is complete" : "left the run");
}

void Node::Impl::tick() {
  if (stopping) return;
  if (conn) {
    if (Clock::now() - last_rx > std::chrono::seconds(30)) {
      conn->close("the coordinator was silent for 30 s");
    } else {
      if (++ticks % 5 == 0) send(Kind::ping, encode(Ping{uint64_t(rng())}));
      // A cap that held traffic back, reported at most every 10 s.
      double th = conn->stats().seconds_throttled;
      if (th - throttled_seen > 0.05 && Clock::now() - last_limit_event > std::chrono::seconds(10)) {
        emit(NetEvent::Kind::limit_hit, applied_step,
             "rate cap held traffic back for " + std::to_string(th - throttled_seen).substr(0, 5) + " s (upload " +
                 std::to_string(int64_t(opt.up_limit)) + " B/s, download " + std::to_string(int64_t(opt.down_limit)) +
                 " B/s)");
        last_limit_event = Clock::now();
      }
      throttled_seen = th;
    }
  }
  update_status();
  ping_timer.expires_after(std::chrono::seconds(1));
  ping_timer.async_wait([this](const asio::error_code& ec) {
    if (!ec) tick();
  });
}

void Node::Impl::begin_stop(const std::string& end, const std::string& why) {
  if (stopping) return;
  stopping = true;
  end_state = end;
  if (end == "failed") {
    std::lock_guard<std::mutex> g(status_mu);
    st.error = why;
  }
  emit(end == "failed" ? NetEvent::Kind::error : NetEvent::Kind::left, applied_step, why);
  retry_timer.cancel();
  ping_timer.cancel();
  if (conn) conn->close(why);
  {
    std::lock_guard<std::mutex> g(q_mu);
    worker_quit = true;
  }
  q_cv.notify_all();
  stop_began = Clock::now();
  update_status();
  poll_stopped();
}

void Node::Impl::poll_stopped() {
  // Waits for the connection to close and for the worker to apply what it holds (so the last
  // step's event and hash are reported), at most 7 s.
  if (draining && draining.use_count() == 1) draining.reset();  // its asynchronous work is over
  if ((!conn && !draining && worker_done.load()) || Clock::now() - stop_began > std::chrono::seconds(7)) {
    if (conn) conn->abort("node stopped");
    if (draining) draining->abort("node stopped");
    draining.reset();
    work.reset();
    io.stop();
    return;
  }
  stop_timer.expires_after(std::chrono::milliseconds(20));
  stop_timer.async_wait([this](const asio::error_code&) { poll_stopped(); });
}

// ---- public calls ----

Node::Node(const NodeOptions& options) : impl_(std::make_shared<Impl>(options)) {}

Node::~Node() {
  try {
    stop();
    wait();
  } catch (...) {
  }
}

void Node::start() {
  Impl& I = *impl_;
  if (I.started.exchange(true)) fail(Code::state, "this node was started already");
  I.work.emplace(I.io.get_executor());
  I.worker = std::thread([&I] { I.worker_loop(); });
  asio::post(I.io, [&I] {
    I.connect();
    I.tick();
  });
  I.io_thread = std::thread([&I] {
    for (;;) {
      try {
        I.io.run();
        return;
      } catch (const std::exception& e) {
        I.begin_stop("failed", std::string("node failed: ") + e.what());
      }
    }
  });
}

void Node::pause() {
  asio::post(impl_->io, [I = impl_.get()] {
    if (I->paused || I->stopping) return;
    I->paused = true;
    I->send(Kind::notice, encode(Notice{NoticeCode::node_paused, I->applied_step}));
    I->emit(NetEvent::Kind::info, I->applied_step, "paused: no new batches (still following the updates)");
    I->update_status();
  });
}

void Node::resume() {
  asio::post(impl_->io, [I = impl_.get()] {
    if (!I->paused || I->stopping) return;
    I->paused = false;
    I->send(Kind::notice, encode(Notice{NoticeCode::node_resumed, I->applied_step}));
    I->emit(NetEvent::Kind::info, I->applied_step, "resumed");
    I->update_status();
  });
}

void Node::finish() {
  asio::post(impl_->io, [I = impl_.get()] {
    if (I->finishing || I->stopping) return;
    I->finishing = true;
    I->release_held = true;
    I->post_work([I] { I->w_release(); }, false);
    I->send(Kind::notice, encode(Notice{NoticeCode::node_leaving, I->applied_step}));
    I->emit(NetEvent::Kind::info, I->applied_step, "finishing: leaving after the current round");
    I->maybe_leave();
    I->update_status();
  });
}

void Node::stop() {
  Impl* I = impl_.get();
  if (!I->started) return;
  asio::post(I->io, [I] { I->begin_stop("stopped", "stopped by its host"); });
}

void Node::wait() {
  std::lock_guard<std::mutex> g(impl_->wait_mu);
  if (impl_->io_thread.joinable()) impl_->io_thread.join();
  {
    std::lock_guard<std::mutex> q(impl_->q_mu);
    impl_->worker_quit = true;
  }
  impl_->q_cv.notify_all();
  if (impl_->worker.joinable()) impl_->worker.join();
}

void Node::set_limits(double up_bps, double down_bps) {
  if (!(up_bps >= 0) || !(down_bps >= 0) || !std::isfinite(up_bps) || !std::isfinite(down_bps))
    fail(Code::invalid_argument, "rate limits must be finite and >= 0 bytes/s (0 = unlimited)");
  asio::post(impl_->io, [I = impl_.get(), up_bps, down_bps] {
    I->opt.up_limit = up_bps;
    I->opt.down_limit = down_bps;
    if (I->conn) I->conn->set_rates(up_bps, down_bps);
    I->emit(NetEvent::Kind::info, I->applied_step,
            "limits now: upload " + std::to_string(int64_t(up_bps)) + " B/s, download " + std::to_string(int64_t(down_bps)) +
                " B/s (0 = unlimited)");
  });
}

NodeStatus Node::status() const {
  std::lock_guard<std::mutex> g(impl_->status_mu);
  return impl_->st;
}

void Node::set_event_handler(EventHandler handler) {
  if (impl_->started) fail(Code::state, "set the event handler before start()");
  impl_->on_event = std::move(handler);
}

}  // namespace distro::net

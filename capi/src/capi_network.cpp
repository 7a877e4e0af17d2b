// The coordinator and node handles over distro::net::Coordinator and Node (distro.h, "Network").
// What the C layer adds: a timed wait (a waiter thread joins the core's threads and signals a
// condition variable), a C event callback behind a trampoline that can never throw, a guard against
// wait/destroy from the handle's own callback, and status snapshots copied into fixed structs.
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include "guard.hpp"
#include "handles.hpp"
#include "net/coordinator.hpp"
#include "net/node.hpp"
#include "net/run_config.hpp"

using namespace distro;
using namespace distro::capi;

namespace {

// Set while a handle's callback runs on this thread, so that wait/destroy from inside it is refused
// instead of joining the thread it runs on.
thread_local const void* t_in_callback = nullptr;

// The part shared by both handles: start bookkeeping, the callback and the timed wait.
struct NetHandle {
  std::mutex mu;
  std::condition_variable cv;
  bool started = false;
  bool ended = false;  // the core's threads are gone (or it never started)
  std::thread waiter;
  distro_net_event_fn fn = nullptr;
  void* user = nullptr;

  net::EventHandler trampoline(const void* self) {
    return [this, self](const net::NetEvent& e) {
      distro_net_event ev;
      ev.struct_size = sizeof ev;
      ev.kind = int(e.kind) + 1;  // NetEvent::Kind is step_done..info in the order of distro_net_event_kind
      ev.step = e.step;
      ev.node = e.node.c_str();
      ev.message = e.message.c_str();
      const void* outer = t_in_callback;
      t_in_callback = self;
      fn(&ev, user);  // a C function: it cannot throw into us
      t_in_callback = outer;
    };
  }

  // Starts the waiter thread once the core runs; wait_core blocks until the core's threads end.
  template <class WaitCore>
  void after_start(WaitCore wait_core) {
    waiter = std::thread([this, wait_core] {
      try {
        wait_core();
      } catch (...) {
        // The core's wait only joins threads; whatever happens, the handle must not hang.
      }
      std::lock_guard<std::mutex> g(mu);
      ended = true;
      cv.notify_all();
    });
  }

  bool wait_for(uint32_t timeout_ms) {
    std::unique_lock<std::mutex> l(mu);
    if (!started) return true;
    return cv.wait_for(l, std::chrono::milliseconds(timeout_ms), [this] { return ended; });
  }

  void join_waiter() {
    if (waiter.joinable()) waiter.join();
  }
};

static_assert(int(net::NetEvent::Kind::step_done) + 1 == DISTRO_NET_EVENT_STEP_DONE, "event kinds must match distro.h");
static_assert(int(net::NetEvent::Kind::info) + 1 == DISTRO_NET_EVENT_INFO, "event kinds must match distro.h");

void not_from_callback(const void* h, const char* call) {
  if (t_in_callback == h)
    fail(Code::state, std::string(call) + " was called from this handle's own event callback; call it from another thread");
}

int state_code(const std::string& s) {
  static const struct {
    const char* name;
    int code;
  } names[] = {{"created", DISTRO_NET_CREATED},     {"waiting", DISTRO_NET_WAITING},   {"connecting", DISTRO_NET_CONNECTING},
               {"syncing", DISTRO_NET_SYNCING},     {"training", DISTRO_NET_TRAINING}, {"paused", DISTRO_NET_PAUSED},
               {"finishing", DISTRO_NET_FINISHING}, {"leaving", DISTRO_NET_LEAVING},   {"stopping", DISTRO_NET_STOPPING},
               {"complete", DISTRO_NET_COMPLETE},   {"left", DISTRO_NET_LEFT},         {"stopped", DISTRO_NET_STOPPED},
               {"failed", DISTRO_NET_FAILED}};
  for (const auto& n : names)
    if (s == n.name) return n.code;
  return DISTRO_NET_UNKNOWN;
}

void copy_text(char* dst, size_t cap, const std::string& s) {
  size_t n = std::min(cap - 1, s.size());
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}

void check_rates(double up, double down) {
  if (!std::isfinite(up) || !std::isfinite(down) || up < 0 || down < 0)
    fail(Code::invalid_argument, "rate limits must be finite and >= 0 bytes/s (0 = unlimited)");
}

std::string opt_text(const char* s) { return s ? s : ""; }

}  // namespace

struct distro_coordinator {
  NetHandle h;
  std::unique_ptr<net::Coordinator> impl;
};

struct distro_node {
  NetHandle h;
  std::unique_ptr<net::Node> impl;
};

namespace {

distro_coordinator& coord(const distro_coordinator* c) {
  return *check_handle(const_cast<distro_coordinator*>(c), "coordinator");
}
distro_node& node(const distro_node* n) { return *check_handle(const_cast<distro_node*>(n), "node"); }

void need_started(NetHandle& h, const char* kind) {
  std::lock_guard<std::mutex> g(h.mu);
  if (!h.started) fail(Code::state, std::string("this ") + kind + " is not started; call distro_" + kind + "_start first");
}

template <class H>
void set_callback(H& x, const void* self, distro_net_event_fn fn, void* user, const char* kind) {
  std::lock_guard<std::mutex> g(x.h.mu);
  if (x.h.started) fail(Code::state, std::string("set the event callback before distro_") + kind + "_start");
  x.h.fn = fn;
  x.h.user = user;
  x.impl->set_event_handler(fn ? x.h.trampoline(self) : net::EventHandler());
}

template <class H>
void start(H& x, const char* kind) {
  std::lock_guard<std::mutex> g(x.h.mu);
  if (x.h.started) fail(Code::state, std::string("this ") + kind + " was started already");
  x.impl->start();  // throws (and stays startable) when it cannot bind
  x.h.started = true;
  auto* core = x.impl.get();
  x.h.after_start([core] { core->wait(); });
}

template <class H>
void destroy(H* x, const char* kind) {
  check_handle(x, kind);
  not_from_callback(x, (std::string("distro_") + kind + "_destroy").c_str());
  if (!live_handles().remove(x)) fail(Code::invalid_argument, std::string(kind) + " handle is not live");
  x->impl->stop();
  x->h.join_waiter();
  delete x;  // the core's destructor stops and joins whatever is left
}

template <class H>
void wait(int* out_done, H& x, const void* self, uint32_t timeout_ms, const char* kind) {
  need(out_done, "out_done");
  not_from_callback(self, (std::string("distro_") + kind + "_wait").c_str());
  *out_done = x.h.wait_for(timeout_ms) ? 1 : 0;
}

}  // namespace

extern "C" {

// ---- coordinator ----

DISTRO_API int distro_coordinator_create(distro_coordinator** out, const distro_coordinator_options* options) {
  return guard([&] {
    need(out, "out");
    need(options, "options");
    need_size(options->struct_size, sizeof(distro_coordinator_options), "distro_coordinator_options");
    const distro_coordinator_options& o = *options;
    if (!o.config_path == !o.config_json)
      fail(Code::invalid_argument, "give exactly one of options.config_path (a run configuration file) and "
                                   "options.config_json (its JSON text)");
    net::RunConfig c = o.config_path ? net::load_run_config(o.config_path) : net::parse_run_config(o.config_json, "");
    if (o.listen) c.listen = o.listen;
    if (o.state_dir) c.state_dir = o.state_dir;
    if (o.steps) c.train.steps = o.steps;
    net::validate(c);
    auto h = std::make_unique<distro_coordinator>();
    h->impl = std::make_unique<net::Coordinator>(c);
    live_handles().add(h.get());
    *out = h.release();
  });
}

DISTRO_API int distro_coordinator_destroy(distro_coordinator* coordinator) {
  return guard([&] {
    if (coordinator) destroy(coordinator, "coordinator");
  });
}

DISTRO_API int distro_coordinator_set_event_callback(distro_coordinator* coordinator, distro_net_event_fn fn,
                                                     void* user_data) {
  return guard([&] { set_callback(coord(coordinator), coordinator, fn, user_data, "coordinator"); });
}

DISTRO_API int distro_coordinator_start(distro_coordinator* coordinator) {
  return guard([&] { start(coord(coordinator), "coordinator"); });
}

DISTRO_API int distro_coordinator_pause(distro_coordinator* coordinator) {
  return guard([&] {
    distro_coordinator& c = coord(coordinator);
    need_started(c.h, "coordinator");
    c.impl->pause();
  });
}

DISTRO_API int distro_coordinator_resume(distro_coordinator* coordinator) {
  return guard([&] {
    distro_coordinator& c = coord(coordinator);
    need_started(c.h, "coordinator");
    c.impl->resume();
  });
}

DISTRO_API int distro_coordinator_finish(distro_coordinator* coordinator) {
  return guard([&] {
    distro_coordinator& c = coord(coordinator);
    need_started(c.h, "coordinator");
    c.impl->finish();
  });
}

DISTRO_API int distro_coordinator_stop(distro_coordinator* coordinator) {
  return guard([&] { coord(coordinator).impl->stop(); });
}

DISTRO_API int distro_coordinator_wait(int* out_done, distro_coordinator* coordinator, uint32_t timeout_ms) {
  return guard([&] { wait(out_done, coord(coordinator), coordinator, timeout_ms, "coordinator"); });
}

DISTRO_API int distro_coordinator_set_limits(distro_coordinator* coordinator, double up_bps, double down_bps) {
  return guard([&] {
    distro_coordinator& c = coord(coordinator);
    check_rates(up_bps, down_bps);
    need_started(c.h, "coordinator");
    c.impl->set_default_limits(up_bps, down_bps);
  });
}

DISTRO_API int distro_coordinator_port(uint16_t* out_port, const distro_coordinator* coordinator) {
  return guard([&] {
    need(out_port, "out_port");
    distro_coordinator& c = coord(coordinator);
    need_started(c.h, "coordinator");
    *out_port = c.impl->port();
  });
}

DISTRO_API int distro_coordinator_fingerprint(char* out, size_t capacity, const distro_coordinator* coordinator) {
  return guard([&] {
    need(out, "out");
    std::string fp = coord(coordinator).impl->fingerprint();
    if (capacity < fp.size() + 1 || capacity < DISTRO_FINGERPRINT_SIZE)
      fail(Code::size, "capacity is " + std::to_string(capacity) + "; expected at least DISTRO_FINGERPRINT_SIZE (" +
                           std::to_string(DISTRO_FINGERPRINT_SIZE) + ")");
    copy_text(out, capacity, fp);
  });
}

DISTRO_API int distro_coordinator_get_status(distro_coordinator_status* out, const distro_coordinator* coordinator) {
  return guard([&] {
    need(out, "out");
    distro_coordinator& c = coord(coordinator);
    need_size(out->struct_size, sizeof(distro_coordinator_status), "distro_coordinator_status");
    net::CoordinatorStatus s = c.impl->status();
    distro_coordinator_status r = DISTRO_COORDINATOR_STATUS_INIT;
    r.struct_size = out->struct_size;
    r.state = state_code(s.state);
    copy_text(r.state_name, sizeof r.state_name, s.state);
    r.step = s.step;
    r.total_steps = s.total_steps;
    r.rounds_done = s.rounds_done;
    r.nodes_connected = s.nodes_connected;
    r.nodes_in_sync = s.nodes_in_sync;
    r.bytes_up = s.bytes_up;
    r.bytes_down = s.bytes_down;
    r.last_round_seconds = s.last_round_seconds;
    r.param_hash = s.param_hash;
    *out = r;
  });
}

// ---- node ----

DISTRO_API int distro_node_create(distro_node** out, const distro_node_options* options) {
  return guard([&] {
    need(out, "out");
    need(options, "options");
    need_size(options->struct_size, sizeof(distro_node_options), "distro_node_options");
    const distro_node_options& o = *options;
    need(o.coordinator, "options.coordinator");
    need(o.token, "options.token");
    net::NodeOptions n;
    n.coordinator = o.coordinator;
    n.token = o.token;
    n.device = o.device ? o.device : "cpu";
    n.pin = opt_text(o.pin);
    n.up_limit = o.up_limit;
    n.down_limit = o.down_limit;
    n.history = opt_text(o.history);
    n.threads = o.threads;
    n.retry_min_s = o.retry_min_s;
    n.retry_max_s = o.retry_max_s;
    n.agent = opt_text(o.agent);
    auto h = std::make_unique<distro_node>();
    h->impl = std::make_unique<net::Node>(n);
    live_handles().add(h.get());
    *out = h.release();
  });
}

DISTRO_API int distro_node_destroy(distro_node* n) {
  return guard([&] {
    if (n) destroy(n, "node");
  });
}

DISTRO_API int distro_node_set_event_callback(distro_node* n, distro_net_event_fn fn, void* user_data) {
  return guard([&] { set_callback(node(n), n, fn, user_data, "node"); });
}

DISTRO_API int distro_node_start(distro_node* n) {
  return guard([&] { start(node(n), "node"); });
}

DISTRO_API int distro_node_pause(distro_node* n) {
  return guard([&] {
    distro_node& x = node(n);
    need_started(x.h, "node");
    x.impl->pause();
  });
}

DISTRO_API int distro_node_resume(distro_node* n) {
  return guard([&] {
    distro_node& x = node(n);
    need_started(x.h, "node");
    x.impl->resume();
  });
}

DISTRO_API int distro_node_finish(distro_node* n) {
  return guard([&] {
    distro_node& x = node(n);
    need_started(x.h, "node");
    x.impl->finish();
  });
}

DISTRO_API int distro_node_stop(distro_node* n) {
  return guard([&] { node(n).impl->stop(); });
}

DISTRO_API int distro_node_wait(int* out_done, distro_node* n, uint32_t timeout_ms) {
  return guard([&] { wait(out_done, node(n), n, timeout_ms, "node"); });
}

DISTRO_API int distro_node_set_limits(distro_node* n, double up_bps, double down_bps) {
  return guard([&] {
    distro_node& x = node(n);
    check_rates(up_bps, down_bps);
    need_started(x.h, "node");
    x.impl->set_limits(up_bps, down_bps);
  });
}

DISTRO_API int distro_node_get_status(distro_node_status* out, const distro_node* n) {
  return guard([&] {
    need(out, "out");
    distro_node& x = node(n);
    need_size(out->struct_size, sizeof(distro_node_status), "distro_node_status");
    net::NodeStatus s = x.impl->status();
    distro_node_status r = DISTRO_NODE_STATUS_INIT;
    r.struct_size = out->struct_size;
    r.state = state_code(s.state);
    copy_text(r.state_name, sizeof r.state_name, s.state);
    copy_text(r.node_name, sizeof r.node_name, s.node_name);
    r.node_id = s.node_id;
    r.step = s.step;
    r.total_steps = s.total_steps;
    r.param_hash = s.param_hash;
    r.rounds_trained = s.rounds_trained;
    r.rounds_accepted = s.rounds_accepted;
    r.bytes_up = s.bytes_up;
    r.bytes_down = s.bytes_down;
    r.last_loss = s.last_loss;
    r.last_train_seconds = s.last_train_seconds;
    r.reconnects = s.reconnects;
    copy_text(r.coordinator_fingerprint, sizeof r.coordinator_fingerprint, s.coordinator_fingerprint);
    copy_text(r.error, sizeof r.error, s.error);
    *out = r;
  });
}

}  // extern "C"

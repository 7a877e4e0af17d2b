// distro_net_load: the coordinator under load. N lightweight simulated nodes (default 1000) in this
// one process, on one or two io threads, each a real TLS connection: it joins with its token, syncs,
// takes its batch when the round gives it one (a round has --slots batches, at most 64, the trainer's
// peer limit; the other nodes follow the run), uploads a small synthetic payload (valid wire format,
// made without training), reads every merged update and reports the parameter hash. One shared
// replica applies each update once so that the nodes know the hash a real node would have (the
// coordinator checks it and would order a resync, which fails the test).
//
// By default the coordinator runs in a child process forked from this one (same binary, so nothing
// else to build), which keeps its memory and CPU apart from the nodes': both are read from
// /proc/PID. With --coordinator HOST:PORT it drives a running coordinator (`distro serve`) instead,
// whose run must have started at step 0 and hold the tokens of --tokens.
//
// The measured window is --rounds rounds after every node is in sync. Rounds run one after another
// (the coordinator waits for payloads, the nodes for the update), so a round takes the coordinator's
// time plus the simulated nodes' time; both CPU figures are printed. Prints a table and writes JSON
// (DESIGN.md section 9); bytes are frame bytes (TLS records add ~0.13%).
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "model/llama.hpp"
#include "net/coordinator.hpp"
#include "net/dial.hpp"
#include "net/limits.hpp"
#include "net/protocol.hpp"
#include "net/run_config.hpp"
#include "net/tls.hpp"
#include "train/replica.hpp"
#include "wire/codec.hpp"

namespace fs = std::filesystem;
using namespace distro;
using namespace distro::net;
using Clock = std::chrono::steady_clock;

namespace {

// ---- options -------------------------------------------------------------------------------------

struct Options {
  uint32_t nodes = 1000;
  uint32_t slots = 0;    // batches per round (nodes_per_round); 0 = min(nodes, 64), the trainer's peer limit
  uint32_t rounds = 10;
  unsigned io_threads = 1;
  std::string preset = "nano";
  uint32_t batch = 1, seq = 16;
  double pool = 2.0;     // candidate coefficients per chunk, as a multiple of k (see make_payload)
  double density = 1.0;  // fraction of chunks a node sends coefficients for
  uint32_t checkpoint_every = 0;  // 0 = only at the end of the run
  uint32_t connect_window = 100;  // dials in flight at once
  double timeout_s = 600;
  std::string data = DISTRO_NET_LOAD_DATA;
  std::string json = "net_load.json";
  // external coordinator
  std::string coordinator, pin, tokens_file;
  int coordinator_pid = 0;
};

const char* kUsage =
    "usage: distro_net_load [--nodes N (1000)] [--slots S (min(N, 64))] [--rounds R (10)] [--io-threads 1|2 (1)] [--preset nano]\n"
    "                       [--batch 1] [--seq 16] [--pool 2.0] [--density 1.0] [--checkpoint-every 0]\n"
    "                       [--connect-window 100] [--timeout-s 600] [--data FILE] [--json FILE (net_load.json)]\n"
    "                       [--coordinator HOST:PORT --tokens RUN.json [--pin sha256:...] [--coordinator-pid PID]]\n";

double number(const std::string& flag, const std::string& v, double lo, double hi) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (...) {
    used = 0;
  }
  if (used != v.size() || !(x >= lo && x <= hi)) {
    char range[96];
    std::snprintf(range, sizeof range, "%g to %g", lo, hi);
    fail(Code::invalid_argument, flag + " is \"" + v + "\"; expected a number from " + range);
  }
  return x;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (i + 1 >= argc) fail(Code::invalid_argument, a + " needs a value\n" + kUsage);
    const std::string v = argv[++i];
    if (a == "--nodes") o.nodes = uint32_t(number(a, v, 1, 4096));
    else if (a == "--slots") o.slots = uint32_t(number(a, v, 1, 64));
    else if (a == "--rounds") o.rounds = uint32_t(number(a, v, 2, 100000));
    else if (a == "--io-threads") o.io_threads = unsigned(number(a, v, 1, 2));
    else if (a == "--preset") o.preset = v;
    else if (a == "--batch") o.batch = uint32_t(number(a, v, 1, 4096));
    else if (a == "--seq") o.seq = uint32_t(number(a, v, 1, 4096));
    else if (a == "--pool") o.pool = number(a, v, 1, 1e6);
    else if (a == "--density") o.density = number(a, v, 0, 1);
    else if (a == "--checkpoint-every") o.checkpoint_every = uint32_t(number(a, v, 0, 1e9));
    else if (a == "--connect-window") o.connect_window = uint32_t(number(a, v, 1, 4096));
    else if (a == "--timeout-s") o.timeout_s = number(a, v, 1, 1e6);
    else if (a == "--data") o.data = v;
    else if (a == "--json") o.json = v;
    else if (a == "--coordinator") o.coordinator = v;
    else if (a == "--pin") o.pin = v;
    else if (a == "--tokens") o.tokens_file = v;
    else if (a == "--coordinator-pid") o.coordinator_pid = int(number(a, v, 1, 1e9));
    else fail(Code::invalid_argument, "unknown option " + a + "\n" + kUsage);
  }
  if (o.slots == 0) o.slots = std::min<uint32_t>(o.nodes, 64);
  if (o.slots > o.nodes) fail(Code::invalid_argument, "--slots " + std::to_string(o.slots) + " exceeds --nodes " + std::to_string(o.nodes));
  if (!o.coordinator.empty() && o.tokens_file.empty()) {
    fail(Code::invalid_argument, "--coordinator needs --tokens RUN.json (the run's configuration, for the node tokens)");
  }
  return o;
}

std::string node_name(uint32_t i) {
  char b[32];
  std::snprintf(b, sizeof b, "sim%05u", i);
  return b;
}
std::string node_token(uint32_t i) { return "load-test-token-" + node_name(i) + "-x"; }

// ---- /proc ---------------------------------------------------------------------------------------

struct ProcSample {
  double rss_mib = 0, hwm_mib = 0;  // VmRSS, VmHWM
  double cpu_s = 0;                 // utime + stime
  bool ok = false;
};

ProcSample sample_proc(int pid) {
  ProcSample s;
  if (pid <= 0) return s;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_mib = std::stod(line.substr(6)) / 1024.0;
    if (line.rfind("VmHWM:", 0) == 0) s.hwm_mib = std::stod(line.substr(6)) / 1024.0;
  }
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t close = text.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return s;
  std::istringstream rest(text.substr(close + 2));
  std::string field;
  std::vector<std::string> f;
  while (rest >> field) f.push_back(field);
  // After ")": state(3) ... utime is field 14, stime 15 of the whole line, i.e. index 11 and 12 here.
  if (f.size() > 12) {
    const double tick = double(sysconf(_SC_CLK_TCK));
    s.cpu_s = (std::stod(f[11]) + std::stod(f[12])) / tick;
    s.ok = true;
  }
  return s;
}

// ---- the coordinator child -----------------------------------------------------------------------

std::string child_config(const Options& o, const fs::path& state) {
  nlohmann::json tokens = nlohmann::json::object();
  for (uint32_t i = 0; i < o.nodes; ++i) tokens[node_name(i)] = node_token(i);
  nlohmann::json j = {{"data", o.data},
                      {"preset", o.preset},
                      {"steps", 1000000},
                      {"batch", o.batch},
                      {"seq", o.seq},
                      {"threads", 1},
                      {"nodes_per_round", o.slots},
                      {"min_nodes", o.slots},
                      {"fill_wait_s", 0.5},
                      {"round_deadline_s", 300},
                      {"listen", "127.0.0.1:0"},
                      {"state_dir", state.string()},
                      {"checkpoint_every", o.checkpoint_every ? o.checkpoint_every : 1000000000},
                      {"max_nodes", o.nodes + 16},
                      {"tokens", tokens}};
  return j.dump();
}

void write_line(int fd, const std::string& s) {
  std::string line = s + "\n";
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= size_t(n);
  }
}

// Runs in the forked child: the coordinator of a long run (durable state only every
// --checkpoint-every rounds, by default never while measuring), until the parent writes STOP on the
// control pipe; then it reports and waits for the pipe to close, so that the parent can read its /proc
// figures first.
[[noreturn]] void run_child(const Options& o, const fs::path& state, int result_fd, int control_fd) {
  int code = 0;
  try {
    RunConfig cfg = parse_run_config(child_config(o, state), "");
    Coordinator c(cfg);
    std::mutex mu;
    std::map<std::string, uint64_t> counts;
    std::vector<std::string> errors;
    c.set_event_handler([&](const NetEvent& e) {
      std::lock_guard lock(mu);
      ++counts[event_kind_name(e.kind)];
      if (e.kind == NetEvent::Kind::error && errors.size() < 5) errors.push_back(e.message);
    });
    c.start();
    // STOP, or the parent gone (EOF): stop the coordinator. Joined before c goes, on every path.
    struct Joiner {
      std::thread t;
      ~Joiner() {
        if (t.joinable()) t.join();
      }
    } control{std::thread([&c, control_fd] {
      char b;
      while (::read(control_fd, &b, 1) > 0 && b != '\n') {
      }
      c.stop();
    })};
    write_line(result_fd, "READY " + std::to_string(c.port()) + " " + c.fingerprint());
    c.wait();
    const CoordinatorStatus st = c.status();
    nlohmann::json j;
    {
      std::lock_guard lock(mu);
      j = {{"state", st.state},         {"step", st.step},           {"rounds_done", st.rounds_done},
           {"bytes_up", st.bytes_up},   {"bytes_down", st.bytes_down}, {"last_round_seconds", st.last_round_seconds},
           {"events", counts},          {"first_errors", errors}};
    }
    write_line(result_fd, "DONE " + j.dump());
  } catch (const std::exception& e) {
    write_line(result_fd, std::string("FAILED ") + e.what());
    code = 1;
  }
  char b;
  while (::read(control_fd, &b, 1) > 0) {
  }
  std::fflush(nullptr);
  ::_exit(code);
}

// Reads one line from fd within the deadline; "" on timeout or EOF.
std::string read_line(int fd, double seconds) {
  std::string line;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    const int left_ms = int(std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count());
    if (::poll(&p, 1, std::max(1, left_ms)) <= 0) continue;
    char c;
    const ssize_t n = ::read(fd, &c, 1);
    if (n <= 0) return line.empty() ? "" : line;
    if (c == '\n') return line;
    line += c;
  }
  return "";
}

// ---- what the simulated nodes share ---------------------------------------------------------------

// The run as the nodes see it: one replica that applies each merged update once, so every node can
// put the right base hash into its payloads and report the right hash, as a real node would. It
// follows the run from step 0, so the first node must join a fresh run; later ones may join at any
// step.
class RunView {
 public:
  // Each welcome. Returns "" or why the load test cannot follow this run.
  std::string prepare(const Welcome& w) {
    std::lock_guard lock(mu_);
    if (replica_) {
      if (w.run_id != run_id_) return "a second run id in the welcomes";
      auto it = hashes_.find(w.step);
      if (it != hashes_.end() && it->second != w.param_hash) return "the run's hash at step " + std::to_string(w.step) + " differs from ours";
      return "";
    }
    if (w.step != 0) return "the run is at step " + std::to_string(w.step) + "; the load test follows a fresh run (step 0) only";
    TrainConfig c = peer_config(w.run, "cpu", 1, "(none: simulated nodes)");
    replica_ = std::make_unique<Replica>(c, llama_preset(c.preset, c.vocab), w.node_id, w.run_id, "cpu");
    manifest_ = replica_->optimizer().manifest();
    if (manifest_.hash != w.manifest_hash) return "this build's manifest differs from the coordinator's";
    run_id_ = w.run_id;
    run_ = w.run;
    hashes_[0] = replica_->hash();
    if (hashes_[0] != w.param_hash) return "this build's initial parameters differ from the coordinator's";
    return "";
  }
  // Applies update `step` unless another node's copy of it was applied already; then runs what was
  // waiting for its hash.
  void apply(uint64_t step, const std::vector<uint8_t>& wire) {
    std::vector<std::function<void(uint64_t)>> ready;
    uint64_t h = 0;
    {
      std::lock_guard lock(mu_);
      if (hashes_.count(step)) return;
      if (step != applied_ + 1) fail(Code::state, "update " + std::to_string(step) + " after step " + std::to_string(applied_));
      const auto t0 = Clock::now();
      replica_->apply(wire);
      applied_ = step;
      h = hashes_[step] = replica_->hash();
      apply_seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
      ++applies_;
      auto it = waiting_.find(step);
      if (it != waiting_.end()) {
        ready = std::move(it->second);
        waiting_.erase(it);
      }
      while (hashes_.size() > 256) hashes_.erase(hashes_.begin());
    }
    for (auto& f : ready) f(h);
  }
  // Calls f(hash after `step`) now, or once that update has been applied (a node that synced at a
  // step may get its next round start before any node's copy of that update was handled).
  void with_hash(uint64_t step, std::function<void(uint64_t)> f) {
    uint64_t h = 0;
    {
      std::lock_guard lock(mu_);
      auto it = hashes_.find(step);
      if (it == hashes_.end()) {
        if (step <= applied_) fail(Code::state, "the hash of step " + std::to_string(step) + " is no longer kept");
        waiting_[step].push_back(std::move(f));
        return;
      }
      h = it->second;
    }
    f(h);
  }
  uint64_t applied() {
    std::lock_guard lock(mu_);
    return applied_;
  }
  double apply_seconds() {
    std::lock_guard lock(mu_);
    return applies_ ? apply_seconds_ / double(applies_) : 0.0;
  }
  const Manifest& manifest() const { return manifest_; }  // fixed once prepared
  uint64_t run_id() const { return run_id_; }
  const RunInfo& run() const { return run_; }  // fixed once prepared

 private:
  std::mutex mu_;
  std::unique_ptr<Replica> replica_;
  Manifest manifest_;
  RunInfo run_;
  uint64_t run_id_ = 0, applied_ = 0, applies_ = 0;
  double apply_seconds_ = 0;
  std::map<uint64_t, uint64_t> hashes_;
  std::map<uint64_t, std::vector<std::function<void(uint64_t)>>> waiting_;
};

// A synthetic payload: for each chunk (with probability `density`), k coefficients drawn from a
// pool of pool*k candidate positions that all nodes share for that step and chunk. Real top-k picks
// of nodes training the same model overlap strongly; drawing from a shared pool models that, so the
// merged update's union stays near pool*k per chunk instead of growing with the number of nodes.
std::vector<uint8_t> make_payload(const Manifest& m, uint64_t run_id, uint64_t step, uint32_t node_id, double pool,
                                  double density) {
  PeerPayload p;
  p.run_id = run_id;
  p.step = step;
  p.peer_id = node_id;
  p.manifest_hash = m.hash;
  p.values = m.values;
  p.count.assign(m.total_chunks, 0);
  std::mt19937_64 mine(step * 1000003u + node_id);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<uint16_t> cand, pick;
  for (const TensorPlan& t : m.tensors) {
    const uint32_t elems = t.elems();
    const uint32_t k = std::min<uint32_t>(t.k, elems);
    const uint32_t n_pool = std::min<uint32_t>(elems, std::max<uint32_t>(k, uint32_t(pool * k)));
    for (uint64_t c = 0; c < t.chunks; ++c) {
      if (density < 1.0 && u(mine) >= density) continue;
      // The shared pool: n_pool distinct positions drawn with a step- and chunk-seeded generator,
      // the same in every node (rejection sampling: the pool is tiny next to the chunk).
      std::mt19937_64 shared(step * 0x9e3779b97f4a7c15ull + t.chunk_base + c);
      cand.clear();
      if (uint64_t(n_pool) * 8 < elems) {
        while (cand.size() < n_pool) {
          const uint16_t x = uint16_t(shared() % elems);
          if (std::find(cand.begin(), cand.end(), x) == cand.end()) cand.push_back(x);
        }
      } else {  // a pool of a large part of the chunk: a partial shuffle of all positions
        for (uint32_t i = 0; i < elems; ++i) cand.push_back(uint16_t(i));
        for (uint32_t i = 0; i < n_pool; ++i) std::swap(cand[i], cand[i + shared() % (elems - i)]);
        cand.resize(n_pool);
      }
      for (uint32_t i = 0; i < k; ++i) std::swap(cand[i], cand[i + mine() % (n_pool - i)]);
      pick.assign(cand.begin(), cand.begin() + k);
      std::sort(pick.begin(), pick.end());
      p.count[t.chunk_base + c] = uint16_t(k);
      for (uint16_t x : pick) {
        p.index.push_back(x);
        p.value.push_back(m.values == ValueMode::sign ? (mine() & 1 ? 1 : -1) : int8_t(int(mine() % 255) - 127));
      }
    }
  }
  return encode_payload(m, p);
}

// ---- the simulated nodes -------------------------------------------------------------------------

struct NodeState {
  uint32_t id = 0;
  bool synced = false;
};

// Frame bytes (header + body) by message, counted for the measured steps only.
struct Traffic {
  std::atomic<uint64_t> payload{0}, payloads{0}, hash_report{0}, round_start{0}, update{0}, updates{0};
};

struct Harness {
  explicit Harness(const Options& opt) : o(opt) {}

  Options o;
  asio::io_context io;
  std::shared_ptr<asio::ssl::context> tls;
  std::string host;
  uint16_t port = 0;
  int pid = 0;  // the coordinator's, for /proc (0 = unknown)
  std::vector<std::pair<std::string, std::string>> creds;  // name, token
  RunView view;

  std::mutex mu;
  std::condition_variable cv;
  std::string fatal;  // the first reason the test cannot go on
  uint32_t dialled = 0, connected = 0, in_sync = 0;
  Clock::time_point t_start, t_connected, t_all_in_sync;
  // Measured steps: first_step .. first_step + rounds, fixed once every node is in sync (the first of
  // them only marks the start of the window). A step is done when every node has its update.
  uint64_t first_step = 0;  // 0 = not yet known
  std::map<uint64_t, uint32_t> updates_seen;
  std::map<uint64_t, Clock::time_point> t_step;
  std::map<uint64_t, ProcSample> proc_at_step;  // the coordinator's /proc figures at t_step
  std::map<uint64_t, double> self_cpu_at_step;  // this process's CPU seconds at t_step
  bool done = false, run_over = false;
  std::vector<std::shared_ptr<Connection>> conns;
  Traffic traffic;
  std::atomic<uint64_t> payload_wire_bytes{0}, payloads_made{0};

  bool measured(uint64_t step) {
    std::lock_guard lock(mu);
    return first_step != 0 && step > first_step && step <= first_step + o.rounds;
  }

  void set_fatal(const std::string& why) {
    {
      std::lock_guard lock(mu);
      if (fatal.empty()) fatal = why;
    }
    cv.notify_all();
  }

  void dial_next() {
    uint32_t i;
    {
      std::lock_guard lock(mu);
      if (dialled >= o.nodes || !fatal.empty()) return;
      i = dialled++;
    }
    dial(io, host, port, tls, node_frame_limits(), std::chrono::seconds(60),
         [this, i](const std::string& error, std::shared_ptr<Connection> c) {
           if (!error.empty()) return set_fatal("node " + creds[i].first + ": " + error);
           {
             std::lock_guard lock(mu);
             conns[i] = c;
             if (++connected == o.nodes) t_connected = Clock::now();
           }
           start_node(i, c);
           dial_next();
         });
  }

  void start_node(uint32_t i, const std::shared_ptr<Connection>& c) {
    auto st = std::make_shared<NodeState>();
    std::weak_ptr<Connection> weak = c;
    Connection::Handlers h;
    h.on_frame = [this, i, st, weak](Frame&& f) {
      auto conn = weak.lock();
      if (!conn) return;
      try {
        on_frame(i, *st, conn, std::move(f));
      } catch (const std::exception& e) {
        set_fatal("node " + creds[i].first + ": " + e.what());
        conn->close(e.what());
      }
    };
    h.on_close = [this, i](const std::string& reason) {
      {
        std::lock_guard lock(mu);
        if (!run_over && fatal.empty()) fatal = "node " + creds[i].first + " was disconnected: " + reason;
      }
      cv.notify_all();
    };
    c->start(std::move(h));
    Hello hello;
    hello.token = creds[i].second;
    hello.agent = "distro_net_load";
    c->send(uint8_t(Kind::hello), encode(hello));
  }

  void node_in_sync() {
    std::lock_guard lock(mu);
    if (++in_sync < o.nodes) return;
    t_all_in_sync = Clock::now();
    // Rounds that start from here on have every node in sync; the window opens when the next
    // update reaches all of them.
    first_step = view.applied() + 1;
  }

  void update_received(uint64_t step) {
    bool all = false, last = false;
    {
      std::lock_guard lock(mu);
      all = ++updates_seen[step] == o.nodes;
      if (all) {
        t_step[step] = Clock::now();
        updates_seen.erase(step);
        last = first_step != 0 && step >= first_step + o.rounds;
      }
    }
    if (!all) return;
    // Outside the lock; each step has one writer (the thread that saw its last copy).
    const ProcSample p = sample_proc(pid);
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    const double self = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    {
      std::lock_guard lock(mu);
      proc_at_step[step] = p;
      self_cpu_at_step[step] = self;
      if (last) done = true;
    }
    if (last) cv.notify_all();
  }

  void on_frame(uint32_t i, NodeState& st, const std::shared_ptr<Connection>& c, Frame&& f) {
    const uint64_t n = f.body.size() + kFrameHeaderBytes;
    switch (Kind(f.kind)) {
      case Kind::welcome: {
        const Welcome w = decode_welcome(f.body);
        const std::string why = view.prepare(w);
        if (!why.empty()) return set_fatal(why);
        st.id = w.node_id;
        c->send(uint8_t(Kind::sync), encode(Sync{w.step, w.param_hash}));
        return;
      }
      case Kind::notice: {
        const Notice m = decode_notice(f.body);
        if (m.code == NoticeCode::in_sync && !st.synced) {
          st.synced = true;
          node_in_sync();
        }
        return;
      }
      case Kind::round_start: {
        RoundStart r = decode_round_start(f.body, view.run());
        if (measured(r.step)) traffic.round_start += n;
        const uint32_t id = st.id;
        view.with_hash(r.step - 1, [this, c, r = std::move(r), id](uint64_t base) {
          PayloadMsg p;
          p.step = r.step;
          p.base_hash = base;
          p.slot = r.slot;
          p.batch_id = r.batch_id;
          p.wire = make_payload(view.manifest(), view.run_id(), r.step, id, o.pool, o.density);
          payload_wire_bytes += p.wire.size();
          ++payloads_made;
          std::vector<uint8_t> body = encode(p);
          if (measured(r.step)) {
            traffic.payload += body.size() + kFrameHeaderBytes;
            ++traffic.payloads;
          }
          c->send(uint8_t(Kind::payload), std::move(body));
        });
        return;
      }
      case Kind::update: {
        const UpdateMsg u = decode_update_msg(f.body, uint64_t(1) << 30, o.slots);
        view.apply(u.step, u.wire);
        view.with_hash(u.step, [this, c, step = u.step](uint64_t h) {
          std::vector<uint8_t> body = encode(HashReport{step, h});
          if (measured(step)) traffic.hash_report += body.size() + kFrameHeaderBytes;
          c->send(uint8_t(Kind::hash_report), std::move(body));
        });
        if (measured(u.step)) {
          traffic.update += n;
          ++traffic.updates;
        }
        update_received(u.step);
        return;
      }
      case Kind::ping:
        c->send(uint8_t(Kind::pong), encode(decode_ping(f.body)));
        return;
      case Kind::pong:
        return;
      case Kind::resync:
        return set_fatal("node " + creds[i].first + " was told to resync: " + decode_resync(f.body).reason);
      case Kind::error:
        return set_fatal("node " + creds[i].first + " got an error from the coordinator: " + decode_error(f.body).reason);
      default:
        return set_fatal("node " + creds[i].first + " got an unexpected " + kind_name(f.kind) + " message");
    }
  }

  // Every node pings every 5 s, so that none looks silent to the coordinator while the others join.
  void keepalive(asio::steady_timer& t) {
    t.expires_after(std::chrono::seconds(5));
    t.async_wait([this, &t](const asio::error_code& ec) {
      if (ec) return;
      std::vector<std::shared_ptr<Connection>> all;
      {
        std::lock_guard lock(mu);
        all = conns;
      }
      for (auto& c : all)
        if (c) c->send(uint8_t(Kind::ping), encode(Ping{1}));
      keepalive(t);
    });
  }
};

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

void raise_fd_limit(uint32_t nodes) {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0) return;
  const rlim_t want = rlim_t(nodes) * 2 + 256;  // both ends live in this process tree
  if (r.rlim_cur < want && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = std::min(r.rlim_max, want);
    ::setrlimit(RLIMIT_NOFILE, &r);
  }
  if (::getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < want) {
    fail(Code::unsupported, "open file limit is " + std::to_string(r.rlim_cur) + "; " + std::to_string(nodes) +
                                " nodes need about " + std::to_string(want) + " (raise it with ulimit -n)");
  }
}

std::string fmt(double x, int prec) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, x);
  return b;
}

int run(const Options& o) {
  raise_fd_limit(o.nodes);
  Harness h(o);
  std::optional<fs::path> state_dir;
  int result_fd = -1, control_fd = -1;
  nlohmann::json child_report;

  if (o.coordinator.empty()) {
    // Fork before any thread exists in this process.
    state_dir = fs::temp_directory_path() / ("distro_net_load_" + std::to_string(::getpid()));
    fs::remove_all(*state_dir);
    int result[2], control[2];
    if (::pipe(result) != 0 || ::pipe(control) != 0) fail(Code::io, std::string("pipe: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid < 0) fail(Code::io, std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
      ::close(result[0]);
      ::close(control[1]);
      run_child(o, *state_dir, result[1], control[0]);
    }
    ::close(result[1]);
    ::close(control[0]);
    result_fd = result[0];
    control_fd = control[1];
    h.pid = pid;
    const std::string ready = read_line(result_fd, 120);
    if (ready.rfind("READY ", 0) != 0) {
      ::close(control_fd);
      ::waitpid(pid, nullptr, 0);
      fail(Code::state, "the coordinator did not start: " + (ready.empty() ? std::string("no answer within 120 s") : ready));
    }
    std::istringstream in(ready.substr(6));
    std::string fp;
    in >> h.port >> fp;
    h.host = "127.0.0.1";
    h.tls = client_tls_context(fp);
    for (uint32_t i = 0; i < o.nodes; ++i) h.creds.emplace_back(node_name(i), node_token(i));
  } else {
    std::tie(h.host, h.port) = parse_host_port(o.coordinator);
    h.pid = o.coordinator_pid;
    h.tls = client_tls_context(o.pin);
    for (const auto& [name, token] : load_tokens(o.tokens_file)) h.creds.emplace_back(name, token);
    if (h.creds.size() < o.nodes) {
      fail(Code::invalid_argument, o.tokens_file + " has " + std::to_string(h.creds.size()) + " tokens; --nodes " +
                                       std::to_string(o.nodes) + " needs as many");
    }
    h.creds.resize(o.nodes);
  }
  h.conns.resize(o.nodes);

  std::printf("distro_net_load: %u nodes, %u batches per round, %u measured rounds, %u io thread(s), preset %s, "
              "batch %u x %u, coordinator %s:%u%s\n",
              o.nodes, o.slots, o.rounds, o.io_threads, o.preset.c_str(), o.batch, o.seq, h.host.c_str(), unsigned(h.port),
              o.coordinator.empty() ? " (forked child)" : "");
  std::fflush(stdout);
  const ProcSample at_start = sample_proc(h.pid);
  h.t_start = Clock::now();
  auto guard = asio::make_work_guard(h.io);
  asio::steady_timer keepalive(h.io);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < o.io_threads; ++t) threads.emplace_back([&] { h.io.run(); });
  asio::post(h.io, [&] {
    for (uint32_t k = 0; k < o.connect_window; ++k) h.dial_next();
    h.keepalive(keepalive);
  });

  std::string outcome;
  {
    std::unique_lock lock(h.mu);
    const bool ok = h.cv.wait_for(lock, std::chrono::duration<double>(o.timeout_s), [&] { return !h.fatal.empty() || h.done; });
    outcome = !h.fatal.empty() ? h.fatal
              : ok             ? ""
                               : "timed out after " + fmt(o.timeout_s, 0) + " s (" + std::to_string(h.connected) + " connected, " +
                         std::to_string(h.in_sync) + " in sync, first measured step " + std::to_string(h.first_step) + ")";
    h.run_over = true;  // from here on, closes are the end of the test
  }

  // Stop the forked coordinator, read its report, then release it.
  ProcSample final_sample;
  if (result_fd >= 0) {
    write_line(control_fd, "STOP");
    const std::string line = read_line(result_fd, 60);
    if (line.rfind("DONE ", 0) == 0) child_report = nlohmann::json::parse(line.substr(5), nullptr, false);
    else if (outcome.empty()) outcome = "coordinator: " + (line.empty() ? std::string("no report within 60 s") : line);
    final_sample = sample_proc(h.pid);
  } else {
    final_sample = sample_proc(h.pid);
  }
  keepalive.cancel();
  {
    std::lock_guard lock(h.mu);
    for (auto& c : h.conns)
      if (c) c->abort("load test over");
  }
  guard.reset();
  h.io.stop();
  for (auto& t : threads) t.join();
  if (control_fd >= 0) {
    ::close(control_fd);
    ::waitpid(h.pid, nullptr, 0);
    ::close(result_fd);
  }
  if (state_dir) fs::remove_all(*state_dir);

  if (!outcome.empty()) {
    std::fprintf(stderr, "distro_net_load: FAILED: %s\n", outcome.c_str());
    if (child_report.is_object()) std::fprintf(stderr, "coordinator: %s\n", child_report.dump().c_str());
    return 1;
  }

  // The window: from the update of first_step to that of first_step + rounds, all nodes in sync.
  const uint64_t s0 = h.first_step, s1 = h.first_step + o.rounds, R = o.rounds;
  const double window = seconds_between(h.t_step.at(s0), h.t_step.at(s1));
  const double rounds_per_s = double(R) / window;
  std::vector<double> round_s;
  for (uint64_t s = s0 + 1; s <= s1; ++s) round_s.push_back(seconds_between(h.t_step.at(s - 1), h.t_step.at(s)));
  std::sort(round_s.begin(), round_s.end());
  const double median_round = round_s[round_s.size() / 2], max_round = round_s.back();
  const Traffic& t = h.traffic;
  const double contributors = double(t.payloads) / double(R);
  const double per_contrib = std::max(1.0, double(t.payloads));
  const double hash_per_node = double(t.hash_report) / (double(o.nodes) * double(R));
  const double update_per_node = double(t.update) / std::max(1.0, double(t.updates));
  const double up_contrib = double(t.payload) / per_contrib + hash_per_node;
  const double down_contrib = double(t.round_start) / per_contrib + update_per_node;
  const double up_all = double(t.payload + t.hash_report) / (double(o.nodes) * double(R));
  const double down_all = double(t.round_start + t.update) / (double(o.nodes) * double(R));
  const ProcSample& p0 = h.proc_at_step.at(s0);
  const ProcSample& p1 = h.proc_at_step.at(s1);
  const bool have_proc = h.pid > 0 && p0.ok && p1.ok;
  const double cpu_rounds = have_proc ? p1.cpu_s - p0.cpu_s : 0;
  const double self_cpu = h.self_cpu_at_step.at(s1) - h.self_cpu_at_step.at(s0);

  std::printf("\n%-50s %s\n", "figure", "value");
  auto row = [](const char* name, const std::string& v) { std::printf("%-50s %s\n", name, v.c_str()); };
  row("nodes (TLS connections) / batches per round", std::to_string(o.nodes) + " / " + std::to_string(o.slots));
  row("all connected / all in sync after (s)", fmt(seconds_between(h.t_start, h.t_connected), 2) + " / " +
                                                   fmt(seconds_between(h.t_start, h.t_all_in_sync), 2));
  row("measured rounds (steps)", std::to_string(R) + " (" + std::to_string(s0 + 1) + ".." + std::to_string(s1) + ")");
  row("rounds per second", fmt(rounds_per_s, 2));
  row("round time median / max (ms)", fmt(median_round * 1e3, 1) + " / " + fmt(max_round * 1e3, 1));
  row("payloads per round", fmt(contributors, 1));
  row("up per contributing node per round (B)", fmt(up_contrib, 0) + "  (payload frame " + fmt(double(t.payload) / per_contrib, 0) +
                                                    ", hash report " + fmt(hash_per_node, 0) + ")");
  row("down per contributing node per round (B)", fmt(down_contrib, 0) + "  (round start " +
                                                      fmt(double(t.round_start) / per_contrib, 0) + ", update " + fmt(update_per_node, 0) + ")");
  row("up / down per node per round, all nodes (B)", fmt(up_all, 0) + " / " + fmt(down_all, 0));
  row("coordinator total up / down per round (kB)", fmt(up_all * o.nodes / 1e3, 1) + " / " + fmt(down_all * o.nodes / 1e3, 1));
  if (have_proc) {
    row("coordinator RSS before joins / after rounds / peak (MiB)",
        fmt(at_start.rss_mib, 1) + " / " + fmt(p1.rss_mib, 1) + " / " + fmt(final_sample.hwm_mib, 1));
    row("coordinator CPU per round (ms), share of one core", fmt(1e3 * cpu_rounds / double(R), 1) + "  (" +
                                                                 fmt(100 * cpu_rounds / window, 0) + "%)");
    row("coordinator CPU from start to stop (s)", fmt(final_sample.cpu_s - at_start.cpu_s, 2));
  } else {
    row("coordinator memory / CPU", "not measured (give --coordinator-pid)");
  }
  row("node process CPU per round (ms), share of one core", fmt(1e3 * self_cpu / double(R), 1) + "  (" + fmt(100 * self_cpu / window, 0) + "%)");
  row("node process: one update apply (ms)", fmt(1e3 * h.view.apply_seconds(), 1));
  if (child_report.is_object()) row("coordinator's own report", child_report.dump());

  nlohmann::json j = {{"bench", "net_load"},
                      {"nodes", o.nodes},
                      {"batches_per_round", o.slots},
                      {"rounds", R},
                      {"io_threads", o.io_threads},
                      {"preset", o.preset},
                      {"batch", o.batch},
                      {"seq", o.seq},
                      {"pool", o.pool},
                      {"density", o.density},
                      {"coordinator", o.coordinator.empty() ? "forked child" : o.coordinator},
                      {"connect_s", seconds_between(h.t_start, h.t_connected)},
                      {"in_sync_s", seconds_between(h.t_start, h.t_all_in_sync)},
                      {"rounds_per_s", rounds_per_s},
                      {"round_ms_median", median_round * 1e3},
                      {"round_ms_max", max_round * 1e3},
                      {"payloads_per_round", contributors},
                      {"up_bytes_per_contributor_round", up_contrib},
                      {"down_bytes_per_contributor_round", down_contrib},
                      {"update_bytes_per_node_round", update_per_node},
                      {"up_bytes_per_node_round", up_all},
                      {"down_bytes_per_node_round", down_all},
                      {"payload_wire_bytes_mean", double(h.payload_wire_bytes) / double(std::max<uint64_t>(1, h.payloads_made))},
                      {"node_process_cpu_ms_per_round", 1e3 * self_cpu / double(R)}};
  if (have_proc) {
    j["coordinator_rss_mib_before_joins"] = at_start.rss_mib;
    j["coordinator_rss_mib_after_rounds"] = p1.rss_mib;
    j["coordinator_rss_mib_peak"] = final_sample.hwm_mib;
    j["coordinator_cpu_ms_per_round"] = 1e3 * cpu_rounds / double(R);
    j["coordinator_cpu_share"] = cpu_rounds / window;
    j["coordinator_cpu_s_total"] = final_sample.cpu_s - at_start.cpu_s;
  }
  if (child_report.is_object()) j["coordinator_report"] = child_report;
  if (!o.json.empty()) {
    std::ofstream f(o.json);
    f << j.dump(2) << "\n";
    if (!f) fail(Code::io, "cannot write " + o.json);
    std::printf("\nwrote %s\n", o.json.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distro_net_load: %s\n", e.what());
    return 1;
  }
}
